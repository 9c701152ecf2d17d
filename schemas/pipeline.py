"""The whole pipeline's config, loaded from YAML with ``section.key=value`` overrides.

Unknown keys and bad values raise ``ConfigError`` naming the key, before any work starts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, Field, ValidationError

from schemas.base import StrictModel
from schemas.dedup import DedupConfig
from schemas.evaluate import EvalConfig
from schemas.filters import FilterConfig, SplitConfig
from schemas.ingest import IngestConfig
from schemas.preference import PreferenceConfig
from schemas.runner import RunnerConfig
from schemas.storage import StorageConfig
from schemas.tokenize import TokenizeConfig
from schemas.tracking import TrackingConfig
from schemas.train import AdapterConfig, ModelConfig, TrainConfig


class PipelineConfig(StrictModel):
    name: str = Field("sample", description="Name of this config; names the MLflow run and registered model.")
    workdir: str = Field("work", description=(
        "Where stage outputs, models and adapters are written: a local directory, or an object store URL "
        "(s3://bucket/prefix) for the stage outputs, with models and adapters on local disk (storage)."))
    storage: StorageConfig = Field(default_factory=StorageConfig, description=(
        "Endpoint and local scratch for an object-store workdir (workdir: s3://...)."))
    ingest: IngestConfig
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    filters: FilterConfig = Field(default_factory=FilterConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig, description=(
        "Pairs (train.objective dpo) or labels (kto) from the annotations; unused for sft."))
    tokenize: TokenizeConfig = Field(default_factory=TokenizeConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig, description=(
        "Where the curation stages' and tokenize's shard-level work runs: local, processes or ray."))


class ConfigError(ValueError):
    """A config that cannot be used; the message names the offending key."""


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split 'a.b.c=value' into (['a','b','c'], value); the value is parsed as YAML (numbers, lists, bools)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form section.key=value")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {exc}") from None
    return parts, value


def _list_index(node: list, part: str, where: str) -> int:
    """A list item by position, or by its ``name`` (filters, sources): ``filters.filters.min_rating``."""
    if part.isdigit() and int(part) < len(node):
        return int(part)
    named = [i for i, item in enumerate(node) if isinstance(item, dict) and item.get("name") == part]
    if len(named) == 1:
        return named[0]
    names = [str(item.get("name")) for item in node if isinstance(item, dict) and "name" in item]
    raise ConfigError(f"override {where}: no list item {part}" + (f" (items: {', '.join(names)})" if names else ""))


def _default_section(path: list[str]) -> Any:
    """The default value of a config section that the YAML leaves out, as plain data (so an override can
    change one entry of a default list, such as one filter's threshold)."""
    model: Any = PipelineConfig
    value: Any = None
    for part in path:
        fields = getattr(model, "model_fields", None) if isinstance(model, type) else None
        if not fields or part not in fields:
            return None
        field = fields[part]
        if field.is_required():
            return None
        value = field.get_default(call_default_factory=True)
        model = type(value) if isinstance(value, BaseModel) else None
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    return None


def _expand_filter_shorthand(parts: list[str]) -> list[str]:
    """``filters.NAME.PARAM`` -> ``filters.filters.NAME.params.PARAM`` for a registered filter name."""
    from schemas.filters import FILTER_PARAMS

    if len(parts) >= 3 and parts[0] == "filters" and parts[1] in FILTER_PARAMS:
        return ["filters", "filters", parts[1], "params", *parts[2:]]
    if len(parts) >= 4 and parts[:2] == ["filters", "filters"] and parts[2] in FILTER_PARAMS and \
            parts[3] not in ("name", "params"):
        return ["filters", "filters", parts[2], "params", *parts[3:]]
    return parts


def apply_override(data: dict, parts: list[str], value: Any) -> None:
    """Set one value. Lists take an index or an item's name; a section the YAML leaves out starts from its
    defaults; ``filters.NAME.PARAM=V`` sets a parameter of the filter NAME in the chain."""
    parts = _expand_filter_shorthand(parts)
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            node = node[_list_index(node, part, where)]
        else:
            if part not in node:
                default = _default_section(parts[: i + 1]) if node is _walk_root(data, parts, i) else None
                node[part] = default if default is not None else {}
            node = node[part]
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"override {where}: is a value, not a section")
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, ".".join(parts))] = value
    else:
        node[last] = value


def _walk_root(data: dict, parts: list[str], i: int) -> Any:
    """The node at ``parts[:i]`` if every step so far went through mappings (defaults apply only there)."""
    node: Any = data
    for part in parts[:i]:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _model_at(loc: tuple, root: type[BaseModel]) -> type[BaseModel] | None:
    """The pydantic model that holds the field at ``loc`` (list indices step into the item type)."""
    model: Any = root
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        ann = field.annotation
        for arg in (ann, *get_args(ann)):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                model = arg
                break
        else:
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def format_validation_error(exc: ValidationError, root: type[BaseModel] | None = None) -> str:
    """One line per problem, naming the dotted key; unknown keys list the keys their section allows."""
    root = root or PipelineConfig
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            parent = _model_at(tuple(err["loc"]), root)
            allowed = f" (allowed: {', '.join(parent.model_fields)})" if parent else ""
            lines.append(f"{key}: unknown key{allowed}")
        elif err["type"] == "missing":
            lines.append(f"{key}: {err['msg']}")
        else:
            lines.append(f"{key}: {err['msg']} (got {err['input']!r})")
    return "invalid config:\n  " + "\n  ".join(lines)


def validate_config(data: dict) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def read_yaml_mapping(path: str | Path) -> dict:
    """A YAML file whose top level is a mapping, or a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML config, apply ``section.key=value`` overrides and validate the result."""
    data = read_yaml_mapping(path)
    for item in overrides or []:
        apply_override(data, *parse_override(item))
    return validate_config(data)

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
from schemas.tokenize import TokenizeConfig
from schemas.tracking import TrackingConfig
from schemas.train import AdapterConfig, ModelConfig, TrainConfig


class PipelineConfig(StrictModel):
    name: str = Field("sample", description="Name of this config; names the MLflow run and registered model.")
    workdir: str = Field("work", description="Where stage outputs, models and adapters are written.")
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


def apply_override(data: dict, parts: list[str], value: Any) -> None:
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {where}: no list item {part}")
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"override {where}: is a value, not a section")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"override {'.'.join(parts)}: no list item {last}")
        node[int(last)] = value
    else:
        node[last] = value


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

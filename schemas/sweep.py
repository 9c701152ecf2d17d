"""Config of a sweep: one base pipeline config and a grid of ``section.key: [values...]`` overrides.

Every variant is resolved with the pipeline's own override machinery (``schemas.pipeline.apply_override`` and
``validate_config``) when the sweep is loaded, so a misspelt key or a bad value in any variant fails before any
work starts, naming the variant and the key.

A filter of the chain can be named instead of indexed: ``filters.min_rating.threshold`` means the ``threshold``
parameter of the ``min_rating`` filter wherever it sits in the base chain, and ``filters.min_rating.enabled:
false`` takes that filter out of the chain. ``filters.dry_run: true`` keeps every record (all filters off).
"""
from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from schemas.base import StrictModel
from schemas.filters import FILTER_PARAMS, FilterConfig
from schemas.pipeline import (
    ConfigError,
    PipelineConfig,
    apply_override,
    format_validation_error,
    parse_override,
    read_yaml_mapping,
    validate_config,
)

# What a curation output depends on: two variants equal on these share one curation (and its cache).
CURATION_SECTIONS = ("ingest", "dedup", "filters", "split", "preference")
# Sections a variant may change. The rest is the yardstick every variant is measured with: the base model and
# its tokenizer (model), how eval text becomes tokens (tokenize), which ids are held out (split), where it is
# tracked. Changing those per variant would make the eval losses incomparable.
SWEEPABLE = ("ingest", "dedup", "filters", "preference", "adapter", "train")
FILTER_FIELDS = set(FilterConfig.model_fields)


class SweepConfig(StrictModel):
    name: str = Field("sweep", description="Name of the sweep; names the parent MLflow run.")
    base: str = Field(..., description="Path of the base pipeline config (YAML). A relative path is taken from the "
                                       "sweep file's folder when it exists there, else from the working directory.")
    overrides: dict[str, Any] = Field(default_factory=dict, description=(
        "'section.key' -> value applied to the base before any variant, e.g. workdir or train.max_steps; "
        "shared by every variant and by the reference curation that provides the eval set."))
    grid: dict[str, list[Any]] = Field(default_factory=dict, description=(
        "'section.key' -> values; the variants are the cartesian product of all axes."))
    variants: list[dict[str, Any]] = Field(default_factory=list, description=(
        "Extra variants, each a mapping of 'section.key' -> value, run after the grid's."))
    include_base: bool = Field(False, description="Also run the base config itself as a variant named 'base'.")
    seeds: list[int] = Field(default_factory=list, description=(
        "Run every variant once per seed (as train.seed: weights init, data order, dropout), so each setting's "
        "spread over seeds can be measured; empty: each variant once, with the base config's seed."))
    eval_overlap_ngram: int = Field(8, ge=1, description=(
        "Word n-gram size of the leak check between a variant's train records and the shared eval set."))
    eval_overlap_max: float = Field(0.5, ge=0, le=1, description=(
        "A train record sharing more than this share of its n-grams with the eval set is held out of training "
        "(a near-duplicate of an eval record that a looser curation let through)."))
    samples: int = Field(2, ge=0, le=20, description="Generations per variant from the same eval prompts.")

    @field_validator("grid")
    @classmethod
    def _axes_not_empty(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"grid axis {key!r} has no values")
        return grid


class Variant(StrictModel):
    """One point of the sweep: its short name, the overrides that make it, and its resolved, validated config."""

    name: str
    overrides: dict[str, Any]
    config: PipelineConfig

    @property
    def curation(self) -> dict[str, Any]:
        return curation_settings(self.config)


def curation_settings(cfg: PipelineConfig) -> dict[str, Any]:
    """The settings a curation output depends on (its workdir included: outputs are cached there)."""
    dumped = cfg.model_dump(mode="json")
    # train.objective decides whether curation ends in a split of records or in preference pairs.
    return {"workdir": cfg.workdir, "objective": cfg.train.objective, **{s: dumped[s] for s in CURATION_SECTIONS}}


def load_sweep(path: str | Path, sets: list[str] | None = None, grid: list[str] | None = None) -> SweepConfig:
    """Read a sweep file; ``sets`` ('section.key=value') join its shared overrides and ``grid``
    ('section.key=[v1, v2]') replaces or adds axes. The base path is resolved and every variant validated."""
    path = Path(path)
    data = read_yaml_mapping(path)
    try:
        sweep = SweepConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {format_validation_error(exc)}") from None
    base = Path(sweep.base)
    if not base.is_absolute() and (path.parent / base).is_file():
        base = path.parent / base
    overrides = dict(sweep.overrides)
    for item in sets or []:
        parts, value = parse_override(item)
        overrides[".".join(parts)] = value
    axes = dict(sweep.grid)
    for item in grid or []:
        parts, values = parse_override(item)
        axes[".".join(parts)] = values if isinstance(values, list) else [values]
    sweep = sweep.model_copy(update={"base": str(base.resolve()), "overrides": overrides, "grid": axes})
    try:
        SweepConfig.model_validate(sweep.model_dump())  # the grid's checks again, on the merged axes
    except ValidationError as exc:
        raise ConfigError(f"{path}: {format_validation_error(exc)}") from None
    expand_variants(sweep)
    return sweep


def _filter_alias(key: str, chain: list[dict]) -> tuple[str, int | None, bool]:
    """'filters.<name>.<param...>' -> ('filters.filters.<i>.params.<param...>', i, is_enabled_switch)."""
    parts = key.split(".")
    if len(parts) < 3 or parts[0] != "filters" or parts[1] in FILTER_FIELDS:
        return key, None, False
    name = parts[1]
    if name not in FILTER_PARAMS:
        return key, None, False  # validation will name it as an unknown key
    index = next((i for i, spec in enumerate(chain) if spec.get("name") == name), None)
    if index is None:
        raise ConfigError(f"{key}: filter {name!r} is not in the base config's chain "
                          f"({', '.join(s.get('name', '?') for s in chain)})")
    if parts[2:] == ["enabled"]:
        return key, index, True
    return ".".join(["filters", "filters", str(index), "params", *parts[2:]]), index, False


def config_with_overrides(base_data: dict, overrides: dict[str, Any], where: str) -> PipelineConfig:
    """Apply dotted overrides (filter names allowed) to a copy of the base config's data and validate it."""
    data = copy.deepcopy(base_data)
    chain: list[dict] = []
    if _has_filter_alias(overrides):
        # Name -> index against the chain the base really runs: its own, or the default one filled in.
        try:
            chain = FilterConfig.model_validate(data.get("filters") or {}).model_dump(mode="json")["filters"]
        except ValidationError as exc:
            raise ConfigError(f"{where}: filters: {format_validation_error(exc)}") from None
        data.setdefault("filters", {})["filters"] = copy.deepcopy(chain)
    disabled: list[int] = []
    for key, value in overrides.items():
        resolved, index, switch = _filter_alias(key, chain)
        if switch:
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: {key} must be true or false (got {value!r})")
            if not value:
                disabled.append(index)
            continue
        apply_override(data, *parse_override(f"{resolved}={_yaml_value(value)}"))
    for index in sorted(set(disabled), reverse=True):
        del data["filters"]["filters"][index]
    try:
        return validate_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _has_filter_alias(overrides: dict[str, Any]) -> bool:
    return any(len(k.split(".")) >= 3 and k.split(".")[0] == "filters" and k.split(".")[1] not in FILTER_FIELDS
               for k in overrides)


def _yaml_value(value: Any) -> str:
    # Through parse_override's YAML parser and back: values keep their types (0.7, true, [a, b], null).
    return json.dumps(value)


def base_data(sweep: SweepConfig) -> dict:
    return read_yaml_mapping(Path(sweep.base))


def reference_config(sweep: SweepConfig) -> PipelineConfig:
    """The base config with the sweep's shared overrides: its curation provides every variant's eval set."""
    return config_with_overrides(base_data(sweep), sweep.overrides, "sweep overrides")


def variant_overrides(sweep: SweepConfig) -> list[dict[str, Any]]:
    """The override sets of all variants: the grid's cartesian product, then the listed variants."""
    out: list[dict[str, Any]] = [{}] if sweep.include_base else []
    if sweep.grid:
        keys = list(sweep.grid)
        out += [dict(zip(keys, values)) for values in itertools.product(*(sweep.grid[k] for k in keys))]
    out += [dict(v) for v in sweep.variants]
    if sweep.seeds:
        clash = [i + 1 for i, o in enumerate(out) if "train.seed" in o]
        if clash:
            raise ConfigError(f"variants {clash} set train.seed, which 'seeds' already sets for every variant")
        out = [{**o, "train.seed": seed} for o in out for seed in sweep.seeds]
    return out


def short_names(keys: list[str]) -> dict[str, str]:
    """The last part of each key ('dedup.threshold' -> 'threshold'), or more of it where that is ambiguous."""
    names: dict[str, str] = {}
    # 'filters.pii.enabled' reads best as 'pii=off'
    keys_named = {k: k[: -len(".enabled")] if k.startswith("filters.") and k.endswith(".enabled") else k
                  for k in keys}
    keys = list(keys_named.values())
    for original, key in keys_named.items():
        parts = key.split(".")
        # A filter's parameter keeps the filter's name: 'min_rating.threshold', not 'threshold'.
        first = len(parts) - 1 if len(parts) >= 3 and parts[0] == "filters" and parts[1] in FILTER_PARAMS else 1
        for n in range(first, len(parts) + 1):
            short = ".".join(parts[-n:])
            if sum(1 for k in keys if k.split(".")[-n:] == parts[-n:]) == 1:
                break
        names[original] = short
    return names


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _label(short: str, key: str, value: Any) -> str:
    if key == "filters.dry_run" and isinstance(value, bool):  # dry run = every filter only reports
        return "filters=off" if value else "filters=on"
    return f"{short}={_fmt(value)}"


def expand_variants(sweep: SweepConfig) -> list[Variant]:
    """Resolve and validate every variant; raises ``ConfigError`` naming the variant and the key."""
    sets = variant_overrides(sweep)
    if not sets:
        raise ConfigError("the sweep has no variants: give a grid, variants, or include_base: true")
    data = base_data(sweep)
    config_with_overrides(data, sweep.overrides, "sweep overrides")  # a bad shared key fails before the variants
    keys = list(dict.fromkeys(k for s in sets for k in s))
    for key in keys:
        section = key.split(".")[0]
        if section not in SWEEPABLE:
            raise ConfigError(f"grid key {key!r}: section {section!r} cannot vary within a sweep (every variant "
                              f"shares the base model, tokenizer, split and tracking, so their eval losses compare);"
                              f" sweepable sections: {', '.join(SWEEPABLE)}. Put shared settings in 'overrides'.")
    shorts = short_names(keys)
    variants: list[Variant] = []
    seen: dict[str, int] = {}
    for i, overrides in enumerate(sets):
        name = " ".join(_label(shorts[k], k, v) for k, v in overrides.items()) or "base"
        if name in seen:
            raise ConfigError(f"variants {seen[name] + 1} and {i + 1} are the same ({name})")
        seen[name] = i
        cfg = config_with_overrides(data, {**sweep.overrides, **overrides}, f"variant {i + 1} ({name})")
        variants.append(Variant(name=name, overrides=overrides, config=cfg))
    return variants

"""Every invalid config value gives a message naming the key and the allowed values.

The test walks the config models themselves, so a field added later is covered without editing this file:
for each field it derives an invalid value from the field's type and bounds (a word outside a Literal, a number
past a bound, a wrong type), applies it as a ``--set`` override and checks the error message.
"""
from __future__ import annotations

import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest
from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel

from schemas.pipeline import ConfigError, PipelineConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "configs" / "sample.yaml"


def unwrap(annotation):
    """``X | None`` -> X (None is valid anyway), keeping the other arms of a union."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        arms = [a for a in typing.get_args(annotation) if a is not type(None)]
        return arms[0] if len(arms) == 1 else typing.Union[tuple(arms)]
    return annotation


def cases_for(model: type[BaseModel], prefix: str):
    """(dotted key, invalid value, substrings the message must hold) for every field of ``model``."""
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = unwrap(info.annotation)
        origin, args = typing.get_origin(ann), typing.get_args(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from cases_for(ann, f"{key}.")
            continue
        if origin is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            yield from cases_for(args[0], f"{key}.0.")
            continue
        if origin is typing.Literal:
            yield key, "not-a-choice", [key, *(repr(a) for a in args)]
            continue
        if origin is typing.Union and any(typing.get_origin(a) is typing.Literal for a in args):
            literal = next(a for a in args if typing.get_origin(a) is typing.Literal)
            yield key, 12345, [key, *(repr(a) for a in typing.get_args(literal))]
            continue
        bounds = {type(m): m for m in info.metadata if isinstance(m, (Ge, Gt, Le, Lt))}
        if ann in (int, float):
            kind = "integer" if ann is int else "number"
            yield key, "abc", [key, kind]
            if Ge in bounds:
                b = bounds[Ge].ge
                yield key, b - 1, [key, "greater than or equal to", str(b)]
            if Gt in bounds:
                b = bounds[Gt].gt
                yield key, b, [key, "greater than", str(b)]
            if Le in bounds:
                b = bounds[Le].le
                yield key, b + 1, [key, "less than or equal to", str(b)]
            if Lt in bounds:
                b = bounds[Lt].lt
                yield key, b, [key, "less than", str(b)]
        elif ann is bool:
            yield key, "perhaps", [key, "boolean"]
        elif ann is str:
            yield key, [1, 2], [key, "string"]
    yield f"{prefix}no_such_key", 1, [f"{prefix}no_such_key", "unknown key", *list(model.model_fields)[:3]]


# Sections whose items are free-form (filter chain entries are checked by their own params models).
SKIP = ("filters.filters", "ingest.sources.0.field_map", "ingest.sources.0.annotation_map")
CASES = [c for c in cases_for(PipelineConfig, "") if not c[0].startswith(SKIP)]


def override(key: str, value) -> str:
    import json
    return f"{key}={json.dumps(value) if not isinstance(value, str) else value}"


PARAMS = [pytest.param(k, v, n, id=f"{k}={v}") for k, v, n in CASES]

# Lists the sample config leaves empty get one valid item first, so the bad value lands on a real item.
SEED_ITEMS = {"evaluate.eval_sets.0.": ("evaluate.eval_sets", [{"name": "probe", "path": "data/sample.jsonl"}])}


def overrides_for(key: str, value) -> list[str]:
    seeds = [override(*seed) for prefix, seed in SEED_ITEMS.items() if key.startswith(prefix)]
    return seeds + [override(key, value)]


@pytest.mark.parametrize("key,value,needles", PARAMS)
def test_invalid_value_names_key_and_allowed_values(key, value, needles):
    with pytest.raises(ConfigError) as err:
        load_config(SAMPLE, overrides_for(key, value))
    message = str(err.value)
    missing = [n for n in needles if n not in message]
    assert not missing, f"{key}={value!r}: message lacks {missing}:\n{message}"


def test_walk_covers_every_section():
    keys = {k.split(".")[0] for k, _, _ in CASES}
    assert keys >= {"ingest", "dedup", "filters", "split", "tokenize", "model", "adapter", "train", "tracking"}
    assert len(CASES) > 80


def test_cli_exits_2_with_the_message_and_no_traceback(tmp_path):
    res = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--config", str(SAMPLE),
                          "--set", f"workdir={tmp_path / 'work'}", "--set", "adapter.method=full",
                          "--set", "train.max_steps=0"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "adapter.method" in res.stderr and "'lora' or 'qlora'" in res.stderr
    assert "train.max_steps" in res.stderr and "greater than or equal to 1" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "work").exists()

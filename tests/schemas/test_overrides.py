"""``--set`` overrides of list entries: by index, by an item's name, and the filter shorthand, on sections the
YAML leaves at their defaults."""
from __future__ import annotations

import pytest

from schemas.pipeline import ConfigError, load_config

SAMPLE = "configs/sample.yaml"  # has no filters section: the chain is the default one


def params(cfg, name):
    return next(f.params for f in cfg.filters.filters if f.name == name)


def test_filter_parameter_by_filter_name():
    cfg = load_config(SAMPLE, ["filters.min_rating.threshold=4"])
    assert params(cfg, "min_rating") == {"threshold": 4.0, "aggregate": "mean", "scale": "raw"}
    assert [f.name for f in cfg.filters.filters] == [f.name for f in load_config(SAMPLE).filters.filters]


def test_list_items_by_name_and_index():
    cfg = load_config(SAMPLE, ["filters.filters.response_length.params.max_chars=100",
                               "filters.filters.0.params.min_count=3", "ingest.sources.sample.weight=2"])
    assert params(cfg, "response_length")["max_chars"] == 100 and params(cfg, "min_annotators")["min_count"] == 3
    assert cfg.ingest.sources[0].weight == 2


def test_unknown_filter_or_parameter_is_a_clear_error():
    with pytest.raises(ConfigError, match="no list item decontaminate.*min_rating"):
        load_config(SAMPLE, ["filters.decontaminate.ngram=5"])
    with pytest.raises(ConfigError, match="threshhold"):
        load_config(SAMPLE, ["filters.min_rating.threshhold=4"])

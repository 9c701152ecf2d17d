from pathlib import Path

import pytest

from schemas.pipeline import ConfigError, PipelineConfig, load_config

ROOT = Path(__file__).resolve().parents[2]


PIPELINE_CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml") if not p.name.startswith("sweep-"))


@pytest.mark.parametrize("path", PIPELINE_CONFIGS, ids=lambda p: p.name)  # sweeps: tests/flows/test_sweep_config
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, PipelineConfig)
    assert cfg.ingest.sources


def test_override_sets_nested_and_list_values():
    cfg = load_config(ROOT / "configs/sample.yaml",
                      ["dedup.threshold=0.7", "train.max_steps=3", "ingest.sources.0.limit=5",
                       "adapter.target_modules=[q_proj, v_proj]"])
    assert cfg.dedup.threshold == 0.7
    assert cfg.train.max_steps == 3
    assert cfg.ingest.sources[0].limit == 5
    assert cfg.adapter.target_modules == ["q_proj", "v_proj"]


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"dedup\.treshold: unknown key"):
        load_config(ROOT / "configs/sample.yaml", ["dedup.treshold=0.7"])


def test_bad_value_is_named_with_what_was_given():
    with pytest.raises(ConfigError, match=r"dedup\.threshold.*1\.5"):
        load_config(ROOT / "configs/sample.yaml", ["dedup.threshold=1.5"])
    with pytest.raises(ConfigError, match=r"adapter\.method"):
        load_config(ROOT / "configs/sample.yaml", ["adapter.method=full"])


def test_cross_field_check():
    with pytest.raises(ConfigError, match="warmup_steps"):
        load_config(ROOT / "configs/sample.yaml", ["train.max_steps=2", "train.warmup_steps=5"])


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(ROOT / "configs/sample.yaml", ["dedup.threshold"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="no list item 3"):
        load_config(ROOT / "configs/sample.yaml", ["ingest.sources.3.limit=1"])


def test_missing_sources_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\n")
    with pytest.raises(ConfigError, match="ingest: Field required"):
        load_config(p)

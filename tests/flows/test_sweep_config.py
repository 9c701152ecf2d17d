"""The sweep config: grid expansion, filter names, and bad keys failing before any work."""
from pathlib import Path

import pytest
import yaml

from schemas.pipeline import ConfigError
from schemas.sweep import curation_settings, expand_variants, load_sweep, reference_config, short_names

ROOT = Path(__file__).resolve().parents[2]


def write_sweep(tmp_path: Path, **fields) -> Path:
    body = {"name": "t", "base": str(ROOT / "configs/sample.yaml"), **fields}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def test_grid_is_a_cartesian_product_plus_listed_variants(tmp_path):
    path = write_sweep(tmp_path, grid={"dedup.threshold": [0.7, 0.9], "adapter.r": [4, 8]},
                       variants=[{"adapter.method": "qlora"}], overrides={"train.max_steps": 3})
    variants = expand_variants(load_sweep(path))
    assert [v.name for v in variants] == ["threshold=0.7 r=4", "threshold=0.7 r=8", "threshold=0.9 r=4",
                                          "threshold=0.9 r=8", "method=qlora"]
    assert [(v.config.dedup.threshold, v.config.adapter.r) for v in variants[:4]] == [
        (0.7, 4), (0.7, 8), (0.9, 4), (0.9, 8)]
    assert variants[4].config.adapter.method == "qlora" and variants[4].config.dedup.threshold == 0.8
    assert all(v.config.train.max_steps == 3 for v in variants)  # shared overrides reach every variant


def test_variants_that_differ_only_in_training_share_a_curation(tmp_path):
    path = write_sweep(tmp_path, grid={"dedup.threshold": [0.8, 0.6], "adapter.r": [4, 8]})
    sweep = load_sweep(path)
    keys = {str(sorted(curation_settings(v.config).items())) for v in expand_variants(sweep)}
    assert len(keys) == 2
    assert str(sorted(curation_settings(reference_config(sweep)).items())) in keys  # base threshold 0.8


def test_filters_are_named_not_indexed_and_can_be_switched_off(tmp_path):
    path = write_sweep(tmp_path, grid={"filters.min_rating.threshold": [4.0]},
                       variants=[{"filters.pii.enabled": False}, {"filters.dry_run": True}])
    rating, no_pii, off = expand_variants(load_sweep(path))
    spec = next(f for f in rating.config.filters.filters if f.name == "min_rating")
    assert spec.params["threshold"] == 4.0 and rating.name == "min_rating.threshold=4.0"
    names = [f.name for f in no_pii.config.filters.filters]
    assert "pii" not in names and "min_rating" in names and no_pii.name == "pii=off"
    assert off.config.filters.dry_run and off.name == "filters=off"


@pytest.mark.parametrize("grid, message", [
    (["dedup.threshhold=[0.7]"], "dedup.threshhold: unknown key"),
    (["dedup.threshold=[1.5]"], "dedup.threshold"),
    (["model.tiny_layers=[1, 2]"], "cannot vary within a sweep"),
    (["tokenize.max_seq_len=[64]"], "cannot vary within a sweep"),
    (["filters.language.min_chars=[3]"], "not in the base config's chain"),
    (["filters.pii.enabled=[maybe]"], "must be true or false"),
])
def test_bad_keys_fail_before_any_work_naming_the_key(tmp_path, grid, message):
    path = write_sweep(tmp_path, grid={"adapter.r": [4]})
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_sweep(path, grid=grid)


def test_bad_shared_override_and_empty_sweeps_fail(tmp_path):
    with pytest.raises(ConfigError, match="train.max_stepz"):
        load_sweep(write_sweep(tmp_path, grid={"adapter.r": [4]}), sets=["train.max_stepz=3"])
    with pytest.raises(ConfigError, match="no variants"):
        load_sweep(write_sweep(tmp_path))
    with pytest.raises(ConfigError, match="no values"):
        load_sweep(write_sweep(tmp_path, grid={"adapter.r": []}))
    with pytest.raises(ConfigError, match="the same"):
        load_sweep(write_sweep(tmp_path, grid={"adapter.r": [4, 4]}))
    with pytest.raises(ConfigError, match="not found"):
        load_sweep(tmp_path / "missing.yaml")


def test_cli_sets_and_grids_merge_into_the_sweep(tmp_path):
    path = write_sweep(tmp_path, grid={"adapter.r": [4, 8]})
    sweep = load_sweep(path, sets=[f"workdir={tmp_path / 'w'}"], grid=["adapter.r=[16]", "train.lr=0.01"])
    variants = expand_variants(sweep)
    assert [(v.config.adapter.r, v.config.train.lr) for v in variants] == [(16, 0.01)]
    assert variants[0].config.workdir == str(tmp_path / "w")


def test_relative_base_resolves_against_the_sweep_file(tmp_path):
    (tmp_path / "base.yaml").write_text((ROOT / "configs/sample.yaml").read_text())
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"base": "base.yaml", "include_base": True}))
    sweep = load_sweep(tmp_path / "s.yaml")
    assert Path(sweep.base) == (tmp_path / "base.yaml").resolve()
    assert [v.name for v in expand_variants(sweep)] == ["base"]


def test_short_names_disambiguate():
    assert short_names(["dedup.threshold", "filters.min_rating.threshold", "adapter.r"]) == {
        "dedup.threshold": "dedup.threshold", "filters.min_rating.threshold": "min_rating.threshold",
        "adapter.r": "r"}


@pytest.mark.parametrize("name", ["sweep-sample.yaml", "sweep-gpu.yaml"])
def test_shipped_sweep_configs_validate(name):
    variants = expand_variants(load_sweep(ROOT / "configs" / name))
    assert len(variants) >= 4
    assert len({v.config.model.name_or_path for v in variants}) == 1


def run_cli(*argv: str) -> int:
    import argparse

    from flows import cli_sweep

    parser = argparse.ArgumentParser()
    cli_sweep.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sweep", *argv])
    return args.func(args)


def test_cli_dry_run_lists_variants_and_bad_keys_exit_2(tmp_path, capsys):
    path = write_sweep(tmp_path, grid={"dedup.threshold": [0.8, 0.6]}, variants=[{"adapter.r": 4}])
    assert run_cli("--config", str(path), "--dry-run") == 0
    out = capsys.readouterr().out
    assert "3 variants, 2 distinct curation settings" in out and "- threshold=0.6" in out
    assert run_cli("--config", str(path), "--grid", "dedup.treshold=[0.5]", "--dry-run") == 2
    assert "dedup.treshold: unknown key" in capsys.readouterr().err
    assert run_cli("--config", str(path), "--set", "model.dtype=float64", "--dry-run") == 2


@pytest.mark.parametrize("name", ["sweep-experiment.yaml", "sweep-peft.yaml"])
def test_experiment_sweeps_run_every_variant_per_seed(name):
    """Every setting three times, seed as the only difference; the same steps for every variant."""
    sweep = load_sweep(ROOT / "configs" / name)
    variants = expand_variants(sweep)
    assert len(variants) % 3 == 0 and {v.config.train.seed for v in variants} == {0, 1, 2}
    by_setting: dict[str, set[int]] = {}
    for v in variants:
        setting = v.name.rsplit(" seed=", 1)[0] if " seed=" in v.name else ""
        by_setting.setdefault(setting, set()).add(v.config.train.seed)
    assert all(seeds == {0, 1, 2} for seeds in by_setting.values())
    assert len({(v.config.train.max_steps, v.config.train.early_stop_patience) for v in variants}) == 1


def test_seeds_clash_with_a_variant_that_sets_the_seed(tmp_path):
    path = write_sweep(tmp_path, variants=[{"train.seed": 5}])
    data = yaml.safe_load(path.read_text())
    data["seeds"] = [0, 1]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="already sets"):
        expand_variants(load_sweep(path))


def test_dpo_sweep_varies_the_preference_thresholds_one_curation_each():
    sweep = load_sweep(ROOT / "configs/sweep-dpo-sample.yaml")
    variants = expand_variants(sweep)
    assert len(variants) == 6
    settings = {(v.config.preference.min_margin, v.config.preference.min_agreement) for v in variants}
    assert settings == {(m, a) for m in (0.25, 1.0, 2.0) for a in (0.3, 0.6)}
    assert all(v.config.train.objective == "dpo" for v in variants)
    # the preference section is part of the curation: six distinct curations, none shared
    assert len({str(sorted(curation_settings(v.config).items())) for v in variants}) == 6

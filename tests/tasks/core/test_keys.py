"""Cache keys: the code part follows the source it guards, and speed-only settings stay out of the adapter key."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from schemas.pipeline import PipelineConfig
from schemas.train import TrainConfig
from tasks.core.stage import StageOutput, code_version
from tasks.train.recipe import adapter_key


@pytest.fixture
def scratch_package(tmp_path, monkeypatch):
    pkg = tmp_path / "keypkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "shingles.py").write_text("N = 5\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield pkg
    sys.modules.pop("keypkg", None)


def test_code_version_changes_with_any_file_of_the_package(scratch_package):
    before = code_version("keypkg")
    code_version.cache_clear()  # the cache holds for one process; a code edit means a new process
    (scratch_package / "sub" / "shingles.py").write_text("N = 3\n")
    assert code_version("keypkg") != before
    code_version.cache_clear()
    (scratch_package / "sub" / "shingles.py").write_text("N = 5\n")
    assert code_version("keypkg") == before, "the same source must give the same key"


def test_code_version_of_a_module_ignores_its_siblings(scratch_package):
    (scratch_package / "other.py").write_text("x = 1\n")
    before = code_version("keypkg.sub.shingles")
    code_version.cache_clear()
    (scratch_package / "other.py").write_text("x = 2\n")
    assert code_version("keypkg.sub.shingles") == before


def test_unknown_module_is_an_error_not_a_constant():
    with pytest.raises(ModuleNotFoundError):
        code_version("tasks.no_such_stage")


def test_no_stage_keeps_a_hand_bumped_version_constant():
    root = Path(__file__).resolve().parents[3] / "tasks"
    offenders = [f"{p.relative_to(root)}: {line.strip()}" for p in root.rglob("*.py")
                 for line in p.read_text().splitlines() if line.split("=")[0].strip().endswith("VERSION")]
    assert not offenders, offenders


INGEST = {"sources": [{"name": "sample", "path": "data/sample.jsonl"}]}


def _cfg(**train) -> PipelineConfig:
    return PipelineConfig.model_validate({"ingest": INGEST, "train": train})


def _key(**train) -> str:
    cfg = _cfg(**train)
    return adapter_key(StageOutput("tokenize", "k", Path("/nowhere")), "tiny-llama", cfg)


def test_speed_only_settings_keep_the_adapter_key():
    base = _key()
    changed = {"save_every": 3, "keep_checkpoints": 5, "gradient_checkpointing": True, "checkpoint_layers": [0],
               "batch_layout": "padded", "pad_to_multiple_of": 64, "loss": "chunked", "loss_chunk_tokens": 512,
               "compile": True, "cpu_threads": 2, "num_processes": 2, "parallel": "fsdp", "master_addr": "h",
               "master_port": 29501, "rdzv_endpoint": "h:29400", "rdzv_id": "job"}
    # Every node of a multi-node training must find the same adapter directory (and so the same rendezvous id):
    # its own node_rank stays out of the key; the number of nodes counts through the ranks (below).
    together = {"nnodes": 2, "node_rank": 1, "master_addr": "h"}
    assert set(changed) | set(together) == set(TrainConfig.SPEED_ONLY), "test every speed-only setting"
    for name, value in changed.items():
        assert _key(**{name: value}) == base, f"train.{name} is speed-only but changed the adapter key"
    assert _key(**together) == _key(**{**together, "node_rank": 0})


def test_learning_settings_change_the_adapter_key():
    base = _key()
    for name, value in {"lr": 1e-3, "max_steps": 7, "seed": 1, "micro_batch_size": 2, "warmup_steps": 0}.items():
        assert _key(**{name: value}) != base, f"train.{name} changes what is learned but not the key"
    assert set(TrainConfig.model_fields) - set(TrainConfig.SPEED_ONLY), "some settings must be in the key"


def test_ranks_count_only_when_they_change_the_batch():
    cfg = _cfg()
    out = StageOutput("tokenize", "k", Path("/nowhere"))
    assert adapter_key(out, "b", cfg, nproc=2) != adapter_key(out, "b", cfg, nproc=1)
    budget = _cfg(tokens_per_step=4096)
    assert adapter_key(out, "b", budget, nproc=2) == adapter_key(out, "b", budget, nproc=1)


def test_speed_only_settings_stay_out_of_every_data_stage_key(tmp_path):
    from tasks.dedup.stage import dedup_key
    from tasks.filters.stage import filter_key

    base = _cfg()
    fast = PipelineConfig.model_validate({**base.model_dump(mode="json"),
                                          "dedup": {"workers": 2, "unit_rows": 500, "memory_mb": 128},
                                          "filters": {**base.filters.model_dump(mode="json"), "workers": 2,
                                                      "batch_size": 7}})
    assert filter_key("up", fast) == filter_key("up", base)
    for kind in ("exact_dedup", "near_dedup"):
        assert dedup_key(kind, "up", fast) == dedup_key(kind, "up", base)
    stricter = PipelineConfig.model_validate({**base.model_dump(mode="json"), "dedup": {"threshold": 0.6}})
    assert dedup_key("near_dedup", "up", stricter) != dedup_key("near_dedup", "up", base)

"""DPO and KTO on the tiny model, through the real preference tokenize stage: the reward accuracy on held-out
pairs rises, the adapter prefers the chosen responses more than the base does, and a killed run resumes."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from schemas.pipeline import PipelineConfig
from schemas.preference import PAIR_SCHEMA, UNPAIRED_SCHEMA
from schemas.train import ModelConfig
from tasks.core.stage import ShardWriter
from tasks.evaluate.preference import evaluate_preference_adapter
from tasks.preference.tokenize import tokenize_preferences
from tasks.tokenize.tokenizer import train_sample_tokenizer
from tasks.train.model import build_tiny_llama
from tasks.train.preference import train_preference_adapter

INGEST = {"sources": [{"name": "unused", "path": "unused.jsonl"}]}
GOOD = "answer: {n} apples, counted twice."
BAD = "I do not know, sorry. Ask someone else."


def prompt(i: int) -> list[dict]:
    return [{"role": "user", "content": f"question {i}: how many apples are in basket {i % 7}?"}]


def pair_rows(lo: int, hi: int) -> list[dict]:
    return [{"pair_id": f"p{i}", "group": f"g{i}", "prompt": prompt(i),
             "chosen": [{"role": "assistant", "content": GOOD.format(n=i * 3)}],
             "rejected": [{"role": "assistant", "content": BAD}], "chosen_id": f"c{i}", "rejected_id": f"r{i}",
             "chosen_rating": 5.0, "rejected_rating": 1.0, "margin": 4.0, "agreement": 1.0, "n_annotators": 3,
             "agreement_basis": "shared", "source": "t"} for i in range(lo, hi)]


def example_rows(lo: int, hi: int) -> list[dict]:
    return [{"example_id": f"e{i}", "group": f"g{i}", "prompt": prompt(i),
             "completion": [{"role": "assistant", "content": GOOD.format(n=i * 3) if i % 2 else BAD}],
             "label": bool(i % 2), "rating": 5.0 if i % 2 else 1.0, "agreement": 1.0, "n_annotators": 3,
             "source": "t"} for i in range(lo, hi)]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("base")
    texts = [m["content"] for r in pair_rows(0, 60) for m in r["prompt"] + r["chosen"] + r["rejected"]]
    train_sample_tokenizer(texts, root, vocab_size=320)
    build_tiny_llama(root, root, ModelConfig())
    return str(root)


def make_cfg(tmp_path: Path, objective: str = "dpo", **train) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "ingest": INGEST, "workdir": str(tmp_path), "adapter": {"r": 8, "alpha": 16},
        "tokenize": {"max_seq_len": 64},
        "train": {"objective": objective, "max_steps": 8, "micro_batch_size": 4, "lr": 0.01, "warmup_steps": 1,
                  "eval_every": 4, "save_every": 4, "device": "cpu", **train}})


def tokenized(tmp_path: Path, base: str, cfg: PipelineConfig) -> Path:
    paired = cfg.train.objective == "dpo"
    rows, schema = (pair_rows, PAIR_SCHEMA) if paired else (example_rows, UNPAIRED_SCHEMA)
    for split, (lo, hi) in (("train", (0, 48)), ("eval", (48, 60))):
        with ShardWriter(tmp_path / "pref" / split, schema) as w:
            w.write(pa.Table.from_pylist(rows(lo, hi), schema=schema))
    ledger = tokenize_preferences(tmp_path / "pref", base, cfg.tokenize, cfg.train.objective, tmp_path / "tok")
    assert (ledger.n_in, ledger.kept) == (60, 60)
    return tmp_path / "tok"


def run(tok: Path, base: str, cfg: PipelineConfig, out: Path, fail_at: int | None = None):
    logged: list[tuple[int, dict]] = []

    def log(metrics: dict, step: int) -> None:
        if fail_at is not None and step == fail_at and "train_loss" in metrics:
            raise KeyboardInterrupt("simulated kill")
        logged.append((step, metrics))
    return train_preference_adapter(tok, base, cfg, out, log), logged


def test_dpo_learns_the_preference_and_beats_the_base_on_held_out_pairs(tmp_path, tiny_base):
    cfg = make_cfg(tmp_path)
    tok = tokenized(tmp_path, tiny_base, cfg)
    result, logged = run(tok, tiny_base, cfg, tmp_path / "out")
    steps = {s: m for s, m in logged if "train_loss" in m}
    assert sorted(steps) == list(range(1, 9))
    assert steps[1]["train_loss"] == pytest.approx(0.6931, abs=1e-3)  # adapter B = 0: policy == reference
    assert steps[1]["rewards/chosen"] == pytest.approx(0.0, abs=1e-5)
    assert {"rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "grad_norm"} <= set(steps[1])
    assert steps[8]["train_loss"] < 0.6 and steps[8]["rewards/accuracies"] == 1.0
    evals = [m for _, m in logged if "eval_loss" in m]
    assert len(evals) == 2 and evals[-1]["eval_rewards/accuracies"] == 1.0
    ev = evaluate_preference_adapter(tok, tiny_base, Path(result["adapter_dir"]), cfg)
    assert ev["pref_pairs"] == 12 and ev["pref_reward_accuracy"] == 1.0 and ev["pref_mean_margin"] > 0
    assert ev["pref_adapter_prefers_chosen_per_token"] >= ev["pref_base_prefers_chosen_per_token"]
    assert ev["pref_adapter_prefers_chosen"] > ev["pref_base_prefers_chosen"] or ev["pref_base_prefers_chosen"] == 1


def test_killed_dpo_run_resumes_with_the_same_curve(tmp_path, tiny_base):
    cfg = make_cfg(tmp_path, preference={"precompute_ref": True})
    tok = tokenized(tmp_path, tiny_base, cfg)
    whole, logged = run(tok, tiny_base, cfg, tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run(tok, tiny_base, cfg, tmp_path / "killed", fail_at=6)
    assert (tmp_path / "killed" / "reference_logps.pt").is_file()  # the cached reference survives the kill
    resumed, relogged = run(tok, tiny_base, cfg, tmp_path / "killed")
    first = {s: m["train_loss"] for s, m in logged if "train_loss" in m}
    again = {s: m["train_loss"] for s, m in relogged if "train_loss" in m}
    assert sorted(again) == [5, 6, 7, 8]  # from the step-4 checkpoint
    assert [again[s] for s in again] == pytest.approx([first[s] for s in again], abs=1e-6)
    assert resumed["eval_loss"] == pytest.approx(whole["eval_loss"], abs=1e-6)


def test_precomputed_reference_gives_the_same_losses(tmp_path, tiny_base):
    on_the_fly = make_cfg(tmp_path, max_steps=3)
    tok = tokenized(tmp_path, tiny_base, on_the_fly)
    _, a = run(tok, tiny_base, on_the_fly, tmp_path / "a")
    _, b = run(tok, tiny_base, make_cfg(tmp_path, max_steps=3, preference={"precompute_ref": True}), tmp_path / "b")
    losses = lambda logged: [m["train_loss"] for _, m in logged if "train_loss" in m]  # noqa: E731
    assert losses(a) == pytest.approx(losses(b), abs=1e-6)


def test_kto_trains_and_separates_desirable_from_undesirable(tmp_path, tiny_base):
    cfg = make_cfg(tmp_path, "kto")
    tok = tokenized(tmp_path, tiny_base, cfg)
    result, logged = run(tok, tiny_base, cfg, tmp_path / "out")
    steps = {s: m for s, m in logged if "train_loss" in m}
    assert steps[1]["train_loss"] == pytest.approx(0.5, abs=1e-3)  # 1 - sigmoid(0) at the start
    assert all(m["kl"] >= 0 for m in steps.values())
    assert steps[8]["train_loss"] < steps[1]["train_loss"]
    ev = evaluate_preference_adapter(tok, tiny_base, Path(result["adapter_dir"]), cfg)
    assert ev["pref_examples"] == 12 and ev["pref_mean_margin"] > 0 and ev["pref_reward_accuracy"] > 0.5


def test_qlora_dpo_starts_at_log_two_and_learns(tmp_path, tiny_base):
    pytest.importorskip("bitsandbytes")
    cfg = make_cfg(tmp_path, max_steps=4, eval_every=4)
    cfg = cfg.model_copy(update={"adapter": cfg.adapter.model_copy(update={"method": "qlora"})})
    tok = tokenized(tmp_path, tiny_base, cfg)
    result, logged = run(tok, tiny_base, cfg, tmp_path / "out")
    losses = [m["train_loss"] for _, m in logged if "train_loss" in m]
    assert losses[0] == pytest.approx(0.6931, abs=1e-3) and losses[-1] < losses[0]  # the NF4 base is the reference


def test_kto_cannot_precompute_its_reference():
    with pytest.raises(ValueError, match="precompute_ref"):
        make_cfg(Path("."), "kto", preference={"precompute_ref": True})


@pytest.mark.parametrize("parallel", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])
def test_two_process_dpo_matches_one_process(tmp_path, tiny_base, parallel):
    """torchrun, 2 CPU ranks of 2 pairs each = 1 process of 4 pairs: same pairs per step, same mean, summed grads;
    under FSDP the reference (adapter disabled) runs through the sharded model too, and so do the eval pairs."""
    from tasks.train.launch import launch_distributed

    one = make_cfg(tmp_path, max_steps=2, eval_every=2)
    tok = tokenized(tmp_path, tiny_base, one)
    single, _ = run(tok, tiny_base, one, tmp_path / "one")
    two = make_cfg(tmp_path, max_steps=2, eval_every=2, micro_batch_size=2, num_processes=2, parallel=parallel)
    result = launch_distributed(tok, tiny_base, two, tmp_path / "two", None, nproc=2)
    assert result["objective"] == "dpo" and result["steps"] == 2 and result["tokens"] == single["tokens"]
    assert result["train_loss"] == pytest.approx(single["train_loss"], rel=1e-4)
    assert result["eval_loss"] == pytest.approx(single["eval_loss"], rel=1e-4)
    assert result["eval_rewards_accuracies"] == single["eval_rewards_accuracies"]

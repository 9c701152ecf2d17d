"""Training on the tiny model: LoRA and QLoRA reduce the loss, outputs load, a killed run resumes exactly."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from schemas.pipeline import PipelineConfig
from schemas.train import ModelConfig
from tasks.tokenize.tokenizer import train_sample_tokenizer
from tasks.train.loop import lr_lambda
from tasks.train.model import build_tiny_llama
from tasks.train.recipe import train_adapter
from tasks.train.synthetic import pattern_rows, write_split

INGEST = {"sources": [{"name": "unused", "path": "unused.jsonl"}]}
TEXTS = [f"question {i}: how many apples are in basket {i % 7}? answer: {i * 3} apples" for i in range(120)]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("base")
    train_sample_tokenizer(TEXTS, root, vocab_size=320)
    build_tiny_llama(root, root, ModelConfig())
    return str(root)


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tokenized")
    write_split(root / "train", pattern_rows(12, 300, seq_len=24, seed=1))
    write_split(root / "eval", pattern_rows(6, 300, seq_len=24, seed=2))
    return root


def make_cfg(tmp_path: Path, **train) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "ingest": INGEST, "workdir": str(tmp_path),
        "adapter": {"method": train.pop("method", "lora"), "r": 8, "alpha": 16,
                    "dropout": train.pop("dropout", 0.0)},
        "train": {"max_steps": 6, "micro_batch_size": 4, "lr": 0.03, "warmup_steps": 1, "eval_every": 3,
                  "save_every": 3, "device": "cpu", **train},
    })


def run(tokenized: Path, base: str, cfg: PipelineConfig, out: Path, fail_at: int | None = None):
    logged: list[tuple[int, dict]] = []

    def log(metrics: dict, step: int) -> None:
        if fail_at is not None and step == fail_at and "train_loss" in metrics:
            raise KeyboardInterrupt("simulated kill")
        logged.append((step, metrics))
    return train_adapter(tokenized, base, cfg, out, log), logged


def train_losses(logged) -> dict[int, float]:
    return {step: m["train_loss"] for step, m in logged if "train_loss" in m}


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_training_reduces_loss_and_writes_a_loadable_adapter(tmp_path, tiny_base, tokenized, method):
    if method == "qlora":
        pytest.importorskip("bitsandbytes")
    cfg = make_cfg(tmp_path, method=method, gradient_checkpointing=True, checkpoint_layers=[1])
    result, logged = run(tokenized, tiny_base, cfg, tmp_path / "out")
    losses = train_losses(logged)
    evals = [m["eval_loss"] for _, m in logged if "eval_loss" in m]
    assert result["steps"] == 6 and sorted(losses) == list(range(1, 7))
    assert losses[5] + losses[6] < losses[1] + losses[2] - 0.6, losses
    assert len(evals) == 2 and evals[-1] < evals[0]
    assert {"lr", "grad_norm", "tokens_per_s"} <= set(logged[0][1])
    adapter = Path(result["adapter_dir"])
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "tokenizer.json").is_file()
    assert (tmp_path / "out" / "config.yaml").is_file() and not list((tmp_path / "out").glob("checkpoints/step-*"))

    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), adapter)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        tuned = model(input_ids=ids).logits
        with model.disable_adapter():
            plain = model(input_ids=ids).logits
    assert (tuned - plain).abs().max() > 1e-3  # the saved adapter is not a no-op

    again, _ = run(tokenized, tiny_base, cfg, tmp_path / "out")  # a finished output is reused as it is
    assert again == json.loads((tmp_path / "out" / "metrics.json").read_text())


def test_killed_run_resumes_at_the_same_step_with_the_same_losses(tmp_path, tiny_base, tokenized):
    # Dropout makes the loss depend on the RNG, so this also checks the RNG state is restored.
    cfg = make_cfg(tmp_path, dropout=0.1, max_steps=5, save_every=2, eval_every=100)
    _, full = run(tokenized, tiny_base, cfg, tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        run(tokenized, tiny_base, cfg, tmp_path / "killed", fail_at=4)
    assert [p.name for p in (tmp_path / "killed" / "checkpoints").glob("step-*")] == ["step-00000002"]
    result, resumed = run(tokenized, tiny_base, cfg, tmp_path / "killed")
    assert sorted(train_losses(resumed)) == [3, 4, 5]  # it restarts after the step-2 checkpoint
    for step, loss in train_losses(resumed).items():
        assert loss == pytest.approx(train_losses(full)[step], rel=1e-5, abs=1e-6)
    assert result["steps"] == 5


def test_token_budget_accumulates_micro_batches_and_early_stop_halts(tmp_path, tiny_base, tokenized):
    # 4 rows x 48 tokens = 192 tokens per micro-batch: a 500-token budget takes 3 of them per step.
    # lr 1e-12 leaves the eval loss exactly where it was, so patience 1 stops at the second evaluation.
    cfg = make_cfg(tmp_path, tokens_per_step=500, max_steps=4, eval_every=1, lr=1e-12, early_stop_patience=1,
                   batch_layout="flat", loss="chunked", loss_chunk_tokens=64)
    result, logged = run(tokenized, tiny_base, cfg, tmp_path / "out")
    assert result["tokens"] == result["steps"] * 3 * 192
    assert result["stopped_early"] is True and result["steps"] == 2


def test_schedule_warms_up_then_decays_to_the_floor():
    cfg = make_cfg(Path("."), max_steps=10, warmup_steps=2, min_lr_ratio=0.1).train
    f = lr_lambda(cfg)
    assert f(0) < f(1) < f(2) == pytest.approx(1.0)
    assert f(10) == pytest.approx(0.1) and f(6) < f(3)


@pytest.mark.slow  # two torchrun ranks each import torch, transformers and peft
def test_two_process_data_parallel_matches_one_process(tmp_path, tiny_base, tokenized):
    """torchrun with 2 CPU ranks (gloo) of micro-batch 2 takes the same steps as 1 process of micro-batch 4:
    the same rows per step, the loss averaged over the same tokens, the gradients summed across ranks."""
    from tasks.train.launch import launch_distributed

    single, logged = run(tokenized, tiny_base, make_cfg(tmp_path, max_steps=2, micro_batch_size=4), tmp_path / "one")
    cfg = make_cfg(tmp_path, max_steps=2, micro_batch_size=2, num_processes=2)
    result = launch_distributed(tokenized, tiny_base, cfg, tmp_path / "two", None, nproc=2)
    assert result["steps"] == 2 and result["tokens"] == single["tokens"]
    assert result["train_loss"] == pytest.approx(single["train_loss"], rel=1e-4)
    assert result["eval_loss"] == pytest.approx(single["eval_loss"], rel=1e-4)
    assert (tmp_path / "two" / "adapter" / "adapter_model.safetensors").is_file()


def test_eight_bit_adamw_trains(tmp_path, tiny_base, tokenized):
    pytest.importorskip("bitsandbytes")
    result, logged = run(tokenized, tiny_base, make_cfg(tmp_path, optimizer="adamw_8bit", max_steps=2),
                         tmp_path / "out")
    assert result["steps"] == 2 and all(np.isfinite(m["train_loss"]) for _, m in logged if "train_loss" in m)
    from safetensors.torch import load_file
    weights = load_file(Path(result["adapter_dir"]) / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)  # B starts at 0: it moved


def test_train_task_logs_per_step_metrics_into_the_mlflow_run(tmp_path, tiny_base, tokenized):
    import mlflow

    from tasks.core.stage import StageOutput
    from tasks.train.recipe import train_task

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns.db'}")
    try:
        client = mlflow.MlflowClient()
        run_id = client.create_run(client.create_experiment("train-test")).info.run_id
        cfg = make_cfg(tmp_path, max_steps=3, eval_every=3)
        result = train_task.fn(StageOutput("tokenize", "k1", tokenized), tiny_base, cfg, run_id)
        assert Path(result["adapter_dir"]).parent.parent == tmp_path / "adapters"
        history = client.get_metric_history(run_id, "train_loss")
        assert [m.step for m in history] == [1, 2, 3]
        assert [m.step for m in client.get_metric_history(run_id, "eval_loss")] == [3]
        assert {"lr", "grad_norm", "tokens_per_s"} <= set(client.get_run(run_id).data.metrics)
    finally:
        mlflow.set_tracking_uri(None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_qlora_on_cuda_with_compile_and_chunked_loss(tmp_path, tiny_base, tokenized):
    cfg = make_cfg(tmp_path, method="qlora", device="cuda", compile=True, loss="chunked", max_steps=6)
    result, logged = run(tokenized, tiny_base, cfg, tmp_path / "out")
    losses = train_losses(logged)
    assert losses[5] + losses[6] < losses[1] + losses[2] and result["gpu_peak_gib"] > 0
    assert all("gpu_peak_gib" in m for _, m in logged if "train_loss" in m)

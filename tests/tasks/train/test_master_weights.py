"""fp32 master weights: small updates to bf16 adapter weights are kept instead of rounded away, gradients add up
in fp32, and a checkpoint holds (and restores) the full-precision weights."""
from __future__ import annotations

import torch

from tasks.train.checkpoint import load_latest_checkpoint, save_checkpoint
from tasks.train.master import MasterWeights


def bf16_param(n: int = 1000, value: float = 0.03) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.full((n,), value, dtype=torch.bfloat16))


def step_many(p: torch.nn.Parameter, master: MasterWeights | None, steps: int, lr: float) -> None:
    params = master.parameters() if master else [p]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    for _ in range(steps):
        p.grad = torch.ones_like(p)
        if master:
            master.accumulate_grads()
        opt.step()
        if master:
            master.write_back()
        opt.zero_grad(set_to_none=True)


def test_bf16_weights_lose_small_updates_that_masters_keep():
    # AdamW moves each weight by about lr per step: 1e-5 is below half of bf16's spacing at 0.03 (1.2e-4).
    plain = bf16_param()
    step_many(plain, None, steps=30, lr=1e-5)
    assert torch.all(plain == torch.tensor(0.03, dtype=torch.bfloat16))  # every update was lost

    kept = bf16_param()
    master = MasterWeights([("w", kept)])
    assert master.active and master.parameters()[0].dtype == torch.float32
    step_many(kept, master, steps=30, lr=1e-5)
    start = float(torch.tensor(0.03, dtype=torch.bfloat16))
    moved = start - float(master.parameters()[0].detach()[0])
    assert abs(moved - 30 * 1e-5) < 2e-6  # the master holds all 30 updates
    assert torch.equal(kept, master.parameters()[0].to(torch.bfloat16))  # the compute copy is its rounding
    assert not torch.all(kept == torch.tensor(0.03, dtype=torch.bfloat16))


def test_fp32_parameters_are_stepped_as_they_are():
    p = torch.nn.Parameter(torch.zeros(4))
    master = MasterWeights([("w", p)])
    assert not master.active and master.parameters()[0] is p


def test_gradients_of_micro_batches_add_up_in_fp32():
    p = bf16_param(4, 1.0)
    master = MasterWeights([("w", p)])
    for _ in range(3):
        p.grad = torch.full_like(p, 1 / 3)
        master.accumulate_grads()
        assert p.grad is None  # moved, so the next backward starts from nothing
    assert master.parameters()[0].grad.dtype == torch.float32
    torch.testing.assert_close(master.parameters()[0].grad, torch.full((4,), 3 * float(torch.tensor(1 / 3).bfloat16())))


def test_a_checkpoint_keeps_the_full_precision_weights(tmp_path):
    p = bf16_param(8)
    master = MasterWeights([("w", p)])
    step_many(p, master, steps=7, lr=1e-5)
    opt = torch.optim.AdamW(master.parameters(), lr=1e-5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    save_checkpoint(tmp_path, 7, master, opt, sched, {"step": 7})
    exact = master.parameters()[0].detach().clone()

    q = bf16_param(8)  # a fresh model: its weights are the init again
    again = MasterWeights([("w", q)])
    opt2 = torch.optim.AdamW(again.parameters(), lr=1e-5)
    load_latest_checkpoint(tmp_path, again, opt2, torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0))
    assert torch.equal(again.parameters()[0], exact)  # not the bf16 rounding of it
    assert torch.equal(q, exact.to(torch.bfloat16))


def test_the_recipe_keeps_updates_of_bf16_adapters(tmp_path):
    """On the trainer itself, a bf16 model with bf16 LoRA weights at lr 1e-4: without masters most lora_A
    weights never change; with them the updates add up and show in the saved adapter."""
    from safetensors.torch import load_file

    from schemas.pipeline import PipelineConfig
    from schemas.train import ModelConfig
    from tasks.tokenize.tokenizer import train_sample_tokenizer
    from tasks.train.model import add_adapter, build_tiny_llama, load_base_model
    from tasks.train.recipe import train_adapter
    from tasks.train.synthetic import pattern_rows, write_split

    base = tmp_path / "base"
    train_sample_tokenizer([f"question {i}: how many apples? answer: {i * 3}" for i in range(80)], base, 320)
    build_tiny_llama(base, base, ModelConfig())
    write_split(tmp_path / "tok" / "train", pattern_rows(8, 300, seq_len=24, seed=1))

    def cfg(master: bool) -> PipelineConfig:
        return PipelineConfig.model_validate({
            "ingest": {"sources": [{"name": "unused", "path": "unused.jsonl"}]}, "workdir": str(tmp_path),
            "model": {"name_or_path": str(base), "dtype": "bfloat16"},
            "adapter": {"r": 8, "alpha": 16, "adapter_dtype": "auto"},
            "train": {"max_steps": 8, "micro_batch_size": 4, "lr": 1e-4, "warmup_steps": 0, "min_lr_ratio": 1.0,
                      "eval_every": 100, "save_every": 100, "device": "cpu", "master_weights": master}})

    torch.manual_seed(0)  # the recipe seeds with train.seed (0) before adding the adapter: the same init
    init = {n: p.detach().clone() for n, p in add_adapter(load_base_model(cfg(True).model, cfg(True).adapter, "cpu"),
                                                          cfg(True).adapter).named_parameters() if "lora_A" in n}
    assert next(iter(init.values())).dtype == torch.bfloat16

    def changed_share(master: bool) -> float:
        result = train_adapter(tmp_path / "tok", str(base), cfg(master), tmp_path / f"out-{master}")
        saved = load_file(f"{result['adapter_dir']}/adapter_model.safetensors")
        a = {n: t for n, t in saved.items() if "lora_A" in n}
        assert len(a) == len(init)
        ref = {n.replace(".default", ""): t for n, t in init.items()}
        return sum(int((t != ref[n]).sum()) for n, t in a.items()) / sum(t.numel() for t in a.values())

    lost, kept = changed_share(False), changed_share(True)
    assert lost < 0.5 and kept > lost + 0.2, (lost, kept)

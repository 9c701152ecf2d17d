"""bf16 vs fp32 adapter weights over a full cosine schedule: final loss, and the share of updates lost.

  python bench/train/adapter_precision.py OUT_JSON [SHAPE]        SHAPE: cpu-small (default on CPU), llama-1b
Env: STEPS (300), LR (2e-4), MIN_LR_RATIO (0.1: the cosine ends at 2e-5), SEQ, MB, VARIANTS (comma list).

Every variant trains the same LoRA (r=16, all linear layers) with ``tasks.train.recipe.train_adapter`` on the
same rows: walks on a fixed sparse Markov chain (``tasks.train.synthetic.markov_rows``), a learnable signal
with a known loss floor. Warm-up 10 steps, then cosine from LR to LR x MIN_LR_RATIO, AdamW, clipping at 1.
- On CUDA (the real path, bf16 base): ``fp32`` = adapter.adapter_dtype float32 (fp32 LoRA weights and
  matmuls); ``bf16`` = adapter_dtype auto with train.master_weights off (bf16 weights and AdamW state, the
  old default of the GPU configs); ``bf16+master`` = adapter_dtype auto with fp32 master weights (the new
  default).
- On CPU (the development machine has no fast bf16 matmul: 40x slower than fp32), compute is fp32 and
  ``bf16`` emulates bf16 storage: after every step the adapter weights and AdamW's two moments are rounded to
  bf16, which is what torch's fused AdamW stores for bf16 parameters (it computes the step in fp32).
  ``fp32`` there is also what fp32 master weights give the optimizer.
"Updates lost": of the elements the optimizer steps that have a non-zero gradient, the share whose stored
value the step left exactly unchanged (global optimizer step hooks; they see what the optimizer steps: the
bf16 weights, or the fp32 masters). Reported over the whole run and by learning-rate band.
"""
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.optim.optimizer as optim_hooks

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
try:
    import prefect  # noqa: F401
except ImportError:  # the GPU machine has no Prefect; the thin @task wrappers are not what is measured here
    import types
    _shim = types.ModuleType("prefect")
    _shim.task = lambda *a, **k: a[0] if a and callable(a[0]) else (lambda f: f)
    sys.modules["prefect"] = _shim
from schemas.pipeline import PipelineConfig  # noqa: E402
from tasks.tokenize.tokenizer import train_sample_tokenizer  # noqa: E402
from tasks.train.recipe import train_adapter  # noqa: E402
from tasks.train.synthetic import markov_chain, markov_entropy, markov_rows, write_split  # noqa: E402

CUDA = torch.cuda.is_available()
SHAPES = {
    "cpu-small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=1024),
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256),  # the stock recipe's checkpoint shape
}
STEPS, SEQ, MB = (int(os.environ.get(k, d)) for k, d in (("STEPS", 300), ("SEQ", 128 if not CUDA else 512),
                                                          ("MB", 4 if not CUDA else 8)))
LR, MIN_LR_RATIO = float(os.environ.get("LR", 2e-4)), float(os.environ.get("MIN_LR_RATIO", 0.1))
MARKOV_VOCAB = 1024 if not CUDA else 2048
BANDS = [(1e-4, 1.0), (3e-5, 1e-4), (0.0, 3e-5)]  # learning-rate bands for the lost share


def checkpoint(shape: str) -> str:
    """The stock recipe's checkpoint for llama-1b (same path, same construction); a small one on CPU."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = f"/tmp/ckpt-{shape}"
    if not os.path.exists(os.path.join(path, "config.json")):
        cfg = LlamaConfig(max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=False,
                          **SHAPES[shape])
        torch.manual_seed(0)
        with torch.device("cuda" if CUDA else "cpu"):
            LlamaForCausalLM(cfg).to(torch.bfloat16 if CUDA else torch.float32).save_pretrained(path)
    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        train_sample_tokenizer([f"text {i} for the benchmark tokenizer" for i in range(50)], Path(path), 300)
    return path


class UpdateMeter:
    """Global optimizer hooks: snapshot what the optimizer steps, then count the elements a step left as they
    were although their gradient was not zero. With ``emulate_bf16``, first round the stepped weights and the
    AdamW moments to bf16, as bf16 storage would."""

    def __init__(self, emulate_bf16: bool):
        self.emulate = emulate_bf16
        self.steps: list[tuple[float, int, int]] = []  # (lr, lost, moved-or-lost)
        self._before: list[torch.Tensor] = []
        self._handles = [optim_hooks.register_optimizer_step_pre_hook(self._pre),
                         optim_hooks.register_optimizer_step_post_hook(self._post)]

    def _params(self, opt):
        return [p for g in opt.param_groups for p in g["params"] if p.grad is not None]

    def _pre(self, opt, args, kwargs):
        self._before = [p.detach().clone() for p in self._params(opt)]

    @torch.no_grad()
    def _post(self, opt, args, kwargs):
        params = self._params(opt)
        if self.emulate:
            for p in params:
                p.copy_(p.to(torch.bfloat16))
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in opt.state[p]:
                        opt.state[p][key].copy_(opt.state[p][key].to(torch.bfloat16))
        lost = total = 0
        for p, before in zip(params, self._before):  # summed on the device: no sync per tensor
            live = p.grad != 0
            lost = lost + ((p == before) & live).sum()
            total = total + live.sum()
        self.steps.append((opt.param_groups[0]["lr"], lost, total))

    def close(self):
        for h in self._handles:
            h.remove()

    def summary(self) -> dict:
        self.steps = [(lr, int(lo), int(t)) for lr, lo, t in self.steps]

        def share(rows):
            total = sum(t for _, _, t in rows)
            return round(sum(lo for _, lo, _ in rows) / total, 4) if total else None
        out = {"all_steps": share(self.steps)}
        for lo, hi in BANDS:
            out[f"lr_{lo:g}_to_{hi:g}"] = share([s for s in self.steps if lo < s[0] <= hi])
        return out


def run(variant: str, base: str, tok: Path, work: Path) -> dict:
    adapter_dtype = "float32" if variant == "fp32" else "auto"
    cfg = PipelineConfig.model_validate({
        "ingest": {"sources": [{"name": "bench", "path": "unused"}]}, "workdir": str(work),
        "model": {"name_or_path": base, "attn_implementation": "sdpa" if CUDA else None},
        "adapter": {"r": 16, "alpha": 32, "target_modules": "all-linear", "adapter_dtype": adapter_dtype},
        "train": {"max_steps": STEPS, "micro_batch_size": MB, "lr": LR, "min_lr_ratio": MIN_LR_RATIO,
                  "warmup_steps": 10, "eval_every": max(1, STEPS // 6), "save_every": 10**6,
                  "master_weights": variant != "bf16", "pad_to_multiple_of": 64, "batch_layout": "padded",
                  "loss": "chunked" if CUDA else "standard"}})
    meter = UpdateMeter(emulate_bf16=variant == "bf16" and not CUDA)
    curve: dict[int, dict] = {}
    t0 = time.time()
    try:
        result = train_adapter(tok, base, cfg, work / f"out-{variant}", lambda m, s: curve.setdefault(s, {}).update(m))
    finally:
        meter.close()
    times = sorted(m["step_s"] for s, m in curve.items() if s > 3 and "step_s" in m)
    tail = [m["train_loss"] for s, m in curve.items() if s > 0.9 * STEPS and "train_loss" in m]
    return {"variant": variant, "final_eval_loss": round(result["eval_loss"], 5),
            "train_loss_last_10pct": round(sum(tail) / len(tail), 5),
            "eval_curve": {s: round(m["eval_loss"], 5) for s, m in sorted(curve.items()) if "eval_loss" in m},
            "updates_lost": meter.summary(), "median_step_s": round(times[len(times) // 2], 5) if times else None,
            "peak_gib": round(result.get("gpu_peak_gib", 0.0), 2), "wall_s": round(time.time() - t0, 1)}


def main() -> None:
    out, shape = Path(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else ("llama-1b" if CUDA else "cpu-small"))
    variants = os.environ.get("VARIANTS", "fp32,bf16,bf16+master" if CUDA else "fp32,bf16").split(",")
    if not CUDA:
        torch.set_num_threads(int(os.environ.get("THREADS", 1)))
    base = checkpoint(shape)
    report = {"machine": torch.cuda.get_device_name() if CUDA else "cpu", "shape": shape, "steps": STEPS,
              "seq": SEQ, "micro_batch": MB, "lr": LR, "min_lr": LR * MIN_LR_RATIO,
              "loss_floor": round(markov_entropy(markov_chain(MARKOV_VOCAB)[1]), 5), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tok = Path(tmp) / "tok"
        write_split(tok / "train", markov_rows(STEPS * MB, MARKOV_VOCAB, SEQ, seed=0))
        write_split(tok / "eval", markov_rows(4 * MB, MARKOV_VOCAB, SEQ, seed=1))
        for variant in variants:
            report["runs"].append(run(variant, base, tok, Path(tmp)))
            print(json.dumps(report["runs"][-1]), flush=True)
            out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Training speed of peftpipe's recipe (tasks.train.recipe.train_adapter) on random-weight Llama shapes.

Run it on the GPU machine right after bench/train/hf_stock_recipe.py in the same command: it reuses the stock
recipe's /tmp/ckpt-<shape> checkpoints (building them the same way when missing), so both recipes train the
same weights on the same shapes, and compare the two side by side.
  python bench/train/speed.py OUT_JSON CASE [CASE ...]
CASE is shape:method:ckpt:data[:opts]. shape: llama-1b, llama-8b, tiny (CPU smoke test); method: lora, qlora;
ckpt: all (recompute every layer), none, half (every other layer), skipN (all but the last N layers); data: fixed (SEQ-token random rows, like
the stock recipe) or sample (random tokens packed from the bundled sample's conversation lengths, see
bench/train/sample_lengths.py); opts, joined by '+': attn=IMPL (sdpa by default), mb=N (micro-batch),
compile (regional torch.compile), bf16a (LoRA weights in bf16, not fp32; the optimizer steps fp32 master
copies), nomaster (with bf16a: no master copies, bf16 weights and AdamW state as before), profile
(torch.profiler over steps 5-6: the top kernels and a time share per kernel kind go to PROFILE_DIR).
Env: SEQ (2048), MB micro-batch (4), STEPS (12), PROFILE_DIR (.).
"""
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

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
from tasks.train.synthetic import random_rows, write_split  # noqa: E402

SHAPES = {  # the stock recipe's Llama-3.2-1B and Llama-3.1-8B shapes, and a CPU-sized one
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8),
    "llama-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=8),
    "tiny": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
}
SEQ, MB, STEPS = (int(os.environ.get(k, d)) for k, d in (("SEQ", 2048), ("MB", 4), ("STEPS", 12)))
CUDA = torch.cuda.is_available()


def checkpoint(shape: str) -> str:
    """The stock recipe's checkpoint (same path, same construction), plus a tokenizer for the pad id."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = f"/tmp/ckpt-{shape}"
    if not os.path.exists(os.path.join(path, "config.json")):
        vocab = 128256 if shape != "tiny" else 1024
        cfg = LlamaConfig(vocab_size=vocab, max_position_embeddings=8192, rope_theta=500000.0,
                          tie_word_embeddings=False, **SHAPES[shape])
        with torch.device("cuda" if CUDA else "cpu"):
            LlamaForCausalLM(cfg).to(torch.bfloat16 if CUDA else torch.float32).save_pretrained(path)
        torch.cuda.empty_cache() if CUDA else None
    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        train_sample_tokenizer([f"text {i} for the benchmark tokenizer" for i in range(50)], Path(path), 300)
    return path


def sample_lengths() -> list[int]:
    return json.loads((ROOT / "bench" / "train/sample_lengths.json").read_text())["lengths"]


def bench(case: str, work: Path) -> dict:
    shape, method, ckpt, data, *rest = case.split(":")
    opts = dict(o.split("=", 1) if "=" in o else (o, "1") for o in (rest[0].split("+") if rest else []))
    attn = opts.get("attn", "sdpa" if CUDA else None)
    mb = int(opts.get("mb", MB))
    base = checkpoint(shape)
    vocab = 32000 if shape != "tiny" else 1000  # the stock recipe's random ids
    tok_dir = work / f"tok-{data}-{mb}"
    if not tok_dir.exists():
        n = mb * STEPS
        lengths = sample_lengths() if data == "sample" else None
        write_split(tok_dir / "train", random_rows(n, vocab, seed=0, seq_len=SEQ, lengths=lengths))
        write_split(tok_dir / "eval", random_rows(mb, vocab, seed=1, seq_len=SEQ, lengths=lengths))
    n_layers = SHAPES[shape]["num_hidden_layers"]
    train = {"max_steps": STEPS, "micro_batch_size": mb, "compile": "compile" in opts, "lr": 1e-4,
             "warmup_steps": 1, "eval_every": 10**6,
             "eval_max_batches": 1, "save_every": 10**6, "gradient_checkpointing": ckpt != "none",
             "checkpoint_layers": (list(range(0, n_layers, 2)) if ckpt == "half" else
                                   list(range(n_layers - int(ckpt[4:]))) if ckpt.startswith("skip") else None),
             "master_weights": "nomaster" not in opts,
             "batch_layout": "padded", "pad_to_multiple_of": 128, "loss": "chunked", "loss_chunk_tokens": 2048}
    cfg = PipelineConfig.model_validate({
        "ingest": {"sources": [{"name": "bench", "path": "unused"}]}, "workdir": str(work),
        "model": {"name_or_path": base, "attn_implementation": attn},
        "adapter": {"method": method, "r": 16, "alpha": 32, "target_modules": "all-linear",
                    "adapter_dtype": "auto" if "bf16a" in opts else "float32"},
        "train": train})
    steps: dict[int, dict] = {}
    prof = profiler(case) if "profile" in opts else None

    def log(metrics: dict, step: int) -> None:
        steps.setdefault(step, {}).update(metrics)
        if prof is not None and "train_loss" in metrics and step in (4, 6):
            prof.start() if step == 4 else prof.stop()

    result = train_adapter(tok_dir, base, cfg, work / f"out-{case.replace(':', '-')}", log)
    if prof is not None:
        write_profile(prof, case)
    profiled = {5, 6} if prof is not None else set()
    timed = ([steps[s] for s in sorted(steps) if s > 3 and s not in profiled and "step_s" in steps[s]]
             or list(steps.values()))
    med = sorted(timed, key=lambda m: m["step_s"])[len(timed) // 2]  # median step after warm-up
    return dict(recipe="peftpipe", case=case, shape=shape, mode=method, ckpt=ckpt, data=data, attn=attn,
                seq=SEQ, micro_batch=mb, step_s=round(med["step_s"], 4), tokens_per_s=round(med["tokens_per_s"]),
                mfu=round(med.get("mfu", 0.0), 4), peak_gib=round(result.get("gpu_peak_gib", 0.0), 2),
                final_train_loss=round(result["train_loss"], 4),
                gpu=torch.cuda.get_device_name() if CUDA else "cpu")


KINDS = [("gemm", ("gemm", "cutlass", "nvjet", "xmma", "cublas", "matmul")),
         ("attention", ("flash", "fmha", "attention", "sdpa", "efficient")),
         ("nf4 dequantize", ("dequant", "kdequantize")), ("fused by compile (triton)", ("triton",))]


def profiler(case: str):
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if CUDA else [])
    return torch.profiler.profile(activities=acts)


def write_profile(prof, case: str) -> None:
    """The top kernels by device time over the two profiled steps, and the share of each kind of kernel."""
    events = [e for e in prof.key_averages() if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    self_time = lambda e: getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)  # noqa: E731
    total = sum(self_time(e) for e in events) or 1.0
    shares: dict[str, float] = {}
    for e in events:
        kind = next((k for k, keys in KINDS if any(x in e.key.lower() for x in keys)), "other")
        shares[kind] = shares.get(kind, 0.0) + self_time(e) / total
    top = sorted(events, key=self_time, reverse=True)[:25]
    lines = [f"{case}: device time of 2 steps {total / 1e3:.1f} ms; share by kind: "
             + ", ".join(f"{k} {v:.1%}" for k, v in sorted(shares.items(), key=lambda kv: -kv[1])),
             "share  ms  calls  kernel"]
    lines += [f"{self_time(e) / total:6.1%} {self_time(e) / 1e3:8.1f} {e.count:6d}  {e.key[:140]}" for e in top]
    out = Path(os.environ.get("PROFILE_DIR", ".")) / f"profile-{case.replace(':', '_').replace('+', '_')}.txt"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:12]), flush=True)


if __name__ == "__main__":
    out, cases = sys.argv[1], sys.argv[2:]
    results = json.loads(Path(out).read_text()) if Path(out).exists() else []
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            t0 = time.time()
            try:
                row = bench(case, Path(tmp))
            except Exception as exc:  # one failing case (e.g. out of memory) must not lose the others
                traceback.print_exc()
                row = dict(recipe="peftpipe", case=case, error=f"{type(exc).__name__}: {str(exc)[:300]}")
            row["wall_s"] = round(time.time() - t0, 1)
            results.append(row)
            print(json.dumps(row), flush=True)
            Path(out).write_text(json.dumps(results, indent=1))
            torch._dynamo.reset()  # compiled code and recompile counts must not leak into the next case
            gc.collect()
            torch.cuda.empty_cache() if CUDA else None

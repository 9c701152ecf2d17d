"""FSDP2 against DDP on N GPUs of one host, through the real launcher: tokens/s and peak GPU memory per run.

  python bench/train/fsdp.py OUT_JSON --gpus 2 --shape llama-8b --method qlora [--parallel ddp fsdp]
      [--cap-gib 40] [--steps 10] [--mb 2] [--seq 2048] [--resume-check]

Each run trains ``tasks.train.train_adapter`` under torchrun (``train.parallel``), on random-weight Llama shapes
(the 1B/8B shapes of bench/train/speed.py, plus 32B and 70B), on SEQ-token random rows, at the same global batch
for every parallel setting. ``--cap-gib`` caps each GPU's memory (PEFTPIPE_GPU_MEMORY_CAP_GIB, read by
tasks.train.rank) to stand in for smaller cards, so a shape that does not fit one capped GPU shows DDP failing
(recorded as an error row, nothing hidden) and FSDP training. ``--resume-check`` (FSDP only) stops the run after
its first sharded checkpoint, resumes it, and records whether the resumed steps match the uninterrupted run.
Rows: parallel, gpus, tokens_per_s (median after 3 warm-up steps, all ranks), gpu_peak_gib (rank 0), losses.
Not run yet: the multi-GPU kinds were not lent (issue 22); docs/deploy.md has the commands.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from schemas.pipeline import PipelineConfig  # noqa: E402
from tasks.train.launch import launch_distributed  # noqa: E402
from tasks.train.loop import STEP_LOG  # noqa: E402
from tasks.train.synthetic import random_rows, write_split  # noqa: E402

SHAPES = {
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8),
    "llama-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8),
    "32b": dict(hidden_size=5120, intermediate_size=27648, num_hidden_layers=64, num_attention_heads=40,
                num_key_value_heads=8),
    "llama-70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                      num_key_value_heads=8),
}
VOCAB = 128256


def checkpoint(shape: str, root: Path) -> str:
    """A random bf16 checkpoint of ``shape``, built in host memory (a 70B shape does not fit one GPU)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tasks.tokenize.tokenizer import train_sample_tokenizer

    path = root / f"ckpt-{shape}"
    if not (path / "config.json").is_file():
        cfg = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=8192, rope_theta=500000.0,
                          tie_word_embeddings=False, **SHAPES[shape])
        torch.set_default_dtype(torch.bfloat16)
        try:
            LlamaForCausalLM(cfg).save_pretrained(path, max_shard_size="5GB")
        finally:
            torch.set_default_dtype(torch.float32)
    if not (path / "tokenizer.json").is_file():
        train_sample_tokenizer([f"text {i} for the benchmark tokenizer" for i in range(50)], path, 300)
    return str(path)


def config(work: Path, base: str, args, parallel: str, save_every: int) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "ingest": {"sources": [{"name": "bench", "path": "unused"}]}, "workdir": str(work),
        "model": {"name_or_path": base, "attn_implementation": "sdpa"},
        "adapter": {"method": args.method, "r": 16, "alpha": 32},
        "train": {"max_steps": args.steps, "micro_batch_size": args.mb, "lr": 1e-4, "warmup_steps": 1,
                  "eval_every": args.steps, "eval_max_batches": 1, "save_every": save_every, "loss": "chunked",
                  "gradient_checkpointing": True, "num_processes": args.gpus, "parallel": parallel}})


def losses(out: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (out / STEP_LOG).read_text().splitlines()] if (out / STEP_LOG).is_file() else []
    return {m["step"]: m["train_loss"] for m in lines}


def run(work: Path, base: str, args, parallel: str) -> dict:
    out = work / f"{parallel}-{args.shape}-{args.method}-{args.gpus}"
    row = {"parallel": parallel, "gpus": args.gpus, "shape": args.shape, "method": args.method, "seq": args.seq,
           "micro_batch_per_gpu": args.mb, "cap_gib": args.cap_gib, "gpu": torch.cuda.get_device_name()}
    t0 = time.time()
    try:
        res = launch_distributed(work / "tok", base, config(work, base, args, parallel, 10**6), out, None, args.gpus)
    except RuntimeError as exc:  # e.g. DDP out of memory under the cap: the row says so
        return {**row, "error": str(exc)[:300], "wall_s": round(time.time() - t0, 1)}
    row.update(steps=res["steps"], train_loss=res["train_loss"], tokens_per_s=round(res["tokens_per_s"]),
               gpu_peak_gib=round(res.get("gpu_peak_gib", 0), 2), wall_s=round(time.time() - t0, 1))
    if args.resume_check and parallel == "fsdp":
        row["resume_matches"] = resume_check(work, base, args, losses(out))
    return row


def resume_check(work: Path, base: str, args, full: dict[int, float]) -> bool:
    """Stop after the first sharded checkpoint (the test pause point, released at once), resume, compare."""
    out = work / f"fsdp-resume-{args.shape}"
    half = max(1, args.steps // 2)
    cfg = config(work, base, args, "fsdp", half)
    env = {"PEFTPIPE_TEST_PAUSE": "train.checkpoint", "PEFTPIPE_TEST_PAUSE_FILE": str(work / "paused.json"),
           "PEFTPIPE_TEST_PAUSE_MAX_S": "0"}
    os.environ.update(env)
    try:
        launch_distributed(work / "tok", base, cfg, out, None, args.gpus)
    except RuntimeError:
        pass  # the ranks exited at the pause point, after the checkpoint
    finally:
        for k in env:
            os.environ.pop(k)
    launch_distributed(work / "tok", base, cfg, out, None, args.gpus)
    resumed = losses(out)
    return all(abs(resumed[s] - full[s]) <= 1e-3 * abs(full[s]) for s in full if s in resumed)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_json")
    p.add_argument("--gpus", type=int, default=torch.cuda.device_count())
    p.add_argument("--shape", choices=sorted(SHAPES), default="llama-8b")
    p.add_argument("--method", choices=["lora", "qlora"], default="qlora")
    p.add_argument("--parallel", nargs="+", choices=["ddp", "fsdp"], default=["ddp", "fsdp"])
    p.add_argument("--cap-gib", type=float, default=None, help="per-GPU memory cap, GiB")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--mb", type=int, default=2)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--work", default=os.environ.get("TMPDIR", "/tmp"))
    p.add_argument("--resume-check", action="store_true")
    args = p.parse_args()
    if args.cap_gib:
        os.environ["PEFTPIPE_GPU_MEMORY_CAP_GIB"] = str(args.cap_gib)
    work = Path(args.work) / "peftpipe-fsdp-bench"
    base = checkpoint(args.shape, work)
    rows_needed = args.mb * args.gpus * args.steps
    write_split(work / "tok" / "train", random_rows(rows_needed, VOCAB, seed=0, seq_len=args.seq))
    write_split(work / "tok" / "eval", random_rows(args.mb * args.gpus, VOCAB, seed=1, seq_len=args.seq))
    rows = []
    for parallel in args.parallel:
        rows.append(run(work, base, args, parallel))
        print(json.dumps(rows[-1]), flush=True)
        Path(args.out_json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

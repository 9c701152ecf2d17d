"""peftpipe's DPO / KTO against TRL's DPOTrainer / KTOTrainer: same pairs, same tiny model, same LoRA init, same
data order, same optimizer; per-step loss, rewards/chosen, rewards/rejected, reward accuracy (DPO) and kl (KTO)
side by side, and tokens/s with peak memory, each side in its own process.

    .venv/bin/pip install -e '.[bench]'      # trl
    .venv/bin/python bench/preference/trl_compare.py --objective dpo --steps 30
    .venv/bin/python bench/preference/trl_compare.py --objective kto --steps 30

The data are the bundled preference sample, curated by the real stages (ingest -> preference -> preference
tokenize, tiny model built offline). TRL gets the very token ids (its ``_prepare_dataset`` is bypassed; the
prompt is each sequence's tokens before the first labelled one) in the order peftpipe's cursor draws them, with
``train_sampling_strategy='sequential'``, so both see the same batches; KTO's mismatched KL completions are
rotated by one within each batch, as TRL's ``_prepare_dataset`` does. The LoRA weights start equal (one seed,
one ``add_adapter``), AdamW without weight decay at a constant learning rate, clipping at 1.0, CPU, fp32.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
WORK = Path("/tmp/peftpipe-bench-preference")
METRICS = {"dpo": ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies"),
           "kto": ("loss", "rewards/chosen", "rewards/rejected", "kl")}


def config(objective: str, steps: int, loss: str = "standard", precompute: bool = False):
    from schemas.pipeline import PipelineConfig

    return PipelineConfig.model_validate({
        "name": "bench-preference", "workdir": str(WORK / objective),
        "ingest": {"sources": [{"name": "preference", "path": str(ROOT / "data/preference_sample.jsonl"),
                                "format": "messages"}]},
        "split": {"eval_fraction": 0.2}, "tokenize": {"max_seq_len": 256},
        "adapter": {"r": 8, "alpha": 16},
        "train": {"objective": objective, "max_steps": steps, "micro_batch_size": 4, "lr": 1e-3,
                  "warmup_steps": 0, "min_lr_ratio": 1.0, "weight_decay": 0.0, "max_grad_norm": 1.0,
                  "eval_every": 10_000, "save_every": 10_000, "device": "cpu", "loss": loss, "seed": 0,
                  "pad_to_multiple_of": 1, "preference": {"beta": 0.1, "precompute_ref": precompute}}})


def prepare(objective: str) -> tuple[Path, str]:
    """Curate and tokenize the sample once per objective (plain stage functions, no Prefect)."""
    from tasks.ingest.stage import ingest
    from tasks.preference.stage import build_preferences
    from tasks.preference.tokenize import tokenize_preferences
    from tasks.train.model import prepare_base_model

    cfg = config(objective, 1)
    done = WORK / objective / "prepared.json"
    if done.is_file():
        info = json.loads(done.read_text())
        return Path(info["tokenized"]), info["base"]
    out = WORK / objective
    ingest(cfg.ingest, out / "ingest")
    build_preferences(out / "ingest" / "data", cfg, out / "preference")
    base = prepare_base_model(cfg.model, out, out / "preference" / "train_records")
    tokenize_preferences(out / "preference", base, cfg.tokenize, objective, out / "tokenized")
    done.write_text(json.dumps({"tokenized": str(out / "tokenized"), "base": base}))
    return out / "tokenized", base


def run_ours(objective: str, steps: int, variant: str) -> dict:
    """variant: 'standard' (plain head), 'chunked' (the fused log-prob head), 'precompute' (reference cached)."""
    from tasks.train.preference import train_preference_adapter

    tok, base = prepare(objective)
    cfg = config(objective, steps, "chunked" if variant == "chunked" else "standard", variant == "precompute")
    logged: dict[int, dict] = {}
    out = WORK / objective / f"ours-{variant}-{time.time_ns()}"
    t0 = time.perf_counter()
    result = train_preference_adapter(tok, base, cfg, out, lambda m, s: logged.setdefault(s, {}).update(m))
    wall = time.perf_counter() - t0
    per_step = [{"loss": logged[s]["train_loss"], **{k: logged[s][k] for k in METRICS[objective][1:]}}
                for s in sorted(logged) if "train_loss" in logged[s]]
    speeds = [logged[s]["tokens_per_s"] for s in sorted(logged) if "tokens_per_s" in logged[s]]
    steps_s = sum(logged[s]["step_s"] for s in logged if "step_s" in logged[s])
    return {"per_step": per_step, "tokens_per_s": statistics.median(speeds[3:] or speeds),
            "steps_s": steps_s, "train_wall_s": wall, "tokens": result["tokens"]}


def trl_rows(objective: str, tok: Path, steps: int, micro: int, seed: int) -> list[dict]:
    """The tokenized rows in the order peftpipe's cursor draws them, in TRL's pre-tokenized layout."""
    import numpy as np

    from tasks.core.stage import read_table
    from tasks.train.data import DataCursor

    table = read_table(tok / "train").to_pylist()

    def split(ids, labels):
        first = int(np.flatnonzero(np.asarray(labels) != -100)[0])
        return ids[:first], ids[first:]

    rows = []
    for r in table:
        if objective == "dpo":
            p_c, c = split(r["chosen_input_ids"], r["chosen_labels"])
            p_r, rj = split(r["rejected_input_ids"], r["rejected_labels"])
            assert p_c == p_r, "the two sides of a pair must share their prompt tokens"
            rows.append({"prompt_ids": p_c, "chosen_ids": c, "rejected_ids": rj})
        else:
            p, c = split(r["input_ids"], r["labels"])
            rows.append({"prompt_ids": p, "completion_ids": c, "label": bool(r["label"])})
    cursor = DataCursor(seed=seed)
    ordered = [rows[i] for _ in range(steps) for i in cursor.take(len(rows), micro)]
    if objective == "kto":  # TRL's KL completions: rotated by one within each batch of the (sequential) order
        for start in range(0, len(ordered), micro):
            batch = ordered[start:start + micro]
            comps = [b["completion_ids"] for b in batch]
            for b, kl in zip(batch, [comps[-1]] + comps[:-1]):
                b["KL_completion_ids"] = kl
    return ordered


def run_trl(objective: str, steps: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

    from tasks.train.model import add_adapter, load_base_model, load_base_tokenizer

    tok, base = prepare(objective)
    cfg = config(objective, steps)
    tc = cfg.train
    torch.set_num_threads(1)  # as peftpipe's set_cpu_threads does for a model this small
    torch.manual_seed(tc.seed)
    model = add_adapter(load_base_model(cfg.model, cfg.adapter, torch.device("cpu"), base=base), cfg.adapter)
    tokenizer = load_base_tokenizer(base, cfg.model)
    data = Dataset.from_list(trl_rows(objective, tok, steps, tc.micro_batch_size, tc.seed))
    common = dict(output_dir=str(WORK / objective / "trl"), per_device_train_batch_size=tc.micro_batch_size,
                  gradient_accumulation_steps=1, max_steps=steps, learning_rate=tc.lr, lr_scheduler_type="constant",
                  warmup_steps=0, weight_decay=0.0, max_grad_norm=tc.max_grad_norm, optim="adamw_torch",
                  logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=tc.seed,
                  train_sampling_strategy="sequential", dataloader_num_workers=0, beta=tc.preference.beta,
                  max_length=None, disable_dropout=True, bf16=False, remove_unused_columns=False)
    args = (DPOConfig(**common) if objective == "dpo" else
            KTOConfig(**common, desirable_weight=1.0, undesirable_weight=1.0))
    base_cls = DPOTrainer if objective == "dpo" else KTOTrainer

    class Bench(base_cls):
        raw_losses: list[float] = []

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset  # already tokenized, in peftpipe's order (see the module docstring)

        def compute_loss(self, *a, **k):
            loss = super().compute_loss(*a, **k)
            self.raw_losses.append(float(loss.detach()))  # Trainer's log rounds the loss to 4 digits
            return loss

    times, tokens = [], []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)

    trainer = Bench(model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=[Clock()])
    key = "chosen_ids" if objective == "dpo" else "completion_ids"
    for start in range(0, steps * tc.micro_batch_size, tc.micro_batch_size):
        batch = data[start:start + tc.micro_batch_size]
        n = sum(len(p) + len(c) for p, c in zip(batch["prompt_ids"], batch[key]))
        if objective == "dpo":
            n += sum(len(p) + len(r) for p, r in zip(batch["prompt_ids"], batch["rejected_ids"]))
        tokens.append(n)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    logs = [h for h in trainer.state.log_history if "loss" in h]  # one per step (a batch without desirable
    # examples has no rewards/chosen: TRL leaves it out, peftpipe logs NaN; both are skipped in the comparison)
    per_step = [{"loss": loss, **{k: h.get(k) for k in METRICS[objective][1:]}}
                for loss, h in zip(Bench.raw_losses, logs)]
    speeds = [n / t for n, t in zip(tokens, times)]
    return {"per_step": per_step, "tokens_per_s": statistics.median(speeds[3:] or speeds), "steps_s": sum(times),
            "train_wall_s": wall, "tokens": sum(tokens)}


def side(name: str, objective: str, steps: int) -> dict:
    """One side in this process; peak RSS read at the end."""
    out = run_trl(objective, steps) if name == "trl" else run_ours(objective, steps, name.split("-", 1)[1])
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _both(a, b) -> bool:
    return a is not None and b is not None and a == a and b == b  # neither missing nor NaN


def compare(objective: str, steps: int) -> dict:
    prepare(objective)
    sides = {}
    names = ["ours-standard", "ours-chunked"] + (["ours-precompute"] if objective == "dpo" else []) + ["trl"]
    for name in names:
        proc = subprocess.run([sys.executable, __file__, "--side", name, "--objective", objective,
                               "--steps", str(steps)], capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{proc.stderr[-4000:]}")
        sides[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    ref = sides["trl"]["per_step"]
    diffs = {}
    for name in names[:-1]:
        mine = sides[name]["per_step"]
        assert len(mine) == len(ref) == steps, (name, len(mine), len(ref))
        diffs[name] = {k: max(abs(a[k] - b[k]) for a, b in zip(mine, ref) if _both(a.get(k), b.get(k)))
                       for k in METRICS[objective]}
    return {"objective": objective, "steps": steps, "sides": sides, "max_abs_diff_vs_trl": diffs,
            "machine": f"{__import__('platform').processor() or 'cpu'}, {__import__('os').cpu_count()} cores"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objective", choices=["dpo", "kto"], default="dpo")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/preference/results.json")
    a = ap.parse_args()
    if a.side:
        print(json.dumps(side(a.side, a.objective, a.steps)))
        return
    res = compare(a.objective, a.steps)
    results = json.loads(a.out.read_text()) if a.out.is_file() else {}
    results[a.objective] = res
    a.out.write_text(json.dumps(results, indent=1) + "\n")
    for name, s in res["sides"].items():
        print(f"{name:14s} tokens/s {s['tokens_per_s']:8.0f}  peak RSS {s['peak_rss_mb']:6.0f} MB  "
              f"steps {s['steps_s']:.1f} s  whole train call {s['train_wall_s']:.1f} s")
    print("max |ours - trl| over", a.steps, "steps:", json.dumps(res["max_abs_diff_vs_trl"], indent=1))


if __name__ == "__main__":
    main()

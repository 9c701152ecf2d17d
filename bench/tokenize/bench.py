"""Tokenize stage benchmark: tokens/s of the whole stage against the raw batched tokenizer on the same texts,
and packing efficiency (real tokens / slots) on the bundled sample and on a synthetic long-tail corpus.

    .venv/bin/python bench/tokenize/bench.py [--records 20000] [--repeats 3] [--out bench/tokenize/results.json]

Everything is built locally (the sample BPE tokenizer, the corpora); nothing is downloaded. Timings are the
best of ``--repeats`` interleaved runs, so both sides see the same machine load.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from schemas.record import RECORD_SCHEMA  # noqa: E402
from schemas.tokenize import TokenizeConfig  # noqa: E402
from tasks.core.stage import ShardWriter  # noqa: E402
from tasks.split.stage import is_eval  # noqa: E402
from tasks.tokenize.packing import best_fit_decreasing, packing_efficiency  # noqa: E402
from tasks.tokenize.stage import tokenize_splits  # noqa: E402
from tasks.tokenize.tokenizer import load_tokenizer, train_sample_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def sample_records() -> list[dict]:
    """The bundled sample's rows that already have a messages list (ingest's other formats are skipped)."""
    out = []
    for line in (ROOT / "data" / "sample.jsonl").read_bytes().decode("utf-8", "replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        msgs = row.get("messages") if isinstance(row, dict) else None
        if isinstance(msgs, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in msgs):
            out.append({"id": str(row.get("id")), "source": "sample", "annotations": [], "meta": "{}",
                        "messages": [{"role": str(m.get("role")), "content": m["content"]} for m in msgs]})
    return out


def long_tail_records(n: int, seed: int = 0) -> list[dict]:
    """Chats whose lengths follow a log-normal long tail (median ~120 words, a few near 2,000), 1-4 turns."""
    rng = np.random.default_rng(seed)
    vocab = np.array([w for r in sample_records()[:300] for m in r["messages"] for w in m["content"].split()])
    out = []
    for i in range(n):
        msgs = []
        for _ in range(int(rng.choice([1, 1, 1, 2, 3, 4]))):
            for role, scale in (("user", 0.4), ("assistant", 1.0)):
                words = max(1, min(2000, int(rng.lognormal(np.log(60 * scale), 1.0))))
                msgs.append({"role": role, "content": " ".join(rng.choice(vocab, words))})
        out.append({"id": f"lt-{i}", "source": "synthetic", "annotations": [], "meta": "{}", "messages": msgs})
    return out


def write_split(records: list[dict], directory: Path) -> None:
    for split in ("train", "eval"):
        rows = [r for r in records if is_eval(r["id"], 0.1, 0) == (split == "eval")]
        with ShardWriter(directory / split, RECORD_SCHEMA) as w:
            w.write(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA))


def raw_tokenizer_seconds(tok, convs: list[list[dict]], batch_size: int) -> tuple[float, int]:
    """The reference: the fast tokenizer alone, batched, on the already rendered chat texts."""
    texts = tok.apply_chat_template(convs, tokenize=False)  # rendered outside the timer
    start = time.perf_counter()
    n = 0
    for i in range(0, len(texts), batch_size):
        n += sum(len(ids) for ids in tok(texts[i:i + batch_size], add_special_tokens=False)["input_ids"])
    return time.perf_counter() - start, n


def public_api_seconds(tok, convs: list[list[dict]], batch_size: int) -> float:
    """The usual recipe (TRL-style): ``apply_chat_template(return_assistant_tokens_mask=True)`` per batch."""
    start = time.perf_counter()
    for i in range(0, len(convs), batch_size):
        tok.apply_chat_template(convs[i:i + batch_size], return_dict=True, return_assistant_tokens_mask=True)
    return time.perf_counter() - start


def next_fit_rows(lengths: list[int], capacity: int) -> int:
    """Baseline packer: records in file order, a new row whenever the next one does not fit."""
    rows, room = 0, 0
    for n in lengths:
        if n > room:
            rows, room = rows + 1, capacity
        room -= n
    return rows


def bench_corpus(name: str, records: list[dict], tok_dir: Path, work: Path, max_seq_len: int, repeats: int,
                 num_procs: list[int]) -> dict:
    split_dir = work / name / "split"
    write_split(records, split_dir)
    tok = load_tokenizer(str(tok_dir))
    convs = [r["messages"] for r in records]
    result: dict = {"corpus": name, "records": len(records), "max_seq_len": max_seq_len}
    best: dict[str, float] = {}
    ledgers = {}
    cpu: dict[str, float] = {}
    for rep in range(repeats):
        c0 = time.process_time()
        raw_s, raw_tokens = raw_tokenizer_seconds(tok, convs, 1000)
        if raw_s < best.get("raw_tokenizer", 1e9):
            best["raw_tokenizer"], cpu["raw_tokenizer"] = raw_s, time.process_time() - c0
        c0 = time.process_time()
        api_s = public_api_seconds(tok, convs, 1000)
        if api_s < best.get("apply_chat_template_with_mask", 1e9):
            best["apply_chat_template_with_mask"], cpu["apply_chat_template_with_mask"] = api_s, time.process_time() - c0
        for p in num_procs:
            cfg = TokenizeConfig(max_seq_len=max_seq_len, overlong="truncate", num_proc=p)
            start, c0 = time.perf_counter(), time.process_time()
            ledgers[p] = tokenize_splits(split_dir, str(tok_dir), cfg, work / name / f"out-{p}-{rep}")
            key = f"stage_num_proc_{p}"
            if time.perf_counter() - start < best.get(key, 1e9):
                best[key], cpu[key] = time.perf_counter() - start, time.process_time() - c0
    led = ledgers[num_procs[0]]
    # Both sides tokenize the same rendered texts, so throughput counts the same tokens (before the length
    # policy truncates some); the stage also reads, renders, masks, packs and writes them.
    result["tokens"] = raw_tokens
    result["tokens_kept"] = led.extra["train_tokens"] + led.extra["eval_tokens"]
    result["tokens_per_s"] = {k: round(raw_tokens / s) for k, s in best.items()}
    result["seconds"] = {k: round(s, 3) for k, s in best.items()}
    result["cpu_seconds_main_process"] = {k: round(s, 3) for k, s in cpu.items()}
    result["ledger"] = led.to_dict()
    # Packing comparison on the same kept train lengths.
    lengths = [len(ids) for ids in tok.apply_chat_template(
        [r["messages"] for r in records if not is_eval(r["id"], 0.1, 0)])["input_ids"]]
    lengths = [min(n, max_seq_len) for n in lengths]
    total = sum(lengths)
    # No packer can use fewer rows than this: all tokens, and one row per record longer than half a row.
    min_rows = max(-(-total // max_seq_len), sum(n > max_seq_len // 2 for n in lengths))
    result["packing"] = {
        "lower_bound_rows": min_rows, "best_possible": round(packing_efficiency(total, min_rows, max_seq_len), 4),
        "best_fit_decreasing": round(packing_efficiency(total, len(best_fit_decreasing(lengths, max_seq_len)),
                                                        max_seq_len), 4),
        "next_fit_in_order": round(packing_efficiency(total, next_fit_rows(lengths, max_seq_len), max_seq_len), 4),
        "padding_only_to_max_seq_len": round(packing_efficiency(total, len(lengths), max_seq_len), 4),
        "stage_train": led.extra["packing_efficiency"], "stage_eval": led.extra["eval_packing_efficiency"],
    }
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--num-proc", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", default=str(ROOT / "bench" / "tokenize/results.json"))
    args = ap.parse_args()
    sample = sample_records()
    tail = long_tail_records(args.records)
    results = {"machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores",
               "command": " ".join(["bench/tokenize/bench.py", *sys.argv[1:]]), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        texts = [m["content"] for r in sample + tail[:2000] for m in r["messages"]]
        tok_dir = train_sample_tokenizer(texts, work / "tok", vocab_size=2048)
        for name, records, msl in (("sample", sample, 256), ("sample", sample, 512),
                                   ("long_tail", tail, 512), ("long_tail", tail, 2048)):
            procs = args.num_proc if name == "long_tail" and msl == 2048 else [1]
            r = bench_corpus(f"{name}", records, tok_dir, work / f"{name}-{msl}", msl, args.repeats, procs)
            print(json.dumps({k: v for k, v in r.items() if k != "ledger"}), flush=True)
            results["runs"].append(r)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

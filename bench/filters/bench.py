"""Benchmark: records/s of the full default filter chain (tasks.filters.apply_filters) on synthetic records.

    .venv/bin/python bench/filters/bench.py --records 1000000 --out bench/filters/results.json

Builds a synthetic annotated chat set shaped like data/sample.jsonl (1-5 annotators, ratings 1-5, flag labels,
responses of 3-250 words, with planted low-rated, disagreeing, flagged, single-annotator, short, empty,
repetitive, refusal and PII records), writes it as Parquet shards, then times the stage end to end (both
passes, reading and writing shards included). As a reference in the same run it times the same chain
row by row -- one record at a time through per-record rule functions, as document-at-a-time pipelines do --
on a slice of the data, and checks that both make the same decisions on that slice.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from schemas.filters import FilterConfig, RepetitionParams  # noqa: E402
from schemas.record import RECORD_SCHEMA  # noqa: E402
from tasks.core.stage import read_table  # noqa: E402
from tasks.filters import apply_filters  # noqa: E402
from tasks.filters.pii import redact  # noqa: E402
from tasks.filters.text import repetition_reason, symbol_reason, truncation_reason  # noqa: E402

VOCAB = ("the a of to and in is that for it as with was on be by this are or an from at which but not have "
         "has you can more one all their will there been would also if its about other into only some than "
         "time two may then first any new these could such most after over many where water energy plant "
         "number answer result value method example simple total step because each light system data model "
         "first second third sum mean median price cost travel speed recipe scale cell river city capital").split()
FLAGS = ["spam", "toxic", "pii", "off_topic"]


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(n)).capitalize() + "."


def response(rng: random.Random, kind: str) -> str:
    if kind == "short":
        return "Ok."
    if kind == "empty":
        return ""
    if kind == "repetitive":
        return ("Buy now and save big today. " * rng.randint(8, 20)).strip()
    if kind == "refusal":
        return "As an AI language model, I cannot help with that request. " + sentence(rng, 8)
    n_sent = rng.choice([1, 1, 2, 3, 4, 6, 10, 15])
    parts = [sentence(rng, rng.randint(4, 16)) for _ in range(n_sent)]
    if rng.random() < 0.15:  # some answers are lists or worked arithmetic, as in the sample
        parts += [f"- item {i}: {rng.randint(1, 99)} x {rng.random():.2f} = {rng.randint(1, 99)}" for i in range(4)]
    text = " ".join(parts)
    if kind == "pii":
        text += f" Contact me at user{rng.randint(1, 999)}@example.com or +1 415-555-{rng.randint(1000, 9999)}."
    return text


KINDS = [("clean", 0.78), ("low_rating", 0.05), ("low_agreement", 0.04), ("flagged", 0.04), ("single", 0.03),
         ("short", 0.015), ("empty", 0.005), ("repetitive", 0.01), ("refusal", 0.01), ("pii", 0.02)]


def make_record(i: int, rng: random.Random) -> dict:
    kind = rng.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]
    n_ann = 1 if kind == "single" else rng.randint(2, 5)
    people = rng.sample(range(60), n_ann)
    if kind == "low_rating":
        ratings = [rng.choice([1, 2]) for _ in people]
    elif kind == "low_agreement":
        ratings = [1, 5] + [rng.randint(3, 5) for _ in people[2:]]
    else:
        base = rng.choice([4, 5])
        ratings = [min(5, base + rng.choice([0, 0, -1])) for _ in people]
    labels = [[] for _ in people]
    if kind == "flagged":
        flag = rng.choice(FLAGS)
        for j in range(n_ann // 2 + 1):
            labels[j] = [flag]
    messages = [{"role": "user", "content": sentence(rng, rng.randint(5, 25)).rstrip(".") + "?"},
                {"role": "assistant", "content": response(rng, kind)}]
    if rng.random() < 0.15:
        messages.insert(0, {"role": "system", "content": "You are a helpful assistant."})
    return {"id": f"b{i:08d}", "source": rng.choice(["web", "vendor_a", "vendor_b"]), "messages": messages,
            "annotations": [{"annotator_id": f"ann{p:02d}", "rating": float(r), "labels": lb}
                            for p, r, lb in zip(people, ratings, labels, strict=True)],
            "meta": json.dumps({"planted": kind})}


def make_dataset(directory: Path, n: int, shard: int = 100_000, seed: int = 0) -> None:
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for start in range(0, n, shard):
        rows = [make_record(i, rng) for i in range(start, min(n, start + shard))]
        pq.write_table(pa.Table.from_pylist(rows, RECORD_SCHEMA), directory / f"part-{start // shard:05d}.parquet")


def row_by_row(rows: list[dict], cfg: FilterConfig) -> list[str | None]:
    """The reference: the same default chain, one record at a time, each rule on that record alone."""
    specs = {s.name: s.parsed() for s in cfg.filters}
    out = []
    for r in rows:
        anns = {a["annotator_id"]: a for a in r["annotations"]}.values()
        ratings = [a["rating"] for a in anns if a["rating"] is not None]
        msgs = [(m["role"], m["content"] or "") for m in r["messages"]]
        resp = "\n\n".join(c for role, c in msgs if role == "assistant")
        why = None
        if len(anns) < specs["min_annotators"].min_count:
            why = "too_few_annotators"
        if why is None:
            p = specs["flagged_labels"]
            shares = Counter(lb for a in anns for lb in set(a["labels"] or []))
            best = max(((shares[lb] / len(anns), -i, lb) for i, lb in enumerate(p.labels)), default=(0, 0, ""))
            why = f"flagged:{best[2]}" if best[0] >= p.min_share and best[0] > 0 else None
        if why is None:
            mean = sum(ratings) / len(ratings) if ratings else float("nan")
            why = "no_rating" if not ratings else ("low_rating" if mean < specs["min_rating"].threshold else None)
        if why is None and ratings and max(ratings) - min(ratings) > specs["max_rating_spread"].max_spread + 1e-9:
            why = "low_agreement"
        if why is None:
            found = truncation_reason(msgs, specs["empty_or_truncated"])
            why = found and found[0]
        if why is None:
            p = specs["response_length"]
            why = "too_short" if len(resp) < p.min_chars else ("too_long" if len(resp) > p.max_chars else None)
        if why is None:
            found = repetition_reason(resp, specs["repetition"]) or symbol_reason(resp, specs["symbol_ratio"])
            why = found and found[0]
        if why is None:
            import re
            p = specs["patterns"]
            for reason, pats in (("refusal", p.refusal_patterns), ("boilerplate", p.boilerplate_patterns)):
                if any(re.search(x, resp, re.IGNORECASE) for x in pats):
                    why = reason
                    break
        if why is None:
            for m in r["messages"]:
                redact(m["content"] or "")
        out.append(why)
    return out


def gopher_side_by_side(texts: list[str], datatrove_python: str, tmp: Path) -> dict:
    """Our Gopher repetition rules vs datatrove's GopherRepetitionFilter on the same texts, same thresholds."""
    pq.write_table(pa.table({"text": texts}), tmp / "texts.parquet")
    script = Path(__file__).with_name("gopher_ref.py")
    subprocess.run([datatrove_python, str(script), "--texts", str(tmp / "texts.parquet"),
                    "--out", str(tmp / "ref.json")], check=True)
    ref = json.loads((tmp / "ref.json").read_text())
    # Gopher as published: every word counts, a top n-gram counts once seen, no minimum length.
    gopher = RepetitionParams(top_ngram_min_count=1, min_words=0, alnum_words_only=False)
    ours = {}
    for name, params in (("gopher_settings", gopher), ("default_settings", RepetitionParams())):
        c0 = time.process_time()
        decisions = [repetition_reason(t, params) for t in texts]
        cpu = time.process_time() - c0
        ours[name] = {"cpu_s": round(cpu, 2), "texts_per_cpu_s": round(len(texts) / cpu),
                      "dropped_share": round(sum(d is not None for d in decisions) / len(texts), 4)}
        if name == "gopher_settings":
            same = sum((d is None) == (r is None) for d, r in zip(decisions, ref["decisions"], strict=True))
            ours[name]["same_keep_drop_as_datatrove"] = round(same / len(texts), 4)
    return {"texts": len(texts),
            "datatrove_GopherRepetitionFilter": {
                "cpu_s": round(ref["cpu_s"], 2), "texts_per_cpu_s": round(len(texts) / ref["cpu_s"]),
                "dropped_share": round(sum(d is not None for d in ref["decisions"]) / len(texts), 4)},
            "ours_repetition": ours}


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (the spawned workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--reference-records", type=int, default=20_000, help="Slice timed row by row.")
    ap.add_argument("--batch-size", type=int, default=10_000)
    ap.add_argument("--workers", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2],
                    help="Comma-separated worker counts to time, e.g. 1,2.")
    ap.add_argument("--workdir", type=Path, default=None, help="Where to write outputs (default: a temp dir).")
    ap.add_argument("--data", type=Path, default=None, help=(
        "Input shard directory: reused if it holds shards (same seed, same data), else generated there."))
    ap.add_argument("--out", type=Path, default=Path("bench/filters/results.json"))
    ap.add_argument("--datatrove-python", default=None, help=(
        "Python of an environment with datatrove, to time its GopherRepetitionFilter on the same texts."))
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        data = args.data or tmp / "in"
        t0 = time.perf_counter()
        if not sorted(Path(data).glob("*.parquet")):
            make_dataset(data, args.records)
        gen_s = time.perf_counter() - t0
        args.records = sum(pq.ParquetFile(p).metadata.num_rows for p in sorted(Path(data).glob("*.parquet")))
        runs = {}
        for workers in args.workers:
            cfg = FilterConfig(batch_size=args.batch_size, workers=workers)
            out = tmp / f"out-w{workers}"
            out.mkdir()
            load = os.getloadavg()[0]
            t0, c0 = time.perf_counter(), _cpu_s()
            ledger = apply_filters(data, cfg, out)
            stage_s, cpu_s = time.perf_counter() - t0, _cpu_s() - c0
            ledger.check()
            runs[workers] = {"stage_s": round(stage_s, 1), "records_per_s": round(args.records / stage_s),
                             "cpu_s": round(cpu_s, 1), "records_per_cpu_s": round(args.records / cpu_s),
                             "load_avg_at_start": round(load, 2), "seconds_by_part": ledger.extra["seconds"]}
            print(f"workers={workers}: {runs[workers]}", flush=True)
        peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

        # Reference on a slice, and agreement of decisions on that slice.
        first = sorted(Path(data).glob("*.parquet"))[0]
        ref_rows = pq.read_table(first).slice(0, args.reference_records).to_pylist()
        t0, c0 = time.perf_counter(), _cpu_s()
        ref = row_by_row(ref_rows, cfg)
        ref_s, ref_cpu = time.perf_counter() - t0, _cpu_s() - c0
        # The chain's own CPU cost on the same slice, so the two compare on equal terms.
        (tmp / "slice").mkdir()
        pq.write_table(pa.Table.from_pylist(ref_rows, RECORD_SCHEMA), tmp / "slice" / "part-00000.parquet")
        (tmp / "slice-out").mkdir()
        t0, c0 = time.perf_counter(), _cpu_s()
        apply_filters(tmp / "slice", FilterConfig(batch_size=args.batch_size), tmp / "slice-out")
        slice_s, slice_cpu = time.perf_counter() - t0, _cpu_s() - c0
        gopher = None
        if args.datatrove_python:
            texts = ["\n\n".join(m["content"] or "" for m in r["messages"] if m["role"] == "assistant")
                     for r in ref_rows]
            gopher = gopher_side_by_side([t for t in texts if t], args.datatrove_python, tmp)
        rejects = read_table(out / "rejects", columns=["id", "reject_reason"])
        ours = dict(zip(rejects.column("id").to_pylist(), rejects.column("reject_reason").to_pylist(), strict=True))
        same = sum(ours.get(r["id"]) == w for r, w in zip(ref_rows, ref, strict=True))

    result = {
        "command": " ".join(["python"] + sys.argv),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}",
        "records": args.records, "batch_size": args.batch_size, "generate_s": round(gen_s, 1),
        "runs_by_workers": runs, "peak_rss_gib_main_process": round(peak_rss_gib, 2), "kept": ledger.kept,
        "dropped": dict(ledger.dropped),
        "same_slice": {"records": len(ref_rows),
                       "reference_row_by_row": {"seconds": round(ref_s, 2), "cpu_s": round(ref_cpu, 2),
                                                "records_per_cpu_s": round(len(ref_rows) / ref_cpu)},
                       "apply_filters": {"seconds": round(slice_s, 2), "cpu_s": round(slice_cpu, 2),
                                         "records_per_cpu_s": round(len(ref_rows) / slice_cpu)},
                       "same_decision_share": round(same / max(len(ref_rows), 1), 5)},
        "gopher_repetition_vs_datatrove": gopher,
        "agreement": ledger.extra["agreement"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()

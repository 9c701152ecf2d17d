"""Render BENCHMARKS.md's tables from the results JSON under bench/<area>/, so that each figure exists once.

    python bench/render.py           # rewrite every rendered table in BENCHMARKS.md and README.md in place
    python bench/render.py --check   # exit 1 with a diff when either is not what the JSON gives

A rendered table sits between two marker comments; everything else in BENCHMARKS.md is prose and left alone:

    <!-- render: train/speed_results.json call4-final -->
    ...the table (never edit it by hand: change the JSON or the row function, then rerun this script)...
    <!-- /render -->

The path is relative to bench/ (a glob reads several files); the words after it are passed to the table's
function, picked from TABLES by the path as written. The markers may be indented (a table inside a list item).
Labels and emphasis live in the row functions below; every number comes from the JSON.
"""
from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
DOC = BENCH.parent / "BENCHMARKS.md"
DOCS = (DOC, BENCH.parent / "README.md")  # README repeats a few tables; they are rendered the same way
MARKED = re.compile(r"^(?P<indent>[ \t]*)<!-- render: (?P<spec>[^>]*?) -->\n"
                    r"(?P<body>.*?)^(?P=indent)<!-- /render -->$", re.M | re.S)
START = re.compile(r"^[ \t]*<!-- render:", re.M)


# ---- number formats: rounded half up, as the tables were first written by hand ---------------------------

def num(x: float, places: int = 0) -> str:
    """x with thousands separators, rounded half up (binary noise cut at 9 places: 25.81499.. reads 25.82)."""
    d = Decimal(f"{x:.9f}").quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    return f"{d:,}"


def pct(share: float, places: int = 1) -> str:
    """A share as a percentage: 0.3369 -> 33.7%."""
    return num(share * 100, places) + "%"


def ratio(x: float) -> str:
    """A share near 1 at 3 places, or 4 where 3 would round it up to a perfect 1.000."""
    return num(x, 4 if num(x, 3) == "1.000" and x < 1 else 3)


def bold(text: str, on: bool = True) -> str:
    return f"**{text}**" if on else text


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Markdown table lines; an empty cell is written `| |`."""
    def line(cells: list[str]) -> str:
        return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"
    return [line(header), "|" + "---|" * len(header), *(line(r) for r in rows)]


# ---- train ---------------------------------------------------------------------------------------------

# Case (shape:method:checkpointing:data:options, as bench/train/speed.py names it) -> label, target, and the
# column in bold. Rows come in this order; a case missing here is shown under its own name, last.
TRAIN_CASES = {
    "llama-1b:qlora:none:fixed:compile+bf16a": ("1B QLoRA, fixed length", ">= 40,000", "tokens_per_s"),
    "llama-1b:lora:none:fixed:compile+bf16a": ("1B LoRA bf16, fixed length", "", "tokens_per_s"),
    "llama-1b:qlora:none:sample:compile+bf16a+attn=flex_attention": (
        "1B QLoRA, sample lengths, flex attention", "within 10%", "tokens_per_s"),
    "llama-1b:qlora:none:sample:compile+bf16a": ("1B QLoRA, sample lengths, sdpa", "", ""),
    "llama-8b:lora:none:fixed:compile+bf16a": ("8B LoRA bf16, fixed length", ">= 13,000", "tokens_per_s"),
    "llama-8b:qlora:none:fixed:compile+bf16a": ("8B QLoRA, fixed length", ">= 12,000", "tokens_per_s"),
    "llama-8b:qlora:all:fixed:compile+bf16a": (
        "8B QLoRA, memory-lean (all layers recompute)", "peak <= 12 GiB", "peak_gib"),
    "llama-8b:qlora:none:sample:compile+bf16a+attn=flex_attention": (
        "8B QLoRA, sample lengths, flex attention", "within 10%", "tokens_per_s"),
    "llama-8b:qlora:none:sample:compile+bf16a": ("8B QLoRA, sample lengths, sdpa", "", ""),
    "llama-8b:qlora:all:sample:compile+bf16a+attn=flex_attention": (
        "8B QLoRA, memory-lean, sample lengths, flex attention, compile, bf16 LoRA weights", "", ""),
    "llama-8b:qlora:none:fixed:compile": (
        "8B QLoRA, fixed length, compile, fp32 LoRA weights (peft's default)", "", ""),
}


def train_speed(docs: list[Any], run: str) -> list[str]:
    """One call of speed_results.json; with the stock recipe's columns and the targets if the call ran it."""
    rows = docs[0]["runs"][run]
    ours = {r["case"]: r for r in rows if r["recipe"] == "peftpipe"}
    stock = {(r["shape"], r["mode"]): r for r in rows if r["recipe"] == "hf-stock"}
    unknown = sorted(set(ours) - set(TRAIN_CASES))
    out = []
    for case in [c for c in TRAIN_CASES if c in ours] + unknown:
        r = ours[case]
        label, target, emphasis = TRAIN_CASES.get(case, (case, "", ""))
        speed = bold(num(r["tokens_per_s"]), emphasis == "tokens_per_s")
        fixed = ours.get(re.sub(r"\+attn=\w+", "", case.replace(":sample:", ":fixed:")))
        if r["data"] == "sample" and fixed:
            change = r["tokens_per_s"] / fixed["tokens_per_s"] - 1
            speed += f" ({'+' if change >= 0 else '-'}{num(abs(change) * 100, 1)}% vs fixed)"
        cells = [label, speed, pct(r["mfu"]), bold(num(r["peak_gib"], 1), emphasis == "peak_gib")]
        if stock:
            s = stock.get((r["shape"], r["mode"])) if r["data"] == "fixed" else None
            # Same model, same FLOPs per token: the stock MFU scales with its tokens/s.
            cells += [num(s["tokens_per_s"]), pct(r["mfu"] * s["tokens_per_s"] / r["tokens_per_s"]),
                      num(s["peak_gib"], 1)] if s else ["", "", ""]
            cells.append(target)
        out.append(cells)
    header = ["case", "peftpipe tokens/s", "MFU", "peak GiB"]
    if stock:
        header += ["stock recipe tokens/s", "stock MFU", "stock peak GiB", "target"]
    return table(header, out)


def train_ddp(docs: list[Any]) -> list[str]:
    runs = sorted(docs[0], key=lambda r: r["gpus"])
    one = runs[0]["tokens_per_s"]
    rows = [[str(r["gpus"]), str(r["micro_batch_per_gpu"]),
             num(r["tokens_per_s"]) + (f" ({num(r['tokens_per_s'] / one, 2)}x)" if r["gpus"] > 1 else ""),
             num(r["train_loss"], 5), num(r["eval_loss"], 5), num(r["peak_gib_rank0"], 1)] for r in runs]
    return table(["GPUs", "micro-batch per GPU", "tokens/s (all GPUs)", "final train loss", "eval loss",
                  "peak GiB (rank 0)"], rows)



PRECISION_LABELS = {"fp32": "fp32 (`adapter_dtype: float32`)",
                    "bf16": "bf16, no master (the GPU configs' old setting)",
                    "bf16+master": "bf16 + fp32 master weights (new default)"}
PRECISION_BANDS = {"lr_0.0001_to_1": "lr > 1e-4", "lr_3e-05_to_0.0001": "3e-5 - 1e-4", "lr_0_to_3e-05": "<= 3e-5"}


def train_precision(docs: list[Any]) -> list[str]:
    """bench/train/adapter_precision.py: final eval loss and the share of updates lost, by learning-rate band."""
    def share(x: float, strong: bool) -> str:
        return bold(pct(x, 1 if x >= 0.01 else 2), strong)
    rows = []
    for r in docs[0]["runs"]:
        lost, worst = r["updates_lost"], r["variant"] == "bf16"
        rows.append([PRECISION_LABELS.get(r["variant"], r["variant"]), num(r["final_eval_loss"], 5),
                     share(lost["all_steps"], worst)]
                    + [share(lost[k], worst and k == "lr_0_to_3e-05") for k in PRECISION_BANDS]
                    + [num(r["peak_gib"], 2)])
    return table(["adapter weights", "final eval loss", "updates lost, all steps", *PRECISION_BANDS.values(),
                  "peak GiB"], rows)


# speed.py case -> label, and which stock row it is set beside (with a note when it is not like for like).
ISSUE19_CASES = {
    "llama-1b:lora:all:fixed": ("1B LoRA, like for like", "lora", ""),
    "llama-1b:qlora:all:fixed": ("1B QLoRA, like for like (stock: with its fp32 upcast)", "qlora", ""),
    "llama-1b:lora:none:fixed:compile+bf16a": ("1B LoRA, no recompute, compile, bf16 LoRA + fp32 masters", "lora",
                                               " (stock with recompute)"),
    "llama-1b:qlora:none:fixed:compile+bf16a": ("1B QLoRA, same", "qlora", " (stock with recompute)"),
    "llama-1b:qlora:none:fixed:compile+bf16a+nomaster": ("1B QLoRA, same without masters", None, ""),
}


def train_issue19(docs: list[Any], view: str) -> list[str]:
    """`speed`: peftpipe beside the stock recipe, like for like and fastest; `equivalence`: the bf16 print."""
    d = docs[0]
    if view == "equivalence":
        labels = {"lora": "1B LoRA (ours: bf16 LoRA weights, compiled, chunked loss)",
                  "qlora": "1B QLoRA (ours without the fp32 upcast; reference with it)"}
        return table(["case", "HF + peft loss", "peftpipe loss", "LoRA gradient cosine, all / lowest tensor",
                      "gradient norm ratio"],
                     [[labels[r["method"]], num(r["hf_peft_loss"], 5), num(r["peftpipe_loss"], 5),
                       f"{num(r['grad_cosine_all'], 5)} / {num(r['grad_cosine_min_tensor'], 5)}",
                       num(r["grad_norm_ratio"], 5)] for r in d["equivalence_bf16_compiled"]])
    stock = {(r["shape"], r["mode"]): r for r in d["stock_1b"] + d["stock_8b"]}
    rows = []
    for r in d["ours_1b"]:
        label, mode, note = ISSUE19_CASES[r["case"]]
        s = stock.get((r["shape"], mode)) if mode else None
        fast = "none" in r["case"] and "nomaster" not in r["case"]
        cells = [label, f"{bold(num(r['tokens_per_s']), fast)}, {num(r['peak_gib'], 2)}"]
        cells += [f"{num(s['tokens_per_s'])}, {num(s['peak_gib'], 2)}{note}",
                  f"{num(r['tokens_per_s'] / s['tokens_per_s'], 2)}x"] if s else ["", ""]
        rows.append(cells)
    for s in d["stock_8b"]:
        rows.append([f"8B {'QLoRA' if s['mode'] == 'qlora' else 'LoRA'}, stock recipe", "not run this call",
                     f"{num(s['tokens_per_s'])}, {num(s['peak_gib'], 2)}", ""])
    return table(["case", "peftpipe tokens/s, peak GiB", "stock recipe tokens/s, peak GiB", "ratio"], rows)

# speed.py case -> label and the stock row it is set beside (8B, issue 19's second device call).
CASES_8B = {
    "llama-8b:qlora:all:fixed": "8B QLoRA, like for like: every layer recomputes, fp32 LoRA weights, no compile",
    "llama-8b:qlora:all:fixed:compile+bf16a": "8B QLoRA, memory-lean: every layer recomputes, compile, bf16 LoRA "
                                              "+ fp32 masters (goal >= 14,000 at <= 12 GiB)",
    "llama-8b:qlora:skip8:fixed:compile+bf16a+mb=2": "8B QLoRA, 24 of 32 layers recompute, micro-batch 2, compile, "
                                                     "bf16 LoRA + masters",
    "llama-8b:qlora:none:fixed:compile+bf16a+profile": "8B QLoRA, fastest: no recompute, compile, bf16 LoRA + "
                                                        "masters (goal >= 20,000)",
}


def train_8b(docs: list[Any], view: str) -> list[str]:
    """`speed`: 8B QLoRA, ours beside the stock recipe in one call; `peers`: the stock recipe at our settings and
    HF + liger-kernel beside the stock recipe."""
    d = docs[0]
    stock = d["stock_8b"][0]
    if view == "speed":
        rows = []
        for r in d["ours_8b"]:
            recompute = ":all:" in r["case"]
            s_cell = (f"{num(stock['tokens_per_s'])}, {num(stock['peak_gib'], 2)}" if recompute else
                      "out of memory at 139.8 GiB (`GC=0`)" if ":none:" in r["case"] else "")
            ratio_cell = f"{num(r['tokens_per_s'] / stock['tokens_per_s'], 2)}x" if recompute else ""
            rows.append([CASES_8B[r["case"]], f"{num(r['tokens_per_s'])}, {num(r['peak_gib'], 2)}",
                         s_cell, ratio_cell])
        return table(["case", "peftpipe tokens/s, peak GiB", "stock recipe (same recompute) tokens/s, peak GiB",
                      "ratio"], rows)
    if view == "peers":
        rows = [[f"HF + liger-kernel, {r['shape'][6:].upper()} {'QLoRA' if r['mode'] == 'qlora' else 'LoRA'}, "
                 "every layer recomputes, fp32 LoRA", f"{num(r['tokens_per_s'])}, {num(r['peak_gib'], 2)}"]
                for r in d["liger"]]
        rows += [[f"stock recipe, {r['shape'][6:].upper()} LoRA, no recompute, bf16 LoRA (`GC=0 ADAPTER=bf16`)",
                  f"{num(r['tokens_per_s'])}, {num(r['peak_gib'], 2)}"] for r in d["stock_1b_nogc_bf16a"]]
        rows.append(["stock recipe, 8B QLoRA, every layer recomputes (the row above)",
                     f"{num(stock['tokens_per_s'])}, {num(stock['peak_gib'], 2)}"])
        return table(["recipe and case", "tokens/s, peak GiB"], rows)
    raise ValueError(f"train/speed_results_8b.json: unknown view {view!r} (speed, peers)")


# ---- tokenize ------------------------------------------------------------------------------------------

def _corpus(run: dict) -> str:
    return f"{run['corpus'].replace('_', ' ')}, {run['max_seq_len']}"


def tokenize(docs: list[Any], view: str) -> list[str]:
    """`speed`: the three paths side by side; `packing`: packing efficiency against the baselines."""
    runs = docs[0]["runs"]
    if view == "speed":
        paths = ["raw_tokenizer", "apply_chat_template_with_mask", "stage_num_proc_1"]

        def cell(r: dict, path: str, strong: bool = False) -> str:
            cpu = r["cpu_seconds_main_process"][path]
            return f"{bold(num(r['tokens_per_s'][path]), strong)} ({num(cpu, 2 if cpu < 10 else 1)})"
        return table(["corpus, max_seq_len", "tokens", "raw tokenizer tok/s (CPU s)",
                      "apply_chat_template + mask tok/s (CPU s)", "stage tok/s (CPU s)"],
                     [[_corpus(r), f"{num(r['tokens'] / 1e6, 2)} M", cell(r, paths[0]), cell(r, paths[1]),
                       cell(r, paths[2], r["tokens_per_s"][paths[2]] > r["tokens_per_s"][paths[1]])]
                      for r in runs])
    if view == "packing":
        # Every run truncates overlong records; this one truncates many, which lifts its packing: say so.
        truncated = {("long_tail", 512): " (truncate)"}
        return table(["corpus, max_seq_len", "stage train (BFD)", "stage eval (BFD, apart)",
                      "next fit in order", "one record per row", "lower bound"],
                     [[_corpus(r) + truncated.get((r["corpus"], r["max_seq_len"]), ""),
                       bold(ratio(p["stage_train"])), ratio(p["stage_eval"]), ratio(p["next_fit_in_order"]),
                       ratio(p["padding_only_to_max_seq_len"]), "<= " + ratio(p["best_possible"])]
                      for r in runs for p in [r["packing"]]])
    raise ValueError(f"tokenize/results.json: unknown view {view!r} (speed, packing)")


def tokenize_masks(docs: list[Any]) -> list[str]:
    """Structural masks against the text search they replaced and transformers' generation-block masks."""
    paths = ["structural (peftpipe now)", "text search (before)", "apply_chat_template + mask"]
    by = {(r["template"], r["path"]): r for r in docs[0]["results"]}
    rows = []
    for name in dict.fromkeys(r["template"] for r in docs[0]["results"]):
        cells = []
        for path in paths:
            r = by.get((name, path))
            cells.append(f"{num(r['tokens_per_s'])} ({num(r['cpu_s'], 1)} s, {num(r['peak_mib'], 1)})" if r
                         else "not possible: no generation blocks")
        rows.append([name.replace("{% generation %}", "`{% generation %}`"), *cells])
    return table(["template", "structural tok/s (CPU s, peak MiB)", "text search, before (CPU s, peak MiB)",
                  "apply_chat_template + mask (CPU s, peak MiB)"], rows)


# ---- filters -------------------------------------------------------------------------------------------

def filters(docs: list[Any], view: str) -> list[str]:
    """`runs`: the 1M-record stage per worker count; `side-by-side`: the same slice through the references."""
    d = docs[0]
    if view == "runs":
        rows = []
        for workers, r in sorted(d["runs_by_workers"].items(), key=lambda kv: int(kv[0])):
            one = workers == "1"
            rows.append([f"`apply_filters`, {'1 process' if one else f'`workers: {workers}`'}",
                         num(r["stage_s"], 1), num(r["records_per_s"]), num(r["cpu_s"], 1),
                         bold(num(r["records_per_cpu_s"])),
                         f"{d['peak_rss_gib_main_process']} GiB" + ("" if one else " (main)")])
        return table(["run", "wall s", "records/s (wall, loaded box)", "CPU s", "records per CPU-second",
                      "peak RSS"], rows)
    if view == "side-by-side":
        s, g = d["same_slice"], d["gopher_repetition_vs_datatrove"]
        ref, ours_all = s["reference_row_by_row"], s["apply_filters"]
        dt, ours, chat = g["datatrove_GopherRepetitionFilter"], g["ours_repetition"]["gopher_settings"], \
            g["ours_repetition"]["default_settings"]
        same = s["same_decision_share"]
        return table(["what", "CPU s", "per CPU-second", "decisions"], [
            ["same chain row by row (one record at a time, same rule functions, no outputs)",
             num(ref["cpu_s"], 2), f"{num(ref['records_per_cpu_s'])} records", "reference"],
            ["`apply_filters` (batched views, writes data/rejects/report)", num(ours_all["cpu_s"], 2),
             bold(f"{num(ours_all['records_per_cpu_s'])} records"),
             "identical on 100%" if same == 1 else f"same on {pct(same)}"],
            ["datatrove 0.10.1 `GopherRepetitionFilter` (spaCy words)", num(dt["cpu_s"], 2),
             f"{num(dt['texts_per_cpu_s'])} texts", f"drops {pct(dt['dropped_share'])}"],
            ["ours, `repetition` with Gopher's published settings", num(ours["cpu_s"], 2),
             bold(f"{num(ours['texts_per_cpu_s'])} texts")
             + f" ({num(ours['texts_per_cpu_s'] / dt['texts_per_cpu_s'], 1)}x)",
             f"drops {pct(ours['dropped_share'])}; same keep/drop as datatrove on "
             f"{pct(ours['same_keep_drop_as_datatrove'])}"],
            ["ours, `repetition` with the chat defaults", num(chat["cpu_s"], 2),
             f"{num(chat['texts_per_cpu_s'])} texts", f"drops {pct(chat['dropped_share'], 2)}"],
        ])
    raise ValueError(f"filters/results.json: unknown view {view!r} (runs, side-by-side)")


# ---- ingest --------------------------------------------------------------------------------------------

def ingest(docs: list[Any]) -> list[str]:
    """Every engine of every input size, smallest input first; records per CPU-second = kept / CPU s."""
    rows = []
    for report in sorted(docs, key=lambda d: d["input"]["bytes"]):
        size = report["input"]["bytes"]
        label = f"{num(size / 1e9, 1)} GB" if size >= 1e9 else f"{num(size / 1e6)} MB"
        for r in report["results"]:
            rows.append([label, r["engine"], num(r["seconds"]), num(r["cpu_seconds"], 1),
                         str(r["mb_per_cpu_s"]), num(r.get("kept", 0) / max(r["cpu_seconds"], 1e-9)),
                         f"{num(r['peak_rss_mib'])} MiB", f"{num(r['peak_tree_rss_mib'])} MiB"])
    return table(["input", "engine", "wall s", "CPU s", "MB per CPU-s", "records per CPU-s",
                  "peak RSS, largest process", "peak RSS, all processes"], rows)


# ---- orchestration -------------------------------------------------------------------------------------

ORCHESTRATION_RUNS = {"cold": "cold", "cached": "rerun, same config",
                      "filter_changed": "rerun, `min_rating` 3.0 -> 3.5"}
CURATION_STAGES = 6  # ingest, exact + near dedup, filter, split, tokenize


def orchestration(docs: list[Any]) -> list[str]:
    rows = []
    for key, r in docs[0]["in_process"].items():
        done = r["recomputed"]
        if len(done) == CURATION_STAGES:
            what = "all six"
        elif not done:
            what = f"none (train {num(r['tasks_s']['train'], 2)} s: adapter reused)"
        else:
            what = ", ".join(done) + " (+ the adapter)"
        process = f"{num(r['process_wall_s'])} ({num(r['process_cpu_s'], 1)})"
        rows.append([ORCHESTRATION_RUNS.get(key, key), process, num(r["flow_wall_s"]),
                     num(r["stage_work_s"], 1), num(r["overhead_s"]), what])
    return table(["run (same workdir)", "process wall s (CPU s)", "flow wall s", "stage work s", "overhead s",
                  "stages recomputed"], rows)


def orchestration_rerun(docs: list[Any]) -> list[str]:
    first, again = docs[0]["runs"]["first_make_run"], docs[0]["runs"]["rerun_same_config"]
    minutes, seconds = divmod(round(first["with_install_wall_s"]), 60)
    return table(["run", "process wall", "CPU", "the `pipeline` flow itself (first to last flow log line)"], [
        ["first `make run` after the install",
         f"{num(first['pipeline_wall_s'])} s pipeline ({minutes} min {seconds} s with the install)", "",
         f"about {num(first['flow_s'])} s"],
        ["rerun, same config", bold(f"{num(again['process_wall_s'], 1)} s"),
         f"{num(again['user_cpu_s'], 1)} + {num(again['system_cpu_s'], 1)} s",
         bold(f"{num(again['flow_s'], 1)} s") + f": {again['reused']} reused"],
    ])


# ---- dedup ---------------------------------------------------------------------------------------------

DEDUP_TOOLS = {"peftpipe": "**peftpipe** (21x6 LSH, exact-Jaccard check)",
               "datasketch": "datasketch batch APIs (9x13)",
               "datatrove": "datatrove 0.10 (9x13, 2 input files)",
               "text-dedup": "text-dedup 0.4 minhash"}
DEDUP_CORPORA = {"bible-5-translations": "bible"}


def dedup(docs: list[Any]) -> list[str]:
    """Tools side by side per corpus; datatrove's CPU is n/a (its pool workers are not reaped as children)."""
    rows = []
    for name, corpus in docs[0].items():
        for tool, r in corpus["summary"].items():
            ours = tool == "peftpipe"
            rows.append([DEDUP_CORPORA.get(name, name), DEDUP_TOOLS.get(tool, tool),
                         bold(num(r["wall_s"], 2), ours), bold(num(r["docs_per_s"]), ours),
                         "n/a¹" if tool == "datatrove" else num(r["cpu_s"], 2), f"{r['peak_rss_mb']} MB",
                         *(bold(ratio(r[k]), ours) for k in ("precision", "recall", "f1"))])
    return table(["corpus", "tool", "wall s", "docs/s", "CPU s", "peak RSS (tree)", "precision", "recall",
                  "F1"], rows)


# Key in scale_results.json -> setting label, columns in bold; the first row of a size names the default.
DEDUP_SCALE_ROWS = {
    "100000 docs, memory_mb 1024, unit_rows 20000": ("memory_mb 1024, unit_rows 20000 (default)", ()),
    "1000000 docs, memory_mb 1024, unit_rows 20000": ("default", ()),
    "10000000 docs, memory_mb 1024, unit_rows 20000": ("default", ("wall_s", "docs_per_s", "peak_rss_mb")),
    "1000000 docs, memory_mb 256, unit_rows 5000": ("memory_mb 256, unit_rows 5000", ()),
    "10000000 docs, memory_mb 256, unit_rows 5000": ("memory_mb 256, unit_rows 5000", ("peak_rss_mb",)),
}


def dedup_scale(docs: list[Any], view: str) -> list[str]:
    """`settings`: the 100k-10M runs per memory setting; `runners`: the local pool against Prefect's."""
    d = docs[0]
    if view == "settings":
        rows, sized = [], set()
        for key, (setting, strong) in DEDUP_SCALE_ROWS.items():
            r = d[key]
            docs_label = num(r["docs"])
            if r["docs"] >= 10_000_000 and r["docs"] not in sized:  # say once what the biggest corpus weighs
                docs_label += f" ({num(r['parquet_mb'] / 1000, 1)} GB Parquet)"
            sized.add(r["docs"])
            rows.append([docs_label, setting, bold(num(r["wall_s"], 1), "wall_s" in strong),
                         num(r["cpu_s"], 1), bold(num(r["docs_per_s"]), "docs_per_s" in strong),
                         bold(f"{num(r['peak_rss_mb'])} MB", "peak_rss_mb" in strong), num(r["removed"])])
        return table(["docs (~1 KB)", "setting", "wall s", "CPU s", "docs/s", "peak RSS (tree)", "removed"],
                     rows)
    if view == "runners":
        by_docs: dict[int, dict[str, dict]] = {}
        for r in d.values():
            if "runner" in r:
                by_docs.setdefault(r["docs"], {})[r["runner"]] = r

        def cell(r: dict) -> str:
            return f"{num(r['wall_s'], 1)} s / {num(r['cpu_s'], 1)} / {num(r['peak_rss_mb'])} MB"
        return table(["docs", "`--runner local` wall / CPU s / peak",
                      "`--runner processes` wall / CPU s / peak"],
                     [[num(n), cell(rs["local"]), cell(rs["processes"])]
                      for n, rs in sorted(by_docs.items())])
    raise ValueError(f"dedup/scale_results.json: unknown view {view!r} (settings, runners)")


# ---- curation on a task runner -------------------------------------------------------------------------

CURATION_RUNNERS = {"processes": "Prefect process pool, 2 workers (`runner.kind: processes`)",
                    "ray": "local Ray, 2 workers (`runner.kind: ray`)",
                    "local": "in-stage pools (`runner.kind: local`)"}


def curation_runners(docs: list[Any]) -> list[str]:
    """bench/curation/runners.py: ingest -> exact -> near dedup -> filters per runner, same run, same files."""
    d = docs[0]
    same = "yes" if d["same_outputs"] else "**no**"
    return table(["runner", "wall s (flow s)", "records/s", "peak RSS (process tree)", "same files"],
                 [[CURATION_RUNNERS.get(r["runner"], r["runner"]), f"{num(r['wall_s'])} ({num(r['flow_s'])})",
                   num(d["records"] / r["wall_s"]), f"{num(r['peak_rss_gb'], 2)} GB", same] for r in d["rows"]])


# ---- the curation experiment (bench/experiment/report.py formats its own tables: one formatter) ------------

def experiment(docs: list[Any], view: str) -> list[str]:
    """`curation` / `peft`: a sweep's table over seeds and families; `contrast`: all on minus all off."""
    if str(BENCH / "experiment") not in sys.path:
        sys.path.insert(0, str(BENCH / "experiment"))
    import report  # bench/experiment/report.py

    if view == "contrast":
        return report.contrast_lines(docs[0])
    if view not in ("curation", "peft"):
        raise ValueError(f"experiment/results_gpu.json: unknown view {view!r} (curation, peft, contrast)")
    return report.sweep_table(docs[0], "sweep-experiment" if view == "curation" else "sweep-peft")


# The path as written in a marker -> the function that renders its table (called with the loaded files and
# the marker's further words).
TABLES: dict[str, Callable[..., list[str]]] = {
    "train/speed_results.json": train_speed,
    "train/ddp_results.json": train_ddp,
    "train/adapter_precision_results.json": train_precision,
    "train/speed_results_issue19.json": train_issue19,
    "tokenize/results.json": tokenize,
    "tokenize/masks_results.json": tokenize_masks,
    "filters/results.json": filters,
    "ingest/results_*.json": ingest,
    "orchestration/results.json": orchestration,
    "orchestration/rerun_results.json": orchestration_rerun,
    "dedup/results.json": dedup,
    "dedup/scale_results.json": dedup_scale,
    "experiment/results_gpu.json": experiment,
    "train/speed_results_8b.json": train_8b,
    "curation/results.json": curation_runners,
}


def render_table(spec: str, bench: Path = BENCH) -> list[str]:
    """The table lines for one marker's spec, `PATH [WORDS...]`."""
    path, *words = spec.split()
    if path not in TABLES:
        raise KeyError(f"no table function for {path!r} in bench/render.py TABLES "
                       f"(known: {', '.join(TABLES)})")
    files = sorted(bench.glob(path))
    if not files:
        raise FileNotFoundError(f"render marker {spec!r}: no file matches bench/{path}")
    try:
        return TABLES[path]([json.loads(f.read_text()) for f in files], *words)
    except TypeError as e:  # a view word missing or one too many
        raise TypeError(f"render marker {spec!r}: {e}") from e


def render(text: str, bench: Path = BENCH) -> str:
    """text with every marked table rendered again from the JSON; all else unchanged."""
    def one(m: re.Match) -> str:
        indent = m["indent"]
        if START.search(m["body"]):
            raise ValueError(f"render marker {m['spec']!r} has no `<!-- /render -->` before the next marker")
        lines = [indent + line for line in render_table(m["spec"], bench)]
        # Blank lines around the table, so that neither marker is read as part of it.
        return (f"{indent}<!-- render: {m['spec']} -->\n\n" + "\n".join(lines)
                + f"\n\n{indent}<!-- /render -->")
    fresh, count = MARKED.subn(one, text)
    if count != len(START.findall(text)):
        raise ValueError("a `<!-- render: ... -->` marker has no `<!-- /render -->` at its indentation")
    return fresh


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if a document is stale; change nothing")
    p.add_argument("--doc", type=Path, action="append",
                   help="a markdown file (repeatable; default: BENCHMARKS.md and README.md)")
    args = p.parse_args(argv)
    stale = False
    for doc in args.doc or DOCS:
        text = doc.read_text()
        fresh = render(text)
        if not args.check:
            if fresh != text:
                doc.write_text(fresh)
            print(f"{doc.name}: {len(MARKED.findall(text))} tables rendered")
        elif fresh != text:
            print("\n".join(difflib.unified_diff(text.splitlines(), fresh.splitlines(), str(doc), "rendered",
                                                 lineterm="", n=0)))
            print(f"{doc} is stale: a rendered table differs from its JSON. Run `python bench/render.py`.",
                  file=sys.stderr)
            stale = True
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())

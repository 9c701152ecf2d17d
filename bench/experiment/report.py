"""Sum up the curation and PEFT sweeps from their MLflow runs: task accuracy per variant over seeds, per task
family, against the base; the all-on vs all-off difference with confidence intervals; speed, memory and adapter
size per PEFT technique.

    python bench/experiment/report.py collect --tracking-uri sqlite:///a.db [--tracking-uri ...] --out runs.json
    python bench/experiment/report.py summarize runs.json --out bench/experiment/results.md

``collect`` reads every variant run (tag ``peftpipe.sweep.role = variant``) with its final metrics, the step-time
and peak-memory history of its training, the size of its adapter file and its per-item answers on the clean eval
set (the ``eval/clean_answers.json`` table), so ``summarize`` needs nothing but that JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

EVAL_SET = "clean"
METRIC = "exact_match"
SEED = re.compile(r"\s*seed=(\d+)$")
LABELS = {"": "everything on", "exact=off near=off filters=off": "everything off", "filters=off": "dedup only",
          "exact=off near=off": "filters only (no dedup)"}


def collect(uris: list[str]) -> list[dict]:
    from mlflow import MlflowClient

    out = []
    for uri in uris:
        client = MlflowClient(uri)
        for exp in client.search_experiments():
            for run in client.search_runs([exp.experiment_id], "tags.`peftpipe.sweep.role` = 'variant'",
                                          max_results=1000):
                rid = run.info.run_id
                step_s, peaks, sizes, items = [], [], {}, {}
                if run.info.status == "FINISHED":  # a run cut short has no adapter and no answers yet
                    step_s = [m.value for m in client.get_metric_history(rid, "step_s")]
                    peaks = [m.value for m in client.get_metric_history(rid, "gpu_peak_gib")]
                    # Read from the local artifact store directly: MLflow's own listing of a run that also
                    # has logged models looks those up and can fail on a store another process writes to.
                    art = Path(run.info.artifact_uri.removeprefix("file://"))
                    adapter = art / "adapter" / "adapter_model.safetensors"
                    sizes = {"adapter/adapter_model.safetensors": adapter.stat().st_size} if adapter.is_file() else {}
                    answers = art / "eval" / f"{EVAL_SET}_answers.json"
                    if answers.is_file():
                        table = json.loads(answers.read_text())
                        for row in table["data"]:
                            rec = dict(zip(table["columns"], row))
                            items[rec["id"]] = {"family": rec.get("family", ""),
                                                "adapter": rec.get(f"adapter_{METRIC}"),
                                                "base": rec.get(f"base_{METRIC}")}
                    else:
                        print(f"{rid}: no {answers}", file=sys.stderr)
                out.append({"uri": uri, "run_id": rid, "status": run.info.status,
                            "sweep": run.data.tags.get("peftpipe.sweep"),
                            "variant": run.data.tags.get("peftpipe.variant"),
                            "params": {k: v for k, v in run.data.params.items() if k.startswith(("adapter.", "train.seed"))},
                            "metrics": dict(run.data.metrics),
                            "step_s": step_s, "gpu_peak_gib": max(peaks) if peaks else None,
                            "adapter_bytes": sizes.get("adapter/adapter_model.safetensors"), "items": items})
    return out


def split_seed(variant: str) -> tuple[str, int | None]:
    m = SEED.search(variant)
    return (variant[:m.start()].strip(), int(m.group(1))) if m else (variant, None)


def mean_sd(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else math.nan


def welch_ci(a: list[float], b: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """mean(a) - mean(b) and its Welch t interval (seeds as the samples)."""
    from scipy import stats

    diff = statistics.fmean(a) - statistics.fmean(b)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = stats.t.ppf(0.5 + level / 2, df) * se
    return diff, diff - half, diff + half


def item_bootstrap(a_runs: list[dict], b_runs: list[dict], family: str | None = None, n: int = 10_000,
                   seed: int = 0) -> tuple[float, float, float] | None:
    """Paired bootstrap over eval items of (a - b), each item's score averaged over the seeds of each variant."""
    ids = sorted(set.intersection(*(set(r["items"]) for r in a_runs + b_runs))) if a_runs and b_runs else []
    if family:
        ids = [i for i in ids if a_runs[0]["items"][i]["family"] == family]
    if not ids:
        return None
    a = np.array([[r["items"][i]["adapter"] for i in ids] for r in a_runs], float).mean(0)
    b = np.array([[r["items"][i]["adapter"] for i in ids] for r in b_runs], float).mean(0)
    d = a - b
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, len(d), (n, len(d)))].mean(1)
    return float(d.mean()), float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))


def group(runs: list[dict]) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in runs:
        if r["status"] != "FINISHED" or f"task/{EVAL_SET}/{METRIC}" not in r["metrics"]:
            continue
        name, _ = split_seed(r["variant"] or "")
        groups[(r["sweep"], name)].append(r)
    return groups


def families(runs: list[dict]) -> list[str]:
    prefix = f"task/{EVAL_SET}/"
    return sorted({k[len(prefix):-len(METRIC) - 1] for r in runs for k in r["metrics"]
                   if k.startswith(prefix) and k.endswith("/" + METRIC) and k.count("/") == 3})


def summarize(runs: list[dict]) -> dict:
    groups = group(runs)
    fams = families(runs)
    table = []
    for (sweep, name), rs in groups.items():
        m = lambda key, rs=rs: mean_sd([r["metrics"].get(key) for r in rs])  # noqa: E731
        em, sd = m(f"task/{EVAL_SET}/{METRIC}")
        step_ms = [1000 * statistics.median(r["step_s"][3:] or r["step_s"]) for r in rs if r["step_s"]]
        row = {"sweep": sweep, "variant": LABELS.get(name, name), "key": name, "seeds": len(rs),
               "em": em, "em_sd": sd, "em_min": min(r["metrics"][f"task/{EVAL_SET}/{METRIC}"] for r in rs),
               "em_max": max(r["metrics"][f"task/{EVAL_SET}/{METRIC}"] for r in rs),
               "base_em": m(f"base_task/{EVAL_SET}/{METRIC}")[0],
               "eval_loss": m("eval_loss")[0], "base_eval_loss": m("base_eval_loss")[0],
               "records_kept": m("records_kept")[0], "train_records": m("train_records")[0],
               "families": {f: m(f"task/{EVAL_SET}/{f}/{METRIC}")[0] for f in fams},
               "base_families": {f: m(f"base_task/{EVAL_SET}/{f}/{METRIC}")[0] for f in fams},
               "step_ms": statistics.fmean(step_ms) if step_ms else math.nan,
               "tokens_per_s": m("tokens_per_s")[0],
               "gpu_peak_gib": max((r["gpu_peak_gib"] or math.nan) for r in rs),
               "adapter_mb": statistics.fmean(r["adapter_bytes"] / 1e6 for r in rs if r["adapter_bytes"])
               if any(r["adapter_bytes"] for r in rs) else math.nan}
        table.append(row)
    table.sort(key=lambda r: (r["sweep"], -r["em"] if math.isfinite(r["em"]) else 1))
    contrasts = {}
    cur = {name: rs for (sweep, name), rs in groups.items() if sweep == "sweep-experiment"}
    on, off = cur.get(""), cur.get("exact=off near=off filters=off")
    if on and off:
        a = [r["metrics"][f"task/{EVAL_SET}/{METRIC}"] for r in on]
        b = [r["metrics"][f"task/{EVAL_SET}/{METRIC}"] for r in off]
        contrasts["all_on_minus_all_off"] = {
            "seeds": welch_ci(a, b) if len(a) > 1 and len(b) > 1 else None,
            "items": item_bootstrap(on, off),
            "per_family_items": {f: item_bootstrap(on, off, f) for f in fams}}
    return {"rows": table, "families": fams, "contrasts": contrasts, "runs": len(runs),
            "finished": sum(len(v) for v in groups.values())}


def pct(x: float) -> str:
    return f"{100 * x:.1f}" if x is not None and math.isfinite(x) else "n/a"


def sweep_table(s: dict, sweep: str) -> list[str]:
    """One sweep's table: a row per variant over its seeds, per family, and the base model's row."""
    fams = s["families"]
    rows = [r for r in s["rows"] if r["sweep"] == sweep]
    peft = sweep == "sweep-peft"
    head = ["variant", "seeds", "exact match % (mean ± sd)", "min-max"] + fams + ["eval loss"]
    head += ["time/step ms", "tokens/s", "peak GiB", "adapter MB"] if peft else ["train records"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["variant"], str(r["seeds"]), f"{pct(r['em'])} ± {pct(r['em_sd'])}",
                 f"{pct(r['em_min'])}-{pct(r['em_max'])}"] + [pct(r["families"][f]) for f in fams]
        cells.append(f"{r['eval_loss']:.3f}")
        if peft:
            cells += [f"{r['step_ms']:.1f}", f"{r['tokens_per_s']:,.0f}", f"{r['gpu_peak_gib']:.2f}",
                      f"{r['adapter_mb']:.2f}"]
        else:
            cells.append(f"{r['train_records']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    base = rows[0]
    lines.append("| base model (no adapter) | | " + pct(base["base_em"]) + " | | "
                 + " | ".join(pct(base["base_families"][f]) for f in fams) + f" | {base['base_eval_loss']:.3f} |")
    return lines


def contrast_lines(s: dict) -> list[str]:
    """All filters and dedup on minus all off: over seeds (Welch), over eval items (paired bootstrap), per family."""
    c = s["contrasts"].get("all_on_minus_all_off")
    if not c:
        return []
    lines = []
    if c["seeds"]:
        d, lo, hi = c["seeds"]
        lines.append(f"All on minus all off, exact match: {pct(d)} points, 95% CI [{pct(lo)}, {pct(hi)}] "
                     f"(Welch t over seeds).")
    if c["items"]:
        d, lo, hi = c["items"]
        lines.append(f"Paired bootstrap over the eval items (each item averaged over seeds): {pct(d)} points, "
                     f"95% CI [{pct(lo)}, {pct(hi)}].")
    per = [f"{f} {pct(v[0])} [{pct(v[1])}, {pct(v[2])}]" for f, v in c["per_family_items"].items() if v]
    if per:
        lines.append("Per family (items): " + "; ".join(per) + ".")
    return lines


def markdown(s: dict) -> str:
    lines = []
    for sweep in sorted({r["sweep"] for r in s["rows"]}):
        lines += [f"### {sweep}", "", *sweep_table(s, sweep), ""]
    return "\n".join(lines + contrast_lines(s)) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--tracking-uri", action="append", required=True)
    c.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("summarize")
    s.add_argument("runs", type=Path)
    s.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.cmd == "collect":
        runs = collect(args.tracking_uri)
        args.out.write_text(json.dumps(runs))
        print(f"{len(runs)} variant runs -> {args.out}")
        return 0
    summary = summarize(json.loads(args.runs.read_text()))
    text = markdown(summary)
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

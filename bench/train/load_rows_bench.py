"""Loading a tokenized split: ``tasks.train.data.load_rows`` (flat Arrow buffers, targets shifted per record
batch) against the row reader it replaced (``to_pylist()`` per column, then numpy arrays per row).

  python bench/train/load_rows_bench.py OUT_JSON      Env: ROWS (20000), SEQ (2048)
Time, and the memory the loaded rows hold (RSS after minus before), of each, in its own process, on the same shards.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tasks.core.stage import iter_batches  # noqa: E402
from tasks.train.data import TrainingRow, load_rows, shift_targets  # noqa: E402
from tasks.train.synthetic import write_split  # noqa: E402

ROWS, SEQ = int(os.environ.get("ROWS", 20000)), int(os.environ.get("SEQ", 2048))


def old_load_rows(split_dir) -> list[TrainingRow]:
    """The reader before issue 19, verbatim."""
    rows = []
    for batch in iter_batches(split_dir, columns=["input_ids", "labels", "position_ids"]):
        for ids, labels, pos in zip(*(batch.column(c).to_pylist() for c in ("input_ids", "labels", "position_ids")),
                                    strict=True):
            ids, labels, pos = (np.asarray(a, dtype=np.int64) for a in (ids, labels, pos))
            if len(ids):
                rows.append(TrainingRow(ids, shift_targets(labels, pos), pos))
    return rows


def measure(which: str, split: str) -> dict:
    proc = psutil.Process()
    before = proc.memory_info().rss
    t0 = time.perf_counter()
    rows = (load_rows if which == "new" else old_load_rows)(split)
    seconds = time.perf_counter() - t0
    held = (proc.memory_info().rss - before) / 2**30
    return {"reader": which, "rows": len(rows), "tokens": sum(len(rows[i]) for i in range(0, len(rows), 97)) * 97,
            "seconds": round(seconds, 2), "rss_held_gib": round(held, 3)}


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--one":
        print(json.dumps(measure(sys.argv[2], sys.argv[3])))
        sys.exit()
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        split = Path(tmp) / "train"
        pos = np.concatenate([np.arange(n) for n in (SEQ // 4, SEQ // 4, SEQ // 2)])
        write_split(split, [{"input_ids": rng.integers(0, 32000, SEQ), "labels": rng.integers(0, 32000, SEQ),
                             "position_ids": pos} for _ in range(ROWS)])
        out = [json.loads(subprocess.run([sys.executable, __file__, "--one", which, str(split)], check=True,
                                         capture_output=True, text=True).stdout) for which in ("old", "new")]
    report = {"machine": "2-core CPU dev machine (shared)", "rows": ROWS, "seq": SEQ, "runs": out}
    Path(sys.argv[1]).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report))

"""Decontamination: drop training records that share word n-grams (13 by default) with eval/benchmark sets.

N-grams are compared as 64-bit rolling hashes of lower-cased word tokens, computed with numpy over a whole
batch at once, and looked up in each eval source's sorted hash array. The index of each eval source is built
once per process and cached by (path, size, mtime, n).
"""
from __future__ import annotations

import functools
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from schemas.filters import DecontamParams
from tasks.core import storage
from tasks.filters.base import FilterBatch, FilterResult, register

_WORD = re.compile(r"\w+")
_BASE = np.uint64(1_000_003)
_TEXT_KEYS = ("prompt", "response", "text", "question", "answer", "input", "output", "instruction",
              "completion", "context", "choices")


def _word_hashes(text: str) -> list[int]:
    return [hash(w) for w in _WORD.findall(text.lower())]


def ngram_hashes(texts: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every word n-gram of every text, and the index of the text each came from."""
    per_text = [_word_hashes(t) for t in texts]
    lengths = np.fromiter((len(h) for h in per_text), dtype=np.int64, count=len(per_text))
    flat = np.fromiter((h for hs in per_text for h in hs), dtype=np.int64, count=int(lengths.sum()))
    words = flat.view(np.uint64)
    owner = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
    n_starts = len(words) - n + 1
    if n_starts <= 0:
        return np.empty(0, np.uint64), np.empty(0, np.int64)
    grams = np.zeros(n_starts, dtype=np.uint64)
    with np.errstate(over="ignore"):  # wrapping uint64 arithmetic is the point
        for j in range(n):
            grams = grams * _BASE + words[j:j + n_starts]
    # A gram is real only if its first and last word belong to the same text.
    valid = owner[:n_starts] == owner[n - 1:]
    return grams[valid], owner[:n_starts][valid]


def _texts_of(row: object) -> list[str]:
    if isinstance(row, str):
        return [row]
    if isinstance(row, list):
        return [t for x in row for t in _texts_of(x)]
    if isinstance(row, dict):
        if "content" in row and isinstance(row["content"], str):
            return [row["content"]]
        keys = [k for k in row if k in _TEXT_KEYS or k == "messages"] or list(row)
        return [t for k in keys for t in _texts_of(row[k])]
    return []


def read_eval_texts(path: Path) -> list[str]:
    """Texts of an eval set: a .txt file is one text per non-empty line; .jsonl/.json/.parquet rows give their
    messages' contents and common text fields (prompt, response, question, answer, ...)."""
    if not path.is_file():
        raise FileNotFoundError(f"decontamination source not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    if suffix == ".parquet":
        rows = pq.read_table(path).to_pylist()
    elif suffix in (".jsonl", ".json"):
        text = path.read_text(errors="replace")
        rows = json.loads(text) if suffix == ".json" else [json.loads(x) for x in text.splitlines() if x.strip()]
        rows = rows if isinstance(rows, list) else [rows]
    else:
        raise ValueError(f"decontamination source {path}: unsupported format {suffix!r} (.txt, .jsonl, .json, .parquet)")
    return ["\n".join(_texts_of(r)) for r in rows]


@functools.lru_cache(maxsize=16)
def _index(path: str, size: int, mtime_ns: int, n: int) -> np.ndarray:
    grams, _ = ngram_hashes(read_eval_texts(Path(path)), n)
    return np.unique(grams)


def eval_index(path: str | Path, n: int) -> np.ndarray:
    """Sorted unique n-gram hashes of one eval source (cached while the file is unchanged)."""
    p = storage.local_file(path).resolve()  # an s3:// source: this machine's copy
    st = p.stat() if p.is_file() else None
    if st is None:
        raise FileNotFoundError(f"decontamination source not found: {path}")
    return _index(str(p), st.st_size, st.st_mtime_ns, n)


def eval_sets_fingerprint(p: DecontamParams) -> list[tuple[str, int, int]]:
    """(name, size, mtime) of each eval source, so a changed eval set changes the stage's cache key."""
    out = []
    for name, path in sorted(p.sources.items()):
        version = storage.file_version(path)  # size and mtime; an s3:// object's size and ETag
        out.append((name, *(version or (-1, -1))))
    return out


@register("decontaminate")
def decontaminate(batch: FilterBatch, p: DecontamParams) -> FilterResult:
    """Drop a record when the share of its n-grams found in an eval source passes ``min_overlap``."""
    keep = np.ones(batch.n, dtype=bool)
    reasons: list[str | None] = [None] * batch.n
    details: list[str | None] = [None] * batch.n
    stats: Counter = Counter()
    if not p.sources:
        return FilterResult(keep, reasons, details)
    grams, owner = ngram_hashes(batch.text(p.field), p.ngram)
    totals = np.bincount(owner, minlength=batch.n)
    for name, path in p.sources.items():
        ref = eval_index(path, p.ngram)
        if len(ref) == 0 or len(grams) == 0:
            continue
        pos = np.minimum(np.searchsorted(ref, grams), len(ref) - 1)
        hits = np.bincount(owner[ref[pos] == grams], minlength=batch.n)
        share = np.divide(hits, totals, out=np.zeros(batch.n), where=totals > 0)
        stats[f"decontam_records_hit:{name}"] += int((hits > 0).sum())
        for i in np.flatnonzero((hits > 0) & (share > p.min_overlap) & keep):
            keep[i] = False
            reasons[i] = f"contaminated:{name}"
            details[i] = f"{p.ngram}-gram overlap={hits[i]}/{totals[i]} ({share[i]:.3g}>{p.min_overlap})"
    return FilterResult(keep, reasons, details, stats=stats)

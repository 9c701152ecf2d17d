"""MinHash signatures with datasketch's permutations, LSH band keys, and candidate verification.

Signatures are datasketch's "affine32" MinHash: the permutation parameters (a, b) come from
``datasketch.MinHash(num_perm, seed).permutations`` and the input pre-mix is datasketch's MurmurHash3
finalizer, so a row of ``signatures`` equals ``MinHash(hashfunc=identity).update_batch(shingles)`` for that
doc (tests/tasks/dedup/test_dedup_minhash.py checks it). The difference is only the loop: here the permutations
are one matrix operation over a whole batch of docs, not one MinHash object per doc.
"""
from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

import numpy as np

from tasks.dedup.text import Shingles, fmix64, sorted_unique

MAX_HASH = np.uint32(0xFFFFFFFF)
_P64 = np.uint64(0x9E3779B97F4A7C15)
# Size of one (permutations x shingles) block: small enough to stay in cache, large enough to amortize numpy calls.
_BLOCK_ELEMS = 1 << 22


_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35))


@functools.lru_cache(maxsize=1)
def datasketch_minhash_class() -> type:
    """datasketch's MinHash class, loaded without running the package's ``__init__``.

    ``import datasketch`` also imports its LSH storage layers and, through them, scipy.integrate: 1-20 s
    of start-up on two busy cores, for a class that itself needs only numpy and ``datasketch.hashfunc``.
    So its two modules are loaded from the installed package's files; when datasketch is already
    imported, or anything here fails, the normal import is used.
    """
    if "datasketch" in sys.modules:
        from datasketch import MinHash
        return MinHash
    try:
        root = Path(importlib.util.find_spec("datasketch").submodule_search_locations[0])
        loaded = {}
        for name in ("hashfunc", "minhash"):
            spec = importlib.util.spec_from_file_location(f"datasketch.{name}", root / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[f"datasketch.{name}"] = module  # minhash.py imports datasketch.hashfunc by name
            loaded[name] = module
            spec.loader.exec_module(module)
        return loaded["minhash"].MinHash
    except Exception:  # noqa: BLE001 - any surprise in the shortcut: take the documented import instead
        from datasketch import MinHash
        return MinHash
    finally:
        for name in ("hashfunc", "minhash"):  # a later `import datasketch` then loads the real package
            sys.modules.pop(f"datasketch.{name}", None)


@functools.lru_cache(maxsize=8)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters (a odd, b), each shape (num_perm,) uint32.

    datasketch is imported here only: its package import pulls in scipy (seconds), so the main process
    computes the parameters once and ships them to the workers inside the Plan.
    """
    a, b = datasketch_minhash_class()(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer: the pre-mix datasketch's affine32 scheme applies to every input hash
    (``datasketch.minhash._fmix(h, 32)``; tests check both agree)."""
    s1, m1, s2, m2 = _FMIX32
    with np.errstate(over="ignore"):
        h = h ^ (h >> s1)
        h = h * m1
        h = h ^ (h >> s2)
        h = h * m2
        return h ^ (h >> s1)


def signatures(sh: Shingles, perms: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """MinHash signature of every doc, shape (n_docs, len(a)) uint32; a doc without shingles keeps MAX_HASH."""
    a, b = perms[0][:, None], perms[1][:, None]
    num_perm = len(perms[0])
    n = len(sh.offsets) - 1
    sig = np.full((num_perm, n), MAX_HASH, dtype=np.uint32)
    counts = np.diff(sh.offsets)
    mixed = fmix32(sh.hashes.astype(np.uint32))
    step = max(_BLOCK_ELEMS // num_perm, 1)
    doc = 0
    while doc < n:
        # Whole docs whose shingles fit one cache-sized (permutations x shingles) block, at least one doc.
        stop = int(np.searchsorted(sh.offsets, sh.offsets[doc] + step, "right")) - 1
        stop = min(max(stop, doc + 1), n)
        lo, hi = int(sh.offsets[doc]), int(sh.offsets[stop])
        docs = np.arange(doc, stop)[counts[doc:stop] > 0]
        if len(docs):
            block = np.multiply(a, mixed[None, lo:hi])
            block += b
            sig[:, docs] = np.minimum.reduceat(block, sh.offsets[docs] - lo, axis=1)
        doc = stop
    return np.ascontiguousarray(sig.T)


def recall_at(s: float, bands: int, rows: int) -> float:
    """Probability that a pair of Jaccard s shares at least one band."""
    return 1.0 - (1.0 - s ** rows) ** bands


def choose_bands_rows(threshold: float, num_perm: int, target_recall: float = 0.995) -> tuple[int, int]:
    """The most rows per band (fewest false candidates) whose recall at the threshold still meets the target.

    datasketch's optimizer minimizes a weighted false-positive + false-negative area instead, and at
    threshold 0.8 with 128 permutations picks 9 x 13, which catches a pair exactly at the threshold only
    ~40% of the time. Candidates are verified afterwards, so false candidates cost time, never precision.
    """
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if recall_at(threshold, bands, rows) >= target_recall:
            best = (bands, rows)
    return best


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per (doc, band), shape (n_docs, bands); the band index is mixed in so bands never collide."""
    n = sig.shape[0]
    keys = np.empty((n, bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for band in range(bands):
            h = np.full(n, fmix64(np.array([band + 1], np.uint64))[0], dtype=np.uint64)
            for col in range(band * rows, (band + 1) * rows):
                h = (h ^ sig[:, col].astype(np.uint64)) * _P64
            keys[:, band] = fmix64(h)
    return keys


def band_recall_table(threshold: float, bands: int, rows: int) -> dict[str, float]:
    """Candidate probability at a few similarities around the threshold, for the report."""
    points = sorted({round(threshold - 0.1, 2), round(threshold - 0.05, 2), threshold, round(threshold + 0.05, 2)})
    return {f"{s:.2f}": round(recall_at(s, bands, rows), 4) for s in points if 0 < s < 1}


def jaccard_pairs(sh: Shingles, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Exact Jaccard of the shingle sets of docs left[k] and right[k], vectorized over all pairs.

    Each shingle hash is tagged with its pair number, so one sort-based intersection of two big arrays
    replaces a Python loop over pairs; duplicate shingles inside a doc count once.
    """
    out = np.zeros(len(left), dtype=np.float64)
    if not len(left):
        return out
    size = np.diff(sh.offsets)
    pair = np.arange(len(left), dtype=np.uint64)

    def tagged_set(docs: np.ndarray) -> np.ndarray:
        sizes = size[docs]
        starts = np.repeat(sh.offsets[docs], sizes)
        within = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        return sorted_unique((np.repeat(pair, sizes) << np.uint64(32)) | sh.hashes[starts + within].astype(np.uint64))

    lset, rset = tagged_set(left), tagged_set(right)
    common = np.intersect1d(lset, rset, assume_unique=True)
    n_l = np.bincount((lset >> np.uint64(32)).astype(np.int64), minlength=len(left))
    n_r = np.bincount((rset >> np.uint64(32)).astype(np.int64), minlength=len(left))
    inter = np.bincount((common >> np.uint64(32)).astype(np.int64), minlength=len(left))
    union = n_l + n_r - inter
    np.divide(inter, union, out=out, where=union > 0)
    return out


def signature_jaccard(sig_left: np.ndarray, sig_right: np.ndarray) -> np.ndarray:
    """datasketch's estimate: the share of equal signature values."""
    return (sig_left == sig_right).mean(axis=1)


__all__ = ["permutations", "signatures", "choose_bands_rows", "band_keys", "recall_at", "jaccard_pairs",
           "signature_jaccard", "band_recall_table"]

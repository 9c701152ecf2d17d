"""Text side of dedup: how the compared text (``tasks.core.records.record_text``) is normalized, and its
shingle hashes.

Everything works on whole Arrow batches: text extraction, normalization and word splitting are Arrow
compute kernels, each distinct word of a batch is hashed once (xxh3), and n-gram hashes are combined
from word hashes with numpy. No Python loop runs per shingle or per token.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_P64 = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio odd multiplier: each step spreads the previous state
_FMIX64 = (np.uint64(33), np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53))


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer, a bijection that avalanches every input bit."""
    s, m1, m2 = _FMIX64
    with np.errstate(over="ignore"):
        h = h ^ (h >> s)
        h = h * m1
        h = h ^ (h >> s)
        h = h * m2
        return h ^ (h >> s)


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values. numpy 2.4's hash-based ``np.unique`` is pathologically slow on tagged uint64
    keys (20 s where a sort takes 0.3 s on 1M values), so dedup sorts."""
    if len(values) == 0:
        return values
    out = np.sort(values)
    return out[np.concatenate([[True], out[1:] != out[:-1]])]


def normalize(texts: pa.Array, lowercase: bool = True, strip_punct: bool = True, nfkc: bool = True) -> pa.Array:
    """Normalize text the same way for exact and near dedup (whitespace runs are split on later)."""
    if texts.null_count:
        texts = pc.fill_null(texts, "")
    # Pure-ASCII batches (most English text) skip NFKC, an identity there, and take the ASCII kernels.
    ascii_only = len(texts) == 0 or pc.all(pc.string_is_ascii(texts)).as_py()
    if nfkc and not ascii_only:
        texts = pc.utf8_normalize(texts, form="NFKC")
    if lowercase:
        texts = pc.ascii_lower(texts) if ascii_only else pc.utf8_lower(texts)
    if strip_punct:
        pattern = r"[[:punct:]]+" if ascii_only else r"[\p{P}\p{S}]+"  # the same set on ASCII text
        texts = pc.replace_substring_regex(texts, pattern=pattern, replacement=" ")
    return texts


def exact_keys(normalized: pa.Array) -> np.ndarray:
    """A 128-bit content hash per text, as a (n, 2) uint64 array."""
    out = np.empty((len(normalized), 2), dtype=np.uint64)
    for i, s in enumerate(normalized.to_pylist()):
        d = xxhash.xxh3_128_intdigest(" ".join(s.split()).encode())
        out[i, 0], out[i, 1] = d >> 64, d & 0xFFFFFFFFFFFFFFFF
    return out


@dataclass
class Shingles:
    """Shingle hashes of a batch: doc d owns hashes[offsets[d]:offsets[d+1]] (not deduplicated)."""

    hashes: np.ndarray  # uint32, the values datasketch's MinHash would receive from its hashfunc
    offsets: np.ndarray  # int64, len n_docs + 1


def _window_hash(tokens: np.ndarray, lengths: np.ndarray, n: int) -> Shingles:
    """Hash every window of n consecutive token hashes inside each doc; a doc shorter than n is one shingle.

    The windows are computed over the whole batch from n shifted slices (no gathers), then the starts that
    stay inside one doc are kept; docs shorter than n (rare) take a masked path of their own.
    """
    lengths = lengths.astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    per_doc = np.where(lengths >= n, lengths - n + 1, np.minimum(lengths, 1))
    offsets = np.concatenate([[0], np.cumsum(per_doc)]).astype(np.int64)
    out = np.empty(int(offsets[-1]), dtype=np.uint64)
    full = lengths >= n
    with np.errstate(over="ignore"):
        if full.any() and len(tokens) >= n:
            m = len(tokens) - n + 1
            h = tokens[:m] * _P64
            for k in range(1, n):
                h ^= tokens[k:k + m]
                h *= _P64
            counts = per_doc[full]
            first = np.repeat(starts[full], counts)
            within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
            dest = np.repeat(offsets[:-1][full], counts) + within
            out[dest] = fmix64(h[first + within] ^ np.uint64(n))
        short = np.flatnonzero(~full & (lengths > 0))
        if len(short):  # one shingle of all the doc's tokens, same recurrence with width < n
            width = lengths[short]
            h = np.zeros(len(short), dtype=np.uint64)
            for k in range(int(width.max())):
                valid = k < width
                step = (h ^ tokens[np.minimum(starts[short] + k, len(tokens) - 1)]) * _P64
                h = np.where(valid, step, h)
            out[offsets[short]] = fmix64(h ^ width.astype(np.uint64))
    return Shingles(hashes=(out >> np.uint64(32)).astype(np.uint32), offsets=offsets)


def word_token_hashes(normalized: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Split on whitespace and hash each distinct word of the batch once; returns (token hashes, words/doc)."""
    words = pc.utf8_split_whitespace(normalized)
    flat = pc.list_flatten(words)
    parents = pc.list_parent_indices(words).to_numpy()
    nonempty = pc.greater(pc.binary_length(flat), 0)  # leading/trailing whitespace yields empty strings
    flat, parents = flat.filter(nonempty), parents[nonempty.to_numpy(zero_copy_only=False)]
    lengths = np.bincount(parents, minlength=len(normalized)).astype(np.int64)
    if len(flat) == 0:
        return np.zeros(0, np.uint64), lengths
    encoded = pc.dictionary_encode(flat)
    vocab = np.fromiter((xxhash.xxh3_64_intdigest(w.encode()) for w in encoded.dictionary.to_pylist()),
                        dtype=np.uint64, count=len(encoded.dictionary))
    return vocab[encoded.indices.to_numpy()], lengths


def char_token_hashes(normalized: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Code points of each text, pre-mixed so that the window hash spreads them; returns (hashes, chars/doc)."""
    texts = [" ".join(s.split()) for s in normalized.to_pylist()]  # whitespace runs count as one space
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    codes = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32)
    return fmix64(codes.astype(np.uint64) + np.uint64(0x632BE59BD9B4E019)), lengths


def shingle_hashes(normalized: pa.Array, shingle: str, ngram: int) -> Shingles:
    """Word or character n-gram hashes of a batch of normalized texts."""
    tokens, lengths = (word_token_hashes if shingle == "word" else char_token_hashes)(normalized)
    return _window_hash(tokens, lengths, ngram)

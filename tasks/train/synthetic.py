"""Synthetic tokenized splits, in the layout ``tasks.tokenize.stage`` writes, for tests and speed benchmarks.

Tests need a learnable signal in a few steps (``pattern`` rows: arithmetic runs of token ids); benchmarks need
exact shapes (fixed-length random rows, or rows packed from a given list of sequence lengths) and, to compare
how far recipes get, a signal with a known loss floor (``markov`` rows: walks on a fixed sparse Markov chain).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from schemas.tokenize import IGNORE_INDEX, TOKENIZED_SCHEMA
from tasks.core.stage import ShardWriter


def write_split(split_dir: Path, rows: list[dict]) -> Path:
    """Write rows of input_ids / labels / position_ids as TOKENIZED_SCHEMA Parquet shards in ``split_dir``;
    the bookkeeping columns (record ids, counts) are derived from those three."""
    out = []
    for i, r in enumerate(rows):
        ids, labels, pos = ([int(x) for x in r[k]] for k in ("input_ids", "labels", "position_ids"))
        n_seqs = max(1, sum(1 for p in pos if p == 0))
        out.append({"input_ids": ids, "labels": labels, "position_ids": pos,
                    "record_ids": [f"synthetic-{i}-{j}" for j in range(n_seqs)], "num_tokens": len(ids),
                    "num_seqs": n_seqs, "num_loss_tokens": sum(1 for x in labels if x != IGNORE_INDEX)})
    with ShardWriter(Path(split_dir), TOKENIZED_SCHEMA) as writer:
        writer.write(pa.Table.from_pylist(out, schema=TOKENIZED_SCHEMA))
    return Path(split_dir)


def pack_lengths(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit packing of sequence lengths into rows of at most ``capacity`` tokens (lengths are clipped)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for n in sorted((min(n, capacity) for n in lengths), reverse=True):
        for i, free in enumerate(room):
            if free >= n:
                rows[i].append(n)
                room[i] -= n
                break
        else:
            rows.append([n])
            room.append(capacity - n)
    return rows


def random_rows(n_rows: int, vocab_size: int, seed: int = 0, seq_len: int | None = None,
                lengths: list[int] | None = None, prompt_share: float = 0.0) -> list[dict]:
    """Random-token rows: ``n_rows`` of ``seq_len`` tokens, or rows packed from ``lengths`` (cycled to fill
    ``n_rows``); the first ``prompt_share`` of each sequence carries no loss."""
    rng = np.random.default_rng(seed)
    if lengths is None:
        assert seq_len is not None
        layout = [[seq_len]] * n_rows
    else:
        assert seq_len is not None, "packing needs seq_len as the row capacity"
        layout = []
        i = 0
        while len(layout) < n_rows:
            chunk = [lengths[(i + j) % len(lengths)] for j in range(4 * n_rows)]
            i += len(chunk)
            layout.extend(pack_lengths(chunk, seq_len))
        layout = layout[:n_rows]
    rows = []
    for seqs in layout:
        ids = rng.integers(0, vocab_size, sum(seqs))
        labels = ids.copy()
        pos, start = [], 0
        for n in seqs:
            labels[start:start + int(n * prompt_share)] = -100
            pos.extend(range(n))
            start += n
        rows.append({"input_ids": ids, "labels": labels, "position_ids": np.asarray(pos)})
    return rows


def pattern_rows(n_rows: int, vocab_size: int, seq_len: int = 32, seqs_per_row: int = 2, seed: int = 0) -> list[dict]:
    """Rows of packed arithmetic runs (start, start+step, ...): easy to learn, so the loss falls in a few steps.
    The first token of each sequence is a prompt (label -100)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_rows):
        ids, labels, pos = [], [], []
        for _ in range(seqs_per_row):
            start, step = int(rng.integers(10, vocab_size)), int(rng.integers(1, 4))
            seq = [10 + (start + step * k) % (vocab_size - 10) for k in range(seq_len)]
            ids += seq
            labels += [-100] + seq[1:]
            pos += list(range(seq_len))
        rows.append({"input_ids": ids, "labels": labels, "position_ids": pos})
    return rows


def markov_chain(vocab_size: int, branching: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random sparse Markov chain over ``vocab_size`` ids: each id has ``branching`` successors with fixed
    random probabilities. Returns (successors [V, k], probabilities [V, k])."""
    rng = np.random.default_rng(seed)
    succ = np.stack([rng.choice(vocab_size, branching, replace=False) for _ in range(vocab_size)])
    probs = rng.dirichlet(np.ones(branching), size=vocab_size)
    return succ, probs


def markov_entropy(probs: np.ndarray) -> float:
    """Next-token entropy (nats) averaged over the states: about the loss floor a model can reach (exactly,
    if the walks visit every state equally often)."""
    return float(-(probs * np.log(probs)).sum(axis=1).mean())


def markov_rows(n_rows: int, vocab_size: int, seq_len: int, branching: int = 4, seed: int = 0,
                chain_seed: int = 0) -> list[dict]:
    """Rows of walks on one fixed Markov chain (``chain_seed``): a learnable signal with a known loss floor
    (about ``markov_entropy``), so training recipes can be compared on how far down they get."""
    succ, probs = markov_chain(vocab_size, branching, chain_seed)
    cum = probs.cumsum(axis=1)
    rng = np.random.default_rng([seed, 1])
    ids = np.empty((n_rows, seq_len), dtype=np.int64)
    ids[:, 0] = rng.integers(vocab_size, size=n_rows)
    u = rng.random((n_rows, seq_len))
    for t in range(1, seq_len):  # all rows at once, one step of the walk at a time
        prev = ids[:, t - 1]
        pick = np.minimum((u[:, t, None] > cum[prev]).sum(axis=1), branching - 1)
        ids[:, t] = succ[prev, pick]
    rows = []
    for walk in ids:
        labels = walk.copy()
        labels[0] = IGNORE_INDEX
        rows.append({"input_ids": walk, "labels": labels, "position_ids": np.arange(seq_len)})
    return rows

"""Synthetic tokenized splits, in the layout ``tasks.tokenize.stage`` writes, for tests and speed benchmarks.

Tests need a learnable signal in a few steps (``pattern`` rows: arithmetic runs of token ids); benchmarks need
exact shapes (fixed-length random rows, or rows packed from a given list of sequence lengths).
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

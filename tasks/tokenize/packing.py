"""Packing tokenized sequences into rows of ``max_seq_len`` (batching the rows is ``tasks.train.data.collate``).

A packed row is several whole sequences laid end to end. ``position_ids`` restart at 0 at each sequence, and
that restart is the only boundary marker the model needs: with ``attention_mask=None`` transformers 5 reads
the restarts (``masking_utils.find_packed_sequence_indices``) and builds a block-diagonal causal mask for
sdpa and eager attention, and flash-attention-2 turns them into ``cu_seqlens``. So attention never crosses
from one record into another, and each sequence sees the same positions as when run alone.
"""
from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from schemas.tokenize import IGNORE_INDEX


@dataclass
class TokenizedSeq:
    """One tokenized record: ids and labels of equal length (labels -100 where there is no loss)."""

    record_id: str
    input_ids: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group item indices into bins of at most ``capacity`` by best-fit decreasing.

    Longest items first; each goes into the open bin whose free space is the smallest that still fits it,
    or a new bin. Ties are broken by input order, so the result is deterministic. O(n log n) plus list
    inserts over the open bins. Items longer than ``capacity`` raise: the length policy must handle them first.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: equal lengths keep input order
    bins: list[list[int]] = []
    # Free space of every bin that still has room, sorted, with the bin index as tie-breaker.
    free: list[tuple[int, int]] = []
    for i in order:
        size = lengths[i]
        if size > capacity:
            raise ValueError(f"item {i} has length {size} > capacity {capacity}")
        if size <= 0:
            raise ValueError(f"item {i} has length {size}; empty sequences cannot be packed")
        at = bisect.bisect_left(free, (size, -1))
        if at < len(free):
            room, b = free.pop(at)
        else:
            room, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        room -= size
        if room > 0:
            bisect.insort(free, (room, b))
    return bins


def pack_sequences(seqs: Sequence[TokenizedSeq], capacity: int) -> list[dict]:
    """Pack sequences into rows (dicts of input_ids, labels, position_ids, record_ids and counts)."""
    bins = best_fit_decreasing([len(s) for s in seqs], capacity)
    return [concat_row([seqs[i] for i in members]) for members in bins]


def single_rows(seqs: Sequence[TokenizedSeq]) -> list[dict]:
    """One sequence per row, for padding-only batching."""
    return [concat_row([s]) for s in seqs]


def concat_row(members: Sequence[TokenizedSeq]) -> dict:
    ids = np.concatenate([s.input_ids for s in members]).astype(np.int32)
    labels = np.concatenate([s.labels for s in members]).astype(np.int32)
    pos = np.concatenate([np.arange(len(s), dtype=np.int32) for s in members])
    return {"input_ids": ids, "labels": labels, "position_ids": pos,
            "record_ids": [s.record_id for s in members], "num_tokens": len(ids), "num_seqs": len(members),
            "num_loss_tokens": int((labels != IGNORE_INDEX).sum())}


def packing_efficiency(num_tokens: int, num_rows: int, capacity: int) -> float:
    """Real tokens / token slots when every row is padded to ``capacity``."""
    return num_tokens / (num_rows * capacity) if num_rows else 0.0


"""Training batches from the tokenized split: a resumable cursor over a seeded order, padding-free collation.

Rows come from ``tasks.tokenize.stage`` (input_ids, labels with -100 where there is no loss, position_ids that
restart at 0 at each packed sequence) and stay in Arrow's flat int32 buffers (``TokenizedRows``). Targets are
shifted here, inside each sequence, so no token ever learns to predict the first token of the next record.
``collate`` is the one collate: training, evaluation and the tests all batch rows through it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import overload

import numpy as np
import torch

from schemas.tokenize import IGNORE_INDEX
from tasks.core.stage import iter_batches, shard_paths


@dataclass
class TrainingRow:
    """One packed training row as the trainer reads it (tasks.ingest.rows.Row is a source row, before conversion)."""

    input_ids: np.ndarray
    targets: np.ndarray  # next-token targets, -100 where no loss
    position_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)


def shift_targets(labels: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
    """targets[t] = labels[t+1], except at the last token of each sequence (the next one restarts at 0)."""
    targets = np.full(len(labels), IGNORE_INDEX, dtype=labels.dtype if labels.dtype.kind == "i" else np.int64)
    if len(labels) > 1:
        targets[:-1] = labels[1:]
        targets[:-1][position_ids[1:] == 0] = IGNORE_INDEX
    return targets


@dataclass(frozen=True)
class _Chunk:
    """One record batch of a split: flat token columns and where each (non-empty) row starts and ends."""

    starts: np.ndarray
    ends: np.ndarray
    input_ids: np.ndarray
    targets: np.ndarray
    position_ids: np.ndarray


class TokenizedRows(Sequence[TrainingRow]):
    """The rows of a tokenized split, held as the flat int32 columns Arrow read them into.

    ``input_ids`` and ``position_ids`` are views on Arrow's buffers (no copy, no per-row Python lists); the
    shifted targets are computed once per record batch, vectorised. ``rows[i]`` is a ``TrainingRow`` of views.
    """

    def __init__(self, chunks: list[_Chunk]):
        self._chunks = chunks
        self._first = np.cumsum([0] + [len(c.starts) for c in chunks])  # index of each chunk's first row

    def __len__(self) -> int:
        return int(self._first[-1])

    @overload
    def __getitem__(self, i: int) -> TrainingRow: ...

    @overload
    def __getitem__(self, i: slice) -> list[TrainingRow]: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} out of range ({len(self)} rows)")
        c = int(np.searchsorted(self._first, i, side="right")) - 1
        chunk, k = self._chunks[c], i - int(self._first[c])
        a, b = int(chunk.starts[k]), int(chunk.ends[k])
        return TrainingRow(chunk.input_ids[a:b], chunk.targets[a:b], chunk.position_ids[a:b])


def _flat_column(batch, name: str) -> tuple[np.ndarray, np.ndarray]:
    col = batch.column(name)
    return col.offsets.to_numpy(), col.values.to_numpy(zero_copy_only=col.values.null_count == 0)


def load_rows(split_dir) -> TokenizedRows:
    """Every non-empty row of a tokenized split, in shard order; a missing or empty split has no rows."""
    chunks = []
    for n, batch in enumerate(iter_batches(split_dir, columns=["input_ids", "labels", "position_ids"])
                              if shard_paths(split_dir) else []):
        (off, ids), (lab_off, labels), (pos_off, pos) = (_flat_column(batch, c)
                                                         for c in ("input_ids", "labels", "position_ids"))
        lengths = np.diff(off)
        if not (np.array_equal(lengths, np.diff(lab_off)) and np.array_equal(lengths, np.diff(pos_off))):
            raise ValueError(f"{split_dir}: batch {n} has rows whose input_ids, labels and position_ids differ "
                             "in length")
        targets = np.full(len(labels), IGNORE_INDEX, dtype=np.int32)
        targets[:-1] = labels[1:]
        targets[:-1][pos[1:] == 0] = IGNORE_INDEX  # the next token starts another sequence
        keep = lengths > 0
        starts, ends = off[:-1][keep], off[1:][keep]
        targets[ends - 1] = IGNORE_INDEX  # nor does the last token of a row predict the next row's first
        chunks.append(_Chunk(starts, ends, ids, targets, pos))
    return TokenizedRows(chunks)


@dataclass
class DataCursor:
    """Where the data stream stands: epoch and index into that epoch's seeded permutation."""

    seed: int
    epoch: int = 0
    index: int = 0
    _order: np.ndarray | None = field(default=None, repr=False)

    def order(self, n: int) -> np.ndarray:
        if self._order is None or len(self._order) != n:
            self._order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        return self._order

    def take(self, n_rows: int, k: int) -> list[int]:
        """The next ``k`` row indices, rolling into a new epoch (new order) when one runs out."""
        out = []
        while len(out) < k:
            order = self.order(n_rows)
            if self.index >= n_rows:
                self.epoch, self.index, self._order = self.epoch + 1, 0, None
                continue
            out.append(int(order[self.index]))
            self.index += 1
        return out

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch, self.index, self._order = state["seed"], state["epoch"], state["index"], None


@dataclass
class Batch:
    input_ids: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor
    n_tokens: int  # real (non-pad) tokens
    n_loss_tokens: int

    def to(self, device: torch.device) -> Batch:
        nb = device.type == "cuda"
        return Batch(self.input_ids.to(device, non_blocking=nb), self.position_ids.to(device, non_blocking=nb),
                     self.targets.to(device, non_blocking=nb), self.n_tokens, self.n_loss_tokens)


def collate(rows: Sequence[TrainingRow], layout: str = "flat", pad_id: int = 0, multiple: int = 1) -> Batch:
    """One micro-batch. 'flat': all rows end to end in a single row, no padding at all (position_ids restart
    per sequence, so attention stays inside each one). 'padded': rows padded to the longest; each pad run
    gets its own restarting positions, so it forms a separate masked-out "sequence" instead of needing a mask.
    Either way the width is rounded up to ``multiple``, the same way.
    """
    n_tokens = sum(len(r) for r in rows)
    n_loss = int(sum((r.targets != IGNORE_INDEX).sum() for r in rows))
    if layout == "flat":
        rows = [TrainingRow(*(np.concatenate([getattr(r, a) for r in rows]) for a in ("input_ids", "targets", "position_ids")))]
    width = -(-max(len(r) for r in rows) // multiple) * multiple
    # Filled in numpy: the rows are read-only views on Arrow's buffers, which torch.from_numpy warns about.
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    tgt = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
    pos = np.empty((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        n = len(r)
        ids[i, :n], tgt[i, :n], pos[i, :n] = r.input_ids, r.targets, r.position_ids
        pos[i, n:] = np.arange(width - n)
    return Batch(torch.from_numpy(ids), torch.from_numpy(pos), torch.from_numpy(tgt), n_tokens, n_loss)


def micro_batches_for_step(rows: Sequence[TrainingRow], cursor: DataCursor, micro_batch_size: int, grad_accum: int,
                           tokens_per_step: int | None, layout: str, pad_id: int,
                           rank: int = 0, world_size: int = 1, multiple: int = 1) -> list[Batch]:
    """The micro-batches of one optimizer step for this rank.

    With ``tokens_per_step`` the step keeps taking micro-batches until the whole step (all ranks) holds at
    least that many tokens; otherwise it takes ``grad_accum`` of them per rank. Every rank advances the cursor
    identically and keeps only its own share, so ranks never see the same rows in a step.
    """
    out: list[Batch] = []
    total = 0
    while True:
        group = [collate([rows[i] for i in cursor.take(len(rows), micro_batch_size)], layout, pad_id, multiple)
                 for _ in range(world_size)]
        out.append(group[rank])
        total += sum(b.n_tokens for b in group)
        if (tokens_per_step is None and len(out) >= grad_accum) or (tokens_per_step is not None
                                                                     and total >= tokens_per_step):
            return out


def eval_batches(rows: Sequence[TrainingRow], micro_batch_size: int, layout: str, pad_id: int,
                 max_batches: int | None = None, multiple: int = 1):
    """The eval split in file order, in fixed micro-batches, so every evaluation sees the same tokens."""
    for n, start in enumerate(range(0, len(rows), micro_batch_size)):
        if max_batches is not None and n >= max_batches:
            return
        yield collate(rows[start:start + micro_batch_size], layout, pad_id, multiple)

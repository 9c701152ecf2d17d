"""Training batches from the tokenized split: a resumable cursor over a seeded order, padding-free collation.

Rows come from ``tasks.tokenize.stage`` (input_ids, labels with -100 where there is no loss, position_ids that
restart at 0 at each packed sequence). Targets are shifted here, inside each sequence, so no token ever learns
to predict the first token of the next record.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from schemas.tokenize import IGNORE_INDEX
from tasks.core.stage import iter_batches, shard_paths


@dataclass
class Row:
    input_ids: np.ndarray
    targets: np.ndarray  # next-token targets, -100 where no loss
    position_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)


def shift_targets(labels: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
    """targets[t] = labels[t+1], except at the last token of each sequence (the next one restarts at 0)."""
    targets = np.full(len(labels), IGNORE_INDEX, dtype=np.int64)
    if len(labels) > 1:
        targets[:-1] = labels[1:]
        targets[:-1][position_ids[1:] == 0] = IGNORE_INDEX
    return targets


def load_rows(split_dir) -> list[Row]:
    """Every row of a tokenized split, in shard order; a missing or empty split is an empty list."""
    if not shard_paths(split_dir):
        return []
    rows = []
    for batch in iter_batches(split_dir, columns=["input_ids", "labels", "position_ids"]):
        for ids, labels, pos in zip(*(batch.column(c).to_pylist() for c in ("input_ids", "labels", "position_ids")),
                                    strict=True):
            ids, labels, pos = (np.asarray(a, dtype=np.int64) for a in (ids, labels, pos))
            if len(ids):
                rows.append(Row(ids, shift_targets(labels, pos), pos))
    return rows


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


def collate(rows: list[Row], layout: str = "flat", pad_id: int = 0, multiple: int = 1) -> Batch:
    """One micro-batch. 'flat': all rows end to end in a single row, no padding at all (position_ids restart
    per sequence, so attention stays inside each one). 'padded': rows padded to the longest; each pad run
    gets its own restarting positions, so it forms a separate masked-out "sequence" instead of needing a mask.
    Either way the width is rounded up to ``multiple``, the same way.
    """
    n_tokens = sum(len(r) for r in rows)
    n_loss = int(sum((r.targets != IGNORE_INDEX).sum() for r in rows))
    if layout == "flat":
        rows = [Row(*(np.concatenate([getattr(r, a) for r in rows]) for a in ("input_ids", "targets", "position_ids")))]
    width = -(-max(len(r) for r in rows) // multiple) * multiple
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    tgt = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    pos = torch.arange(width, dtype=torch.long).repeat(len(rows), 1)
    for i, r in enumerate(rows):
        n = len(r)
        ids[i, :n], tgt[i, :n], pos[i, :n] = (torch.from_numpy(a) for a in (r.input_ids, r.targets, r.position_ids))
        pos[i, n:] = torch.arange(width - n)
    return Batch(ids, pos, tgt, n_tokens, n_loss)


def micro_batches_for_step(rows: list[Row], cursor: DataCursor, micro_batch_size: int, grad_accum: int,
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


def eval_batches(rows: list[Row], micro_batch_size: int, layout: str, pad_id: int,
                 max_batches: int | None = None, multiple: int = 1):
    """The eval split in file order, in fixed micro-batches, so every evaluation sees the same tokens."""
    for n, start in enumerate(range(0, len(rows), micro_batch_size)):
        if max_batches is not None and n >= max_batches:
            return
        yield collate(rows[start:start + micro_batch_size], layout, pad_id, multiple)

"""Batches for the preference objectives: both sides of each pair (DPO) or examples plus their mismatched KL
sequences (KTO), laid out like SFT batches (padded rows whose padding restarts its positions, or one flat
padding-free row), with the sequence each token belongs to, so one forward pass scores every sequence.

Rows come from tasks.preference.tokenize; targets are shifted here, as in tasks.train.data.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from schemas.tokenize import IGNORE_INDEX
from tasks.core.stage import iter_batches, shard_paths

Seq = tuple[np.ndarray, np.ndarray]  # (input_ids, targets)


def shift(labels: np.ndarray) -> np.ndarray:
    """Next-token targets of one sequence."""
    targets = np.full(len(labels), IGNORE_INDEX, dtype=np.int64)
    targets[:-1] = labels[1:]
    return targets


@dataclass
class PairRow:
    chosen: Seq
    rejected: Seq

    @property
    def n_tokens(self) -> int:
        return len(self.chosen[0]) + len(self.rejected[0])


@dataclass
class UnpairedRow:
    input_ids: np.ndarray
    targets: np.ndarray
    desirable: bool
    prompt_len: int  # tokens before the completion (its first labelled token)

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)


def load_pair_rows(split_dir) -> list[PairRow]:
    if not shard_paths(split_dir):
        return []
    rows = []
    cols = ["chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"]
    for batch in iter_batches(split_dir, columns=cols):
        for ci, cl, ri, rl in zip(*(batch.column(c).to_pylist() for c in cols)):
            rows.append(PairRow((np.asarray(ci, np.int64), shift(np.asarray(cl, np.int64))),
                                (np.asarray(ri, np.int64), shift(np.asarray(rl, np.int64)))))
    return rows


def load_unpaired_rows(split_dir) -> list[UnpairedRow]:
    if not shard_paths(split_dir):
        return []
    rows = []
    for batch in iter_batches(split_dir, columns=["input_ids", "labels", "label"]):
        for ids, labels, label in zip(*(batch.column(c).to_pylist() for c in ("input_ids", "labels", "label"))):
            labels = np.asarray(labels, np.int64)
            first = int(np.flatnonzero(labels != IGNORE_INDEX)[0])
            rows.append(UnpairedRow(np.asarray(ids, np.int64), shift(labels), bool(label), first))
    return rows


@dataclass
class SeqBatch:
    """Several sequences in one forward pass; ``seq_index`` maps each position to its sequence (-1: padding)."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor
    seq_index: torch.Tensor
    n_seqs: int
    n_tokens: int

    def to(self, device: torch.device) -> SeqBatch:
        nb = device.type == "cuda"
        return SeqBatch(*(t.to(device, non_blocking=nb) for t in (self.input_ids, self.position_ids, self.targets,
                                                                   self.seq_index)), self.n_seqs, self.n_tokens)


def collate_sequences(seqs: list[Seq], layout: str = "padded", pad_id: int = 0, multiple: int = 1) -> SeqBatch:
    """'padded': one sequence per row, padded to the longest, each pad run its own position-restarting stretch
    (so no attention mask is needed, as in tasks.train.data); 'flat': all sequences end to end in one row."""
    lengths = [len(ids) for ids, _ in seqs]
    if layout == "flat":
        groups = [list(range(len(seqs)))]
    else:
        groups = [[i] for i in range(len(seqs))]
    width = -(-max(sum(lengths[i] for i in g) for g in groups) // multiple) * multiple
    shape = (len(groups), width)
    ids = torch.full(shape, pad_id, dtype=torch.long)
    tgt = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    pos = torch.zeros(shape, dtype=torch.long)
    owner = torch.full(shape, -1, dtype=torch.long)
    for row, g in enumerate(groups):
        at = 0
        for i in g:
            n = lengths[i]
            ids[row, at:at + n] = torch.from_numpy(seqs[i][0])
            tgt[row, at:at + n] = torch.from_numpy(seqs[i][1])
            pos[row, at:at + n] = torch.arange(n)
            owner[row, at:at + n] = i
            at += n
        pos[row, at:] = torch.arange(width - at)
    return SeqBatch(ids, pos, tgt, owner, len(seqs), sum(lengths))


def pair_batch(rows: list[PairRow], layout: str, pad_id: int, multiple: int) -> SeqBatch:
    """Sequences ordered [chosen_0 .. chosen_m-1, rejected_0 .. rejected_m-1], as TRL's collator orders them."""
    return collate_sequences([r.chosen for r in rows] + [r.rejected for r in rows], layout, pad_id, multiple)


def kto_batches(rows: list[UnpairedRow], layout: str, pad_id: int, multiple: int) -> tuple[SeqBatch, SeqBatch]:
    """The examples, and the KL sequences TRL builds: prompt i with the completion of example i-1 (rotated by
    one within the batch), labelled on that completion."""
    main = collate_sequences([(r.input_ids, r.targets) for r in rows], layout, pad_id, multiple)
    kl = []
    for i, r in enumerate(rows):
        other = rows[i - 1]
        comp_ids = other.input_ids[other.prompt_len:]
        ids = np.concatenate([r.input_ids[:r.prompt_len], comp_ids])
        labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
        labels[r.prompt_len:] = comp_ids
        kl.append((ids, shift(labels)))
    return main, collate_sequences(kl, layout, pad_id, multiple)

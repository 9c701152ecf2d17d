"""Tokenize's encoding on a task runner: one task per input shard, its encodings written beside the stage.

A worker loads the tokenizer once per process (``tasks.tokenize.chat.init_worker``, as a local pool does),
encodes its shard batch by batch (the same batches as the in-process path: ``tokenize.batch_size`` rows of one
shard file) and pickles each batch's encodings to
``WORK/SPLIT-SHARD-BATCH.pkl`` under the stage's temporary directory; it returns only the batch count. The
parent then reads them back in input order and packs exactly as the in-process path does, so the rows are
the same byte for byte whichever runner encoded them. The pickles are our own files, written and read by
this stage only (through tasks.core.handoff, which rebuilds only the encoding types), and deleted with the
stage's work directory.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.tokenize import TokenizeConfig
from tasks.core.handoff import read_handoff, write_handoff
from tasks.core.shards import Mapper
from tasks.core.stage import shard_paths
from tasks.tokenize.chat import EncodedBatch, encode_in_worker, init_worker

T = TypeVar("T")
ShardItem = tuple[str, str, int]  # (split, shard path, shard index)


def work_file(work: Path, split: str, shard: int, batch: int, ext: str = "pkl") -> Path:
    """Where a worker leaves what it made of one input batch."""
    return work / f"{split}-{shard:05d}-{batch:06d}.{ext}"


def take_handoff(path: Path) -> object:
    """A worker's handoff file, read back and removed."""
    obj = read_handoff(path)
    path.unlink()
    return obj


def map_split_shards(split_dir: Path, splits: tuple[str, ...], worker: Callable[[ShardItem], int], mapper: Mapper,
                     work: Path) -> dict[str, list[int]]:
    """Run ``worker`` on every shard ``(split, path, index)`` of every split through ``mapper`` (one task per
    shard; the worker writes into ``work`` and returns its batch count); the batch counts per shard, per split."""
    work.mkdir(parents=True, exist_ok=True)
    items = [(split, str(p), i) for split in splits for i, p in enumerate(shard_paths(split_dir / split))]
    counts = mapper(worker, items)
    out: dict[str, list[int]] = {split: [] for split in splits}
    for (split, _, _), n in zip(items, counts, strict=True):
        out[split].append(n)
    return out


def runner_batches(in_dir: Path, counts: list[int], batch_size: int, result: Callable[[int, int], T],
                   stage: str) -> Iterator[tuple[pa.RecordBatch, T]]:
    """The input batches of one split in input order, each with ``result(shard, batch)``: what its worker made
    of it. The batches are the workers' own (``batch_size`` rows of one shard file)."""
    for index, path in enumerate(shard_paths(in_dir)):
        for b, batch in enumerate(pq.ParquetFile(path).iter_batches(batch_size=batch_size)):
            if b >= counts[index]:
                raise RuntimeError(f"{stage}: shard {path} has more batches than its worker made")
            yield batch, result(index, b)


def encode_shard(item: ShardItem, tokenizer: tuple[str, str | None, bool, str | None], cfg: TokenizeConfig,
                 work: str) -> int:
    """Worker: encode every batch of one shard ``(split, path, index)``; returns the number of batches."""
    split, path, index = item
    init_worker(*tokenizer)  # once per worker process, as a local pool's initializer does
    n = 0
    for n, batch in enumerate(pq.ParquetFile(path).iter_batches(batch_size=cfg.batch_size), start=1):
        enc = encode_in_worker(batch.column("id").to_pylist(), batch.column("messages").to_pylist(), cfg)
        write_handoff(enc, work_file(Path(work), split, index, n - 1))
    return n


def encode_on_runner(split_dir: Path, tokenizer: tuple[str, str | None, bool, str | None], cfg: TokenizeConfig,
                     work: Path, mapper: Mapper, splits: tuple[str, ...]) -> dict[str, list[int]]:
    """Encode every shard of every split through ``mapper``; the batch count per shard, per split."""
    worker = functools.partial(encode_shard, tokenizer=tokenizer, cfg=cfg, work=str(work))
    return map_split_shards(split_dir, splits, worker, mapper, work)


def encoded_batches(in_dir: Path, split: str, counts: list[int], cfg: TokenizeConfig, work: Path
                    ) -> Iterator[tuple[pa.RecordBatch, EncodedBatch]]:
    """The input batches with their encodings from the workers' pickles, in input order."""
    return runner_batches(in_dir, counts, cfg.batch_size,
                          lambda shard, b: take_handoff(work_file(work, split, shard, b)), "tokenize")

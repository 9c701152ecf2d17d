"""Tokenize + pack: chat template -> masked labels -> length policy -> packed rows, train and eval apart.

Stage ``tokenize`` reads the split stage's ``train/`` and ``eval/`` record shards and writes ``train/`` and
``eval/`` shards of TOKENIZED_SCHEMA rows (schemas/tokenize.py) plus ``rejects/``. Eval records are never
packed into a train row: each split is packed on its own.

Templating, prompt masking and the length policy live in tasks.tokenize.chat (``encode_chat`` is the same path
for one conversation); packing in tasks.tokenize.packing. What the chat template did (messages it dropped or
moved, reasoning it dropped, records rejected for it) is counted in the ledger's ``template`` entry, and more
than ``tokenize.max_template_reject_share`` of template rejects fails the stage (tasks.tokenize.report).

How rows are fed to the model: training and evaluation collate them with ``tasks.train.data`` (input_ids,
position_ids and shifted targets, no attention_mask) and take the loss with
``tasks.train.loss.causal_lm_loss_sum``. With ``attention_mask=None`` and no cache, transformers 5 finds the
position restarts and builds a block-diagonal causal mask (sdpa, eager; flash-attention-2 derives cu_seqlens
from the same position_ids), so attention never crosses records and the per-token loss equals running each
record alone (tests check it). Padding is a
trailing "sequence" of its own with labels -100, so it needs no mask either. Packed rows come out longest
records first (best-fit decreasing): shuffle rows when training.
"""
from __future__ import annotations

import shutil
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pyarrow as pa
from prefect import task

from schemas.pipeline import PipelineConfig
from schemas.record import REJECT_SCHEMA
from schemas.tokenize import IGNORE_INDEX, TOKENIZED_SCHEMA, TokenizeConfig
from tasks.core.errors import NothingToTrainError
from tasks.core.shards import Mapper, stage_mapper
from tasks.core.stage import (
    Ledger,
    ShardWriter,
    StageOutput,
    code_version,
    digest,
    iter_batches,
    run_stage,
    with_reject_columns,
)
from tasks.tokenize.chat import EncodedBatch, encode_in_worker, encode_records, init_worker, mask_method
from tasks.tokenize.packing import pack_sequences, packing_efficiency, single_rows
from tasks.tokenize.report import check_template_share, template_report
from tasks.tokenize.shards import encode_on_runner, encoded_batches
from tasks.tokenize.spans import probe
from tasks.tokenize.tokenizer import load_tokenizer, tokenizer_digest

STAGE = "tokenize"
SPLITS = ("train", "eval")
TOKENIZE_REJECT_SCHEMA = pa.schema(list(REJECT_SCHEMA) + [pa.field("split", pa.string()),
                                                          pa.field("num_tokens", pa.int32())])


def _encoded_batches(in_dir: Path, tok, cfg: TokenizeConfig, pool: ProcessPoolExecutor | None
                     ) -> Iterator[tuple[pa.RecordBatch, EncodedBatch]]:
    """Input batches with their encodings, in input order; at most 2 batches per worker in flight."""
    if pool is None:
        for batch in iter_batches(in_dir, batch_size=cfg.batch_size):
            yield batch, encode_records(tok, batch.column("id").to_pylist(),
                                        batch.column("messages").to_pylist(), cfg)
        return
    pending: deque[tuple[pa.RecordBatch, Future]] = deque()
    for batch in iter_batches(in_dir, batch_size=cfg.batch_size):
        pending.append((batch, pool.submit(encode_in_worker, batch.column("id").to_pylist(),
                                           batch.column("messages").to_pylist(), cfg)))
        if len(pending) >= 2 * cfg.num_proc:
            done, fut = pending.popleft()
            yield done, fut.result()
    while pending:
        done, fut = pending.popleft()
        yield done, fut.result()


def rows_to_table(rows: list[dict]) -> pa.Table:
    """Packed rows (numpy arrays) to a TOKENIZED_SCHEMA table without a Python loop over tokens."""
    def lists(key: str, dtype: pa.DataType) -> pa.Array:
        lengths = np.array([len(r[key]) for r in rows], dtype=np.int32)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        values = np.concatenate([r[key] for r in rows]) if rows else np.zeros(0)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, dtype))
    cols = {k: lists(k, pa.int32()) for k in ("input_ids", "labels", "position_ids")}
    cols["record_ids"] = pa.array([r["record_ids"] for r in rows], pa.list_(pa.string()))
    for k in ("num_tokens", "num_seqs", "num_loss_tokens"):
        cols[k] = pa.array([r[k] for r in rows], pa.int32())
    return pa.table(cols, schema=TOKENIZED_SCHEMA)


@dataclass
class SplitStats:
    records: int = 0
    kept: int = 0
    sequences: int = 0  # more than kept records under tokenize.reasoning=all
    rows: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    truncated: int = 0
    dropped: Counter = field(default_factory=Counter)
    behaviours: Counter = field(default_factory=Counter)  # template behaviours, records per behaviour
    first_detail: dict[str, str] = field(default_factory=dict)  # reason -> the first reject's detail
    first_reject: str = ""


def tokenize_split(in_dir: Path, split: str, tok, cfg: TokenizeConfig, rows_out: ShardWriter, rejects: ShardWriter,
                   pool: ProcessPoolExecutor | None = None,
                   encoded: Iterator[tuple[pa.RecordBatch, EncodedBatch]] | None = None) -> SplitStats:
    """Tokenize one split's records, pack them (within windows of ``cfg.pack_window``) and write rows/rejects.
    ``encoded``: the batches already encoded by a task runner's workers (tasks.tokenize.shards)."""
    stats, buffer = SplitStats(), []
    pack = cfg.packing and (split == "train" or cfg.pack_eval)

    def flush() -> None:
        if buffer:
            rows = pack_sequences(buffer, cfg.max_seq_len) if pack else single_rows(buffer)
            rows_out.write(rows_to_table(rows))
            stats.rows += len(rows)
            buffer.clear()

    for batch, enc in encoded if encoded is not None else _encoded_batches(in_dir, tok, cfg, pool):
        stats.records += batch.num_rows
        if enc.rejects:
            table = pa.Table.from_batches([batch]).take([r.index for r in enc.rejects])
            table = with_reject_columns(table, STAGE, [r.reason for r in enc.rejects],
                                        [r.detail for r in enc.rejects])
            table = (table.append_column("split", pa.array([split] * table.num_rows, pa.string()))
                     .append_column("num_tokens", pa.array([r.num_tokens for r in enc.rejects], pa.int32())))
            rejects.write(table)
            stats.dropped.update(r.reason for r in enc.rejects)
            for r in enc.rejects:
                stats.first_detail.setdefault(r.reason, r.detail)
            stats.first_reject = stats.first_reject or f"{enc.rejects[0].reason}: {enc.rejects[0].detail}"
        stats.kept += batch.num_rows - len(enc.rejects)
        stats.behaviours.update(enc.behaviours)
        stats.sequences += len(enc.seqs)
        stats.truncated += enc.truncated
        stats.tokens += sum(len(s) for s in enc.seqs)
        stats.loss_tokens += sum(int((s.labels != IGNORE_INDEX).sum()) for s in enc.seqs)
        buffer.extend(enc.seqs)
        if len(buffer) >= cfg.pack_window:
            flush()
    flush()
    return stats


def tokenize_splits(split_dir: Path, tokenizer_dir: str, cfg: TokenizeConfig, out: Path,
                    revision: str | None = None, trust_remote_code: bool = False,
                    mapper: Mapper | None = None) -> Ledger:
    """Stage body: tokenize ``split_dir/{train,eval}`` into ``out/{train,eval}`` and ``out/rejects``.
    ``mapper``: encode on a task runner, one task per input shard (default: in-process, or ``num_proc``)."""
    split_dir, out = Path(split_dir), Path(out)
    for split in SPLITS:
        if not (split_dir / split).is_dir():
            raise FileNotFoundError(f"tokenize: no {split!r} split in {split_dir} (expected the split stage's output)")
    tok = load_tokenizer(tokenizer_dir, revision, trust_remote_code, cfg.chat_template)
    if getattr(tok, "backend_tokenizer", None) is None:  # masks need the Rust tokenizer's character offsets
        raise ValueError(f"tokenize: {tokenizer_dir} has no fast (Rust) tokenizer; convert it with "
                         "AutoTokenizer.from_pretrained(..., use_fast=True) and save it")
    start = time.perf_counter()
    pool, counts, work = None, None, out / "_encoded"
    if mapper is not None:
        counts = encode_on_runner(split_dir, (tokenizer_dir, revision, trust_remote_code, cfg.chat_template), cfg,
                                  work, mapper, SPLITS)
    elif cfg.num_proc > 1:
        # spawn, not fork: the caller may be a threaded Prefect worker, and forked tokenizers deadlock.
        pool = ProcessPoolExecutor(cfg.num_proc, mp_context=get_context("spawn"), initializer=init_worker,
                                   initargs=(tokenizer_dir, revision, trust_remote_code, cfg.chat_template))
    stats: dict[str, SplitStats] = {}
    try:
        with ShardWriter(out / "rejects", TOKENIZE_REJECT_SCHEMA) as rejects:
            for split in SPLITS:
                with ShardWriter(out / split, TOKENIZED_SCHEMA) as rows_out:
                    encoded = None if counts is None else \
                        encoded_batches(split_dir / split, split, counts[split], cfg, work)
                    stats[split] = tokenize_split(split_dir / split, split, tok, cfg, rows_out, rejects, pool,
                                                  encoded)
    finally:
        if pool is not None:
            pool.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - start
    tr, ev = stats["train"], stats["eval"]
    ledger = Ledger(STAGE, n_in=sum(s.records for s in stats.values()), kept=sum(s.kept for s in stats.values()))
    for s in stats.values():
        ledger.dropped.update(s.dropped)
    behaviours = sum((s.behaviours for s in stats.values()), Counter())
    info = probe(tok)
    report = template_report(info.name, info.digest, ledger.n_in, ledger.dropped, behaviours,
                             {**ev.first_detail, **tr.first_detail})
    check_template_share(report, cfg.max_template_reject_share)
    if tr.records and not tr.kept:  # training on nothing would fail later, far from the cause
        raise NothingToTrainError(f"nothing left to train on: tokenize: all {tr.records} train records were "
                                  f"rejected {dict(tr.dropped)}; first reason: {tr.first_reject}")
    ledger.extra = {
        "packing_efficiency": round(packing_efficiency(tr.tokens, tr.rows, cfg.max_seq_len), 4),
        "eval_packing_efficiency": round(packing_efficiency(ev.tokens, ev.rows, cfg.max_seq_len), 4),
        "train_records": tr.kept, "eval_records": ev.kept, "train_rows": tr.rows, "eval_rows": ev.rows,
        "train_tokens": tr.tokens, "eval_tokens": ev.tokens,
        "train_loss_tokens": tr.loss_tokens, "eval_loss_tokens": ev.loss_tokens,
        "truncated": tr.truncated + ev.truncated, "mask_method": mask_method(tok, cfg.train_on),
        "train_sequences": tr.sequences, "template": report,
        "max_seq_len": cfg.max_seq_len, "packing": cfg.packing,
        "tokens_per_s": round((tr.tokens + ev.tokens) / seconds) if seconds > 0 else None,
    }
    return ledger


@task(name="tokenize")
def tokenize_task(split: StageOutput, tokenizer_dir: str, cfg: PipelineConfig) -> StageOutput:
    """Prefect wrapper; the key covers the tokenizer's files, so a retrained tokenizer re-tokenizes, and leaves
    out ``num_proc``, which changes the speed, never the rows."""
    settings = cfg.tokenize.cache_settings()
    key = digest(STAGE, code_version("tasks.tokenize", "tasks.core.stage"), settings, split.key, tokenizer_digest(tokenizer_dir, cfg.model.revision))
    mapper = stage_mapper(cfg.runner, STAGE)
    return run_stage(cfg.workdir, STAGE, key, lambda tmp: tokenize_splits(
        split.path, tokenizer_dir, cfg.tokenize, tmp, cfg.model.revision, cfg.model.trust_remote_code, mapper))


"""Tokenize + pack: chat template -> masked labels -> length policy -> packed rows, train and eval apart.

Stage ``tokenize`` reads the split stage's ``train/`` and ``eval/`` record shards and writes ``train/`` and
``eval/`` shards of TOKENIZED_SCHEMA rows (schemas/tokenize.py) plus ``rejects/``. Eval records are never
packed into a train row: each split is packed on its own.

Labels: with ``train_on="assistant"`` only assistant turns (their content and end-of-turn token) carry a
loss; everything else is -100. The mask comes from the template's ``{% generation %}`` blocks when it has
them (``apply_chat_template(return_assistant_tokens_mask=True)``), otherwise by finding each message's text
verbatim in the rendered conversation (most hub templates, e.g. Llama 3 or ChatML, have no generation
blocks). The first token of every record is always -100: nothing predicts it, and in a packed row that is
what stops the last token of one record from being trained to predict the next record.

Model-call convention (training and evaluation must feed rows exactly like this; tests check it):

    batch = collate(rows, pad_id=tokenizer.pad_token_id)      # tasks.packing: input_ids, labels, position_ids
    out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"],
                use_cache=False)                               # and NO attention_mask

With ``attention_mask=None`` and no cache, transformers 5 finds the position restarts and builds a
block-diagonal causal mask (sdpa, eager; flash-attention-2 derives cu_seqlens from the same position_ids),
so attention never crosses records and the per-token loss equals running each record alone. Padding is a
trailing "sequence" of its own with labels -100, so it needs no mask either. Packed rows come out longest
records first (best-fit decreasing): shuffle rows when training.
"""
from __future__ import annotations

import re
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
from schemas.tokenize import TOKENIZED_SCHEMA, TokenizeConfig
from tasks.packing import IGNORE_INDEX, TokenizedSeq, pack_sequences, packing_efficiency, single_rows
from tasks.stage import Ledger, ShardWriter, StageOutput, digest, iter_batches, run_stage, with_reject_columns
from tasks.tokenizer import load_tokenizer, tokenizer_digest

STAGE = "tokenize"
TOKENIZE_VERSION = "1"  # bump when the output of the same inputs changes
SPLITS = ("train", "eval")
TOKENIZE_REJECT_SCHEMA = pa.schema(list(REJECT_SCHEMA) + [pa.field("split", pa.string()),
                                                          pa.field("num_tokens", pa.int32())])
_GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")


@dataclass
class Reject:
    index: int  # row in the input batch
    reason: str
    detail: str
    num_tokens: int | None = None


@dataclass
class EncodedBatch:
    seqs: list[TokenizedSeq] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    truncated: int = 0


def mask_method(tok, train_on: str) -> str:
    """'all' (every token), 'generation' ({% generation %} blocks) or 'search' (verbatim message text)."""
    if train_on == "all":
        return "all"
    return "generation" if _GENERATION_BLOCK.search(tok.chat_template or "") else "search"


def spans_to_mask(offsets: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    """True for every token whose character range overlaps one of the sorted ``spans``."""
    mask = np.zeros(len(offsets), dtype=bool)
    if not spans or not len(offsets):
        return mask
    starts = np.array([s for s, _ in spans])
    ends = np.array([e for _, e in spans])
    first = np.searchsorted(ends, offsets[:, 0], side="right")  # first span ending after the token starts
    ok = first < len(spans)
    mask[ok] = offsets[ok, 1] > starts[first[ok]]
    return mask


def assistant_spans(text: str, conv: list[dict], control_tokens: list[str]) -> list[tuple[int, int]]:
    """Character spans of the assistant turns in ``text``, found in message order, each extended over the
    control token (end of turn) that follows it after optional whitespace. Raises ValueError when the
    template rewrote a message beyond trimming it."""
    spans, cursor = [], 0
    for m in conv:
        content = m["content"]
        if not content.strip():
            continue  # nothing to find, and nothing to learn from an empty turn
        at = text.find(content, cursor)
        if at < 0:
            content = content.strip()  # some templates trim messages
            at = text.find(content, cursor)
        if at < 0:
            raise ValueError(f"{m['role']} message not found verbatim in the rendered template")
        end = at + len(content)
        if m["role"] == "assistant":
            rest = text[end:]
            gap = len(rest) - len(rest.lstrip())
            follow = next((t for t in control_tokens if rest.startswith(t, gap)), None)
            spans.append((at, end + gap + len(follow) if follow else end))
        cursor = end
    return spans


def _control_tokens(tok) -> list[str]:
    # Longest first, so "<|eot_id|>" wins over a shorter token that happens to prefix it.
    return sorted({t for t in tok.all_special_tokens if t} | {t.content for t in tok.added_tokens_decoder.values()},
                  key=len, reverse=True)


def _encode_one_batch(tok, convs: list[list[dict]], method: str) -> list[tuple[np.ndarray, np.ndarray]]:
    if method == "generation":
        out = tok.apply_chat_template(convs, return_dict=True, return_assistant_tokens_mask=True)
        return [(np.asarray(ids, dtype=np.int32), np.asarray(m, dtype=bool))
                for ids, m in zip(out["input_ids"], out["assistant_masks"], strict=True)]
    texts = tok.apply_chat_template(convs, tokenize=False)
    if method == "all":
        enc = tok(texts, add_special_tokens=False)
        return [(np.asarray(ids, dtype=np.int32), np.ones(len(ids), dtype=bool)) for ids in enc["input_ids"]]
    controls = _control_tokens(tok)
    spans = [assistant_spans(t, c, controls) for t, c in zip(texts, convs, strict=True)]
    enc = tok(texts, add_special_tokens=False, return_offsets_mapping=True)
    return [(np.asarray(ids, dtype=np.int32), spans_to_mask(np.asarray(offs, dtype=np.int64).reshape(-1, 2), sp))
            for ids, offs, sp in zip(enc["input_ids"], enc["offset_mapping"], spans, strict=True)]


def _encode_isolated(tok, convs: list[list[dict]], method: str) -> list[tuple[np.ndarray, np.ndarray] | str]:
    """Encode a batch; if it fails, encode record by record so one bad record only rejects itself."""
    try:
        return list(_encode_one_batch(tok, convs, method))
    except Exception:  # noqa: BLE001  (any template or tokenizer error becomes a per-record reject below)
        results: list[tuple[np.ndarray, np.ndarray] | str] = []
        for conv in convs:
            try:
                results.extend(_encode_one_batch(tok, [conv], method))
            except Exception as exc:  # noqa: BLE001
                results.append(f"{type(exc).__name__}: {exc}"[:500])
        return results


def encode_records(tok, ids: list[str], messages: list, cfg: TokenizeConfig, method: str) -> EncodedBatch:
    """Template, mask and length-police one batch of records; every record becomes a sequence or a Reject."""
    out = EncodedBatch()
    todo: list[tuple[int, list[dict]]] = []
    for j, msgs in enumerate(messages):
        conv = [{"role": m.get("role") or "", "content": m.get("content") or ""} for m in (msgs or []) if m]
        if not conv:
            out.rejects.append(Reject(j, "no_messages", "the record has no messages"))
        elif cfg.train_on == "assistant" and not any(m["role"] == "assistant" and m["content"].strip()
                                                     for m in conv):
            out.rejects.append(Reject(j, "no_assistant_turn", "no assistant message with content"))
        else:
            todo.append((j, conv))
    encoded = _encode_isolated(tok, [c for _, c in todo], method) if todo else []
    limit = cfg.max_seq_len
    for (j, _), enc in zip(todo, encoded, strict=True):
        if isinstance(enc, str):
            out.rejects.append(Reject(j, "template_error", enc))
            continue
        input_ids, mask = enc
        n = len(input_ids)
        if n == 0:
            out.rejects.append(Reject(j, "empty_after_template", "the template rendered no tokens", 0))
            continue
        labels = np.where(mask, input_ids, IGNORE_INDEX).astype(np.int32)
        labels[0] = IGNORE_INDEX
        cut = False
        if n > limit:
            if cfg.overlong == "drop":
                out.rejects.append(Reject(j, "too_long", f"{n} tokens > max_seq_len {limit}", n))
                continue
            input_ids, labels, cut = input_ids[:limit], labels[:limit], True
        if not (labels != IGNORE_INDEX).any():
            why = "truncation cut every assistant token" if cut else "the template marks no assistant tokens"
            out.rejects.append(Reject(j, "no_loss_tokens", why, n))
            continue
        out.truncated += cut
        out.seqs.append(TokenizedSeq(ids[j], input_ids, labels))
    return out


# --- worker processes (num_proc > 1): each loads the tokenizer once ---
_WORKER_TOK = None


def _init_worker(tokenizer_dir: str, revision: str | None, trust_remote_code: bool, template: str | None) -> None:
    global _WORKER_TOK
    _WORKER_TOK = load_tokenizer(tokenizer_dir, revision, trust_remote_code, template)


def _encode_in_worker(ids: list[str], messages: list, cfg: TokenizeConfig, method: str) -> EncodedBatch:
    return encode_records(_WORKER_TOK, ids, messages, cfg, method)


def _encoded_batches(in_dir: Path, tok, cfg: TokenizeConfig, method: str, pool: ProcessPoolExecutor | None
                     ) -> Iterator[tuple[pa.RecordBatch, EncodedBatch]]:
    """Input batches with their encodings, in input order; at most 2 batches per worker in flight."""
    if pool is None:
        for batch in iter_batches(in_dir, batch_size=cfg.batch_size):
            yield batch, encode_records(tok, batch.column("id").to_pylist(),
                                        batch.column("messages").to_pylist(), cfg, method)
        return
    pending: deque[tuple[pa.RecordBatch, Future]] = deque()
    for batch in iter_batches(in_dir, batch_size=cfg.batch_size):
        pending.append((batch, pool.submit(_encode_in_worker, batch.column("id").to_pylist(),
                                           batch.column("messages").to_pylist(), cfg, method)))
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
    rows: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    truncated: int = 0
    dropped: Counter = field(default_factory=Counter)


def tokenize_split(in_dir: Path, split: str, tok, cfg: TokenizeConfig, rows_out: ShardWriter, rejects: ShardWriter,
                   pool: ProcessPoolExecutor | None = None) -> SplitStats:
    """Tokenize one split's records, pack them (within windows of ``cfg.pack_window``) and write rows/rejects."""
    stats, buffer = SplitStats(), []
    method = mask_method(tok, cfg.train_on)
    pack = cfg.packing and (split == "train" or cfg.pack_eval)

    def flush() -> None:
        if buffer:
            rows = pack_sequences(buffer, cfg.max_seq_len) if pack else single_rows(buffer)
            rows_out.write(rows_to_table(rows))
            stats.rows += len(rows)
            buffer.clear()

    for batch, enc in _encoded_batches(in_dir, tok, cfg, method, pool):
        stats.records += batch.num_rows
        if enc.rejects:
            table = pa.Table.from_batches([batch]).take([r.index for r in enc.rejects])
            table = with_reject_columns(table, STAGE, [r.reason for r in enc.rejects],
                                        [r.detail for r in enc.rejects])
            table = (table.append_column("split", pa.array([split] * table.num_rows, pa.string()))
                     .append_column("num_tokens", pa.array([r.num_tokens for r in enc.rejects], pa.int32())))
            rejects.write(table)
            stats.dropped.update(r.reason for r in enc.rejects)
        stats.kept += len(enc.seqs)
        stats.truncated += enc.truncated
        stats.tokens += sum(len(s) for s in enc.seqs)
        stats.loss_tokens += sum(int((s.labels != IGNORE_INDEX).sum()) for s in enc.seqs)
        buffer.extend(enc.seqs)
        if len(buffer) >= cfg.pack_window:
            flush()
    flush()
    return stats


def tokenize_splits(split_dir: Path, tokenizer_dir: str, cfg: TokenizeConfig, out: Path,
                    revision: str | None = None, trust_remote_code: bool = False) -> Ledger:
    """Stage body: tokenize ``split_dir/{train,eval}`` into ``out/{train,eval}`` and ``out/rejects``."""
    split_dir, out = Path(split_dir), Path(out)
    for split in SPLITS:
        if not (split_dir / split).is_dir():
            raise FileNotFoundError(f"tokenize: no {split!r} split in {split_dir} (expected the split stage's output)")
    tok = load_tokenizer(tokenizer_dir, revision, trust_remote_code, cfg.chat_template)
    start = time.perf_counter()
    pool = None
    if cfg.num_proc > 1:
        # spawn, not fork: the caller may be a threaded Prefect worker, and forked tokenizers deadlock.
        pool = ProcessPoolExecutor(cfg.num_proc, mp_context=get_context("spawn"), initializer=_init_worker,
                                   initargs=(tokenizer_dir, revision, trust_remote_code, cfg.chat_template))
    stats: dict[str, SplitStats] = {}
    try:
        with ShardWriter(out / "rejects", TOKENIZE_REJECT_SCHEMA) as rejects:
            for split in SPLITS:
                with ShardWriter(out / split, TOKENIZED_SCHEMA) as rows_out:
                    stats[split] = tokenize_split(split_dir / split, split, tok, cfg, rows_out, rejects, pool)
    finally:
        if pool is not None:
            pool.shutdown()
    seconds = time.perf_counter() - start
    ledger = Ledger(STAGE, n_in=sum(s.records for s in stats.values()), kept=sum(s.kept for s in stats.values()))
    for s in stats.values():
        ledger.dropped.update(s.dropped)
    tr, ev = stats["train"], stats["eval"]
    ledger.extra = {
        "packing_efficiency": round(packing_efficiency(tr.tokens, tr.rows, cfg.max_seq_len), 4),
        "eval_packing_efficiency": round(packing_efficiency(ev.tokens, ev.rows, cfg.max_seq_len), 4),
        "train_records": tr.kept, "eval_records": ev.kept, "train_rows": tr.rows, "eval_rows": ev.rows,
        "train_tokens": tr.tokens, "eval_tokens": ev.tokens,
        "train_loss_tokens": tr.loss_tokens, "eval_loss_tokens": ev.loss_tokens,
        "truncated": tr.truncated + ev.truncated, "mask_method": mask_method(tok, cfg.train_on),
        "max_seq_len": cfg.max_seq_len, "packing": cfg.packing,
        "tokens_per_s": round((tr.tokens + ev.tokens) / seconds) if seconds > 0 else None,
    }
    return ledger


@task(name="tokenize")
def tokenize_task(split: StageOutput, tokenizer_dir: str, cfg: PipelineConfig) -> StageOutput:
    """Prefect wrapper; the key covers the tokenizer's files, so a retrained tokenizer re-tokenizes."""
    key = digest(STAGE, TOKENIZE_VERSION, cfg.tokenize, split.key, tokenizer_digest(tokenizer_dir, cfg.model.revision))
    return run_stage(cfg.workdir, STAGE, key, lambda tmp: tokenize_splits(
        split.path, tokenizer_dir, cfg.tokenize, tmp, cfg.model.revision, cfg.model.trust_remote_code))


def read_rows(directory: Path) -> list[dict]:
    """A tokenized split as row dicts of int32 numpy arrays, ready for ``tasks.packing.collate``."""
    rows: list[dict] = []
    for batch in iter_batches(directory, columns=["input_ids", "labels", "position_ids", "num_tokens"]):
        cols = {k: (batch.column(k).offsets.to_numpy(), batch.column(k).values.to_numpy(zero_copy_only=False))
                for k in ("input_ids", "labels", "position_ids")}
        for i in range(batch.num_rows):
            rows.append({k: v[off[i]:off[i + 1]] for k, (off, v) in cols.items()})
    return rows

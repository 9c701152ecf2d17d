"""Stage ``preference-tokenize``: pairs (or KTO examples) -> token ids with labels on the final response only.

Each side of a pair is the conversation ``prompt + [response]``, templated and masked by the SFT code
(tasks.tokenize.chat.encode_records: the same chat template, control-token check, length policy and
assistant mask); the mask is then cut down to the *final* assistant turn, so in a multi-turn prompt the
earlier assistant turns are context, not part of the preferred response. A pair is kept only when both sides
are; otherwise it is dropped with the failing side's reason (``chosen:too_long``, ...).

Rows are not packed: DPO needs one log-probability per sequence, and the trainer batches both sides of a
pair together (tasks.train.preference_data). On a task runner (``runner.kind`` processes or ray) each input
shard is one task; the parent writes the batches in input order, so the rows are the same on every runner.
"""
from __future__ import annotations

import functools
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from prefect import task

from schemas.pipeline import PipelineConfig
from schemas.preference import PAIR_SCHEMA, PAIR_TOKENS_SCHEMA, UNPAIRED_SCHEMA, UNPAIRED_TOKENS_SCHEMA
from schemas.tokenize import IGNORE_INDEX, TokenizeConfig
from tasks.core.handoff import write_handoff
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
from tasks.tokenize.chat import encode_records, init_worker, mask_method, worker_tokenizer
from tasks.tokenize.shards import ShardItem, map_split_shards, runner_batches, take_handoff, work_file
from tasks.tokenize.tokenizer import load_tokenizer, tokenizer_digest

STAGE = "preference-tokenize"
SPLITS = ("train", "eval")


def final_turn_labels(labels: np.ndarray) -> np.ndarray:
    """Labels with only the last run of loss tokens left (the final assistant turn and its end of turn)."""
    has = np.flatnonzero(labels != IGNORE_INDEX)
    out = np.full_like(labels, IGNORE_INDEX)
    if not len(has):
        return out
    gaps = np.flatnonzero(np.diff(has) > 1)
    start = has[gaps[-1] + 1] if len(gaps) else has[0]
    out[start:has[-1] + 1] = labels[start:has[-1] + 1]
    return out


def encode_sides(tok, names: list[str], convs: list[list[dict]], cfg: TokenizeConfig, method: str
                 ) -> dict[str, tuple[np.ndarray, np.ndarray] | str]:
    """name -> (input_ids, labels on the final turn), or name -> reason it was rejected."""
    enc = encode_records(tok, names, convs, cfg, method)
    out: dict[str, tuple[np.ndarray, np.ndarray] | str] = {}
    for r in enc.rejects:
        out[names[r.index]] = r.reason
    for s in enc.seqs:
        labels = final_turn_labels(np.asarray(s.labels))
        out[s.record_id] = (np.asarray(s.input_ids, np.int32), labels) if (labels != IGNORE_INDEX).any() \
            else "no_loss_tokens"
    return out


def _lists(arrays: list[np.ndarray]) -> pa.Array:
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrays])]).astype(np.int32)
    values = np.concatenate(arrays).astype(np.int32) if arrays else np.zeros(0, np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.int32()))


def tokenize_pairs(batch: pa.RecordBatch, tok, cfg: TokenizeConfig, method: str) -> tuple[pa.Table, list, list]:
    """(tokenized rows, indices of rejected pairs, their reasons) of one batch of PAIR_SCHEMA rows."""
    ids = batch.column("pair_id").to_pylist()
    prompts, chosen, rejected = (batch.column(c).to_pylist() for c in ("prompt", "chosen", "rejected"))
    names = [f"{i}\x1fchosen" for i in ids] + [f"{i}\x1frejected" for i in ids]
    convs = [p + c for p, c in zip(prompts, chosen)] + [p + r for p, r in zip(prompts, rejected)]
    got = encode_sides(tok, names, convs, cfg, method)
    rows: dict[str, list] = {n: [] for n in PAIR_TOKENS_SCHEMA.names}
    bad, why = [], []
    for j, pid in enumerate(ids):
        c, r = got[f"{pid}\x1fchosen"], got[f"{pid}\x1frejected"]
        if isinstance(c, str) or isinstance(r, str):
            bad.append(j)
            why.append(f"chosen:{c}" if isinstance(c, str) else f"rejected:{r}")
            continue
        rows["pair_id"].append(pid)
        for side, (x, y) in (("chosen", c), ("rejected", r)):
            rows[f"{side}_input_ids"].append(x)
            rows[f"{side}_labels"].append(y)
        rows["num_tokens"].append(len(c[0]) + len(r[0]))
    cols = {k: (_lists(v) if k.endswith(("_ids", "_labels")) else pa.array(v, PAIR_TOKENS_SCHEMA.field(k).type))
            for k, v in rows.items()}
    return pa.table(cols, schema=PAIR_TOKENS_SCHEMA), bad, why


def tokenize_unpaired(batch: pa.RecordBatch, tok, cfg: TokenizeConfig, method: str) -> tuple[pa.Table, list, list]:
    ids = batch.column("example_id").to_pylist()
    convs = [p + c for p, c in zip(batch.column("prompt").to_pylist(), batch.column("completion").to_pylist())]
    labels = batch.column("label").to_pylist()
    got = encode_sides(tok, ids, convs, cfg, method)
    rows: dict[str, list] = {n: [] for n in UNPAIRED_TOKENS_SCHEMA.names}
    bad, why = [], []
    for j, eid in enumerate(ids):
        if isinstance(got[eid], str):
            bad.append(j)
            why.append(got[eid])
            continue
        x, y = got[eid]
        rows["example_id"].append(eid)
        rows["input_ids"].append(x)
        rows["labels"].append(y)
        rows["label"].append(labels[j])
        rows["num_tokens"].append(len(x))
    cols = {k: (_lists(v) if k in ("input_ids", "labels") else pa.array(v, UNPAIRED_TOKENS_SCHEMA.field(k).type))
            for k, v in rows.items()}
    return pa.table(cols, schema=UNPAIRED_TOKENS_SCHEMA), bad, why


def tokenize_batch(batch: pa.RecordBatch, tok, cfg: TokenizeConfig, method: str, objective: str
                   ) -> tuple[pa.Table, list, list]:
    return (tokenize_pairs if objective == "dpo" else tokenize_unpaired)(batch, tok, cfg, method)


def _response_only(cfg: TokenizeConfig) -> TokenizeConfig:
    return cfg.model_copy(update={"train_on": "assistant"})  # a preference is about the response, never the prompt


def tokenize_shard(item: ShardItem, tokenizer: tuple[str, str | None, bool, str | None],
                   cfg: TokenizeConfig, objective: str, work: str) -> int:
    """Runner worker: tokenize every batch of one input shard ``(split, path, index)`` (the batches of the
    in-process path); each batch's rows go to a Parquet file and its rejects to a handoff file in ``work``,
    for the parent to write in input order. Returns the number of batches."""
    split, path, index = item
    init_worker(*tokenizer)  # once per worker process
    tok, cfg = worker_tokenizer(), _response_only(cfg)
    method = mask_method(tok, "assistant")
    n = 0
    for n, batch in enumerate(pq.ParquetFile(path).iter_batches(batch_size=cfg.batch_size), start=1):
        table, bad, why = tokenize_batch(batch, tok, cfg, method, objective)
        pq.write_table(table, work_file(Path(work), split, index, n - 1, "parquet"))
        write_handoff({"bad": bad, "why": why}, work_file(Path(work), split, index, n - 1))
    return n


def _tokenized_by_worker(work: Path, split: str, shard: int, batch: int) -> tuple[pa.Table, list, list]:
    rows = work_file(work, split, shard, batch, "parquet")
    table = pq.read_table(rows)
    rows.unlink()
    rejected = take_handoff(work_file(work, split, shard, batch))
    return table, rejected["bad"], rejected["why"]


def tokenize_preferences(pref_dir: Path, tokenizer_dir: str, cfg: TokenizeConfig, objective: str, out: Path,
                         revision: str | None = None, trust_remote_code: bool = False,
                         mapper: Mapper | None = None) -> Ledger:
    """Stage body: ``pref_dir/{train,eval}`` -> ``out/{train,eval}`` and ``out/rejects``. ``mapper``:
    tokenize on a task runner, one task per input shard (default: in this process); the rows are the same."""
    pref_dir, out = Path(pref_dir), Path(out)
    tok = load_tokenizer(tokenizer_dir, revision, trust_remote_code, cfg.chat_template)
    cfg = _response_only(cfg)
    method = mask_method(tok, "assistant")
    paired = objective == "dpo"
    in_schema, out_schema = (PAIR_SCHEMA, PAIR_TOKENS_SCHEMA) if paired else (UNPAIRED_SCHEMA, UNPAIRED_TOKENS_SCHEMA)
    reject_schema = pa.schema(list(in_schema) + [pa.field("reject_stage", pa.string()),
                                                 pa.field("reject_reason", pa.string()),
                                                 pa.field("reject_detail", pa.string()),
                                                 pa.field("split", pa.string())])
    work = out / "_tokenized"
    counts = None
    if mapper is not None:
        worker = functools.partial(tokenize_shard, tokenizer=(tokenizer_dir, revision, trust_remote_code,
                                                              cfg.chat_template),
                                   cfg=cfg, objective=objective, work=str(work))
        counts = map_split_shards(pref_dir, SPLITS, worker, mapper, work)

    def tokenized(split: str) -> Iterator[tuple[pa.RecordBatch, tuple[pa.Table, list, list]]]:
        """Each input batch of ``split`` with its rows and rejects: made here, or read from its worker's files."""
        if counts is None:
            return ((batch, tokenize_batch(batch, tok, cfg, method, objective))
                    for batch in iter_batches(pref_dir / split, batch_size=cfg.batch_size))
        return runner_batches(pref_dir / split, counts[split], cfg.batch_size,
                              functools.partial(_tokenized_by_worker, work, split), STAGE)

    ledger = Ledger(STAGE)
    extra: Counter = Counter()
    try:
        with ShardWriter(out / "rejects", reject_schema) as rejects:
            for split in SPLITS:
                with ShardWriter(out / split, out_schema) as rows_out:
                    for batch, (table, bad, why) in tokenized(split):
                        rows_out.write(table)
                        ledger.n_in += batch.num_rows
                        ledger.kept += table.num_rows
                        ledger.dropped.update(why)
                        extra[f"{split}_rows"] += table.num_rows
                        extra[f"{split}_tokens"] += int(pc.sum(table.column("num_tokens")).as_py() or 0)
                        if bad:
                            t = with_reject_columns(pa.Table.from_batches([batch]).take(bad), STAGE, why)
                            rejects.write(t.append_column("split", pa.array([split] * len(bad), pa.string())))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if extra["train_rows"] == 0:
        raise ValueError(f"{STAGE}: no training {'pairs' if paired else 'examples'} left "
                         f"({dict(ledger.dropped) or 'the preference stage made none'})")
    ledger.extra = {**extra, "mask_method": method, "objective": objective}
    return ledger


@task(name="preference-tokenize")
def preference_tokenize_task(pref: StageOutput, tokenizer_dir: str, cfg: PipelineConfig) -> StageOutput:
    """Prefect wrapper; keyed like the SFT tokenize stage (settings, input, tokenizer files)."""
    code = code_version("tasks.preference.tokenize", "tasks.tokenize", "tasks.core.stage")
    key = digest(STAGE, code, cfg.tokenize.cache_settings(), cfg.train.objective, pref.key,
                 tokenizer_digest(tokenizer_dir, cfg.model.revision))
    mapper = stage_mapper(cfg.runner, STAGE)
    return run_stage(cfg.workdir, STAGE, key, lambda tmp: tokenize_preferences(
        pref.path, tokenizer_dir, cfg.tokenize, cfg.train.objective, tmp, cfg.model.revision,
        cfg.model.trust_remote_code, mapper))

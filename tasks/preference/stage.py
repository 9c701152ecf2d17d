"""Stage ``preference``: curated responses -> DPO pairs or KTO examples, split by prompt, with a full ledger.

Reads the filter stage's records and writes
- ``train/`` and ``eval/``: PAIR_SCHEMA rows (``train.objective: dpo``) or UNPAIRED_SCHEMA rows (``kto``), split
  by a salted hash of the *group* (``split.eval_fraction``, ``split.seed``), so no prompt is in both;
- ``rejects/``: every record that made no pair (or label), with its reason;
- ``rejected_pairs/``: every candidate pair that was dropped, with its reason (DPO);
- ``train_records/``: the kept records of the train groups (the offline tiny model learns its tokenizer there).

The ledger counts records (responses): ``in == kept + sum(dropped)``, where kept means "in at least one kept
pair" (DPO) or "labelled" (KTO). ``extra`` holds the same balance for prompts and for candidate pairs.
The decisions themselves are in tasks.preference.pairs; this module reads, groups and writes.

Grouping holds the ids, ratings and group keys of all records in memory (about 200 bytes a record) and the
record table itself; preference sets are small next to pretraining corpora, so that is fine up to a few million.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
from prefect import task

from schemas.pipeline import PipelineConfig
from schemas.preference import PAIR_REJECT_SCHEMA, PAIR_SCHEMA, UNPAIRED_SCHEMA, PreferenceConfig
from schemas.record import RECORD_SCHEMA, REJECT_SCHEMA
from tasks.core.stage import (
    Ledger,
    LedgerError,
    ShardWriter,
    StageOutput,
    code_version,
    digest,
    iter_batches,
    run_stage,
    with_reject_columns,
)
from tasks.preference.pairs import Candidate, Response, aggregate, collect_ratings, label_response, pair_group
from tasks.split.stage import is_eval

STAGE = "preference"
log = logging.getLogger(__name__)
_SPACES = re.compile(r"\s+")


def normalize_prompt(messages: list[dict]) -> str:
    """A key under which trivially different copies of one prompt meet: NFKC, case-folded, whitespace collapsed,
    roles kept (a system message changes the prompt)."""
    parts = [f"{m['role']}:{_SPACES.sub(' ', unicodedata.normalize('NFKC', m['content'])).strip().casefold()}"
             for m in messages]
    return hashlib.sha1("\x1f".join(parts).encode()).hexdigest()[:20]


def pair_id(chosen_id: str, rejected_id: str) -> str:
    return hashlib.sha1(f"{chosen_id}\x1f{rejected_id}".encode()).hexdigest()[:20]


def response_of(messages: list[dict], meta: dict, cfg: PreferenceConfig) -> tuple[str, list[dict]] | str:
    """(group key, prompt messages) of a record, or the reason it cannot be a response to a prompt."""
    if not messages or messages[-1]["role"] != "assistant":
        return "no_response"
    prompt = messages[:-1]
    if not any(m["role"] == "user" for m in prompt):
        return "no_prompt"
    if cfg.group_key is None:
        return normalize_prompt(prompt), prompt
    value = meta.get(cfg.group_key)
    if value is None or value == "":
        return "no_group_key"
    return f"{cfg.group_key}={value}", prompt


def _msgs(messages: list[dict]) -> list[dict]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def build_preferences(in_dir: Path, cfg: PipelineConfig, out: Path) -> Ledger:
    """Stage body: group, pair (or label), split and write; see the module docstring."""
    pc, objective = cfg.preference, cfg.train.objective
    if objective not in ("dpo", "kto"):
        raise ValueError(f"the preference stage needs train.objective dpo or kto, not {objective!r}")
    batches = list(iter_batches(in_dir))
    table = pa.Table.from_batches(batches, schema=RECORD_SCHEMA) if batches else RECORD_SCHEMA.empty_table()
    ids = table.column("id").to_pylist()
    messages = table.column("messages").to_pylist()
    metas = [json.loads(m) if m else {} for m in table.column("meta").to_pylist()]
    annotations = table.column("annotations").to_pylist()
    sources = table.column("source").to_pylist()

    ledger = Ledger(STAGE, n_in=len(ids))
    reasons: dict[int, str] = {}
    groups: dict[str, list[int]] = {}
    prompts: dict[int, list[dict]] = {}
    for i, (msgs, meta) in enumerate(zip(messages, metas)):
        got = response_of(msgs, meta, pc)
        if isinstance(got, str):
            reasons[i] = got
            continue
        groups.setdefault(got[0], []).append(i)
        prompts[i] = got[1]
    index = {rid: i for i, rid in enumerate(ids)}

    def response(i: int) -> Response:
        label = metas[i].get("preference")
        return Response(ids[i], collect_ratings(annotations[i]), label if label in ("chosen", "rejected") else None,
                        str(metas[i]["pair_id"]) if metas[i].get("pair_id") is not None else None)

    schema = PAIR_SCHEMA if objective == "dpo" else UNPAIRED_SCHEMA
    prompt_stats = {"in": len(groups), "kept": 0, "dropped": Counter()}
    pair_stats = {"in": 0, "kept": 0, "dropped": Counter()}
    kept_rows: set[int] = set()
    train_rows: set[int] = set()
    counts = Counter()
    with (ShardWriter(out / "train", schema) as train, ShardWriter(out / "eval", schema) as ev,
          ShardWriter(out / "rejected_pairs", PAIR_REJECT_SCHEMA) as bad_pairs):
        for key in sorted(groups):
            members = [response(i) for i in groups[key]]
            held_out = is_eval(key, cfg.split.eval_fraction, cfg.split.seed)
            writer = ev if held_out else train
            if objective == "dpo":
                res = pair_group(members, pc)
                pair_stats["in"] += len(res.kept) + len(res.dropped_pairs)
                pair_stats["kept"] += len(res.kept)
                pair_stats["dropped"].update(c.reason for c in res.dropped_pairs)
                for rid, reason in res.response_reasons.items():
                    reasons[index[rid]] = reason
                if res.kept:
                    writer.write(_pair_table(res.kept, key, index, prompts, messages, sources, pc.aggregate))
                    counts["eval_pairs" if held_out else "train_pairs"] += len(res.kept)
                if res.dropped_pairs:
                    table_ = _pair_table(res.dropped_pairs, key, index, prompts, messages, sources,
                                         pc.aggregate)
                    bad_pairs.write(with_reject_columns(table_, STAGE, [c.reason for c in res.dropped_pairs]))
                used = {index[r.id] for c in res.kept for r in (c.chosen, c.rejected)}
                if res.prompt_reason:
                    prompt_stats["dropped"][res.prompt_reason] += 1
            else:
                rows, used = [], set()
                for r in members:
                    got = label_response(r, pc)
                    if isinstance(got, str):
                        reasons[index[r.id]] = got
                        continue
                    i = index[r.id]
                    used.add(i)
                    counts["desirable" if got.desirable else "undesirable"] += 1
                    rows.append({"example_id": r.id, "group": key, "prompt": _msgs(prompts[i]),
                                 "completion": _msgs(messages[i][-1:]), "label": got.desirable,
                                 "rating": got.rating, "agreement": got.agreement,
                                 "n_annotators": got.n_annotators, "source": sources[i]})
                if rows:
                    writer.write(pa.Table.from_pylist(rows, schema=UNPAIRED_SCHEMA))
                    counts["eval_examples" if held_out else "train_examples"] += len(rows)
                else:
                    reasons_here = Counter(reasons[i] for i in groups[key])
                    prompt_stats["dropped"][reasons_here.most_common(1)[0][0]] += 1
            if used:
                prompt_stats["kept"] += 1
            kept_rows |= used
            if not held_out:
                train_rows |= used

    ledger.kept = len(kept_rows)
    ledger.dropped.update(reasons.values())
    _write_records(table, out / "rejects", reasons, REJECT_SCHEMA)
    with ShardWriter(out / "train_records", RECORD_SCHEMA) as recs:
        if train_rows:
            recs.write(table.take(sorted(train_rows)))
    for name, stats in (("prompts", prompt_stats), ("candidate_pairs", pair_stats)):
        if stats["in"] != stats["kept"] + sum(stats["dropped"].values()):
            raise LedgerError(f"stage {STAGE}: {name} in={stats['in']} but kept+dropped="
                              f"{stats['kept'] + sum(stats['dropped'].values())}")
    ledger.extra = {"objective": objective, **counts,
                    "prompts": {**prompt_stats, "dropped": dict(sorted(prompt_stats["dropped"].items()))}}
    if objective == "dpo":
        ledger.extra["candidate_pairs"] = {**pair_stats, "dropped": dict(sorted(pair_stats["dropped"].items()))}
    _warn_if_unusual(ledger, pc)
    return ledger


def _pair_table(cands: list[Candidate], key: str, index: dict[str, int], prompts: dict[int, list[dict]],
                messages: list[list[dict]], sources: list[str], how: str) -> pa.Table:
    rows = []
    for c in cands:
        ci, ri = index[c.chosen.id], index[c.rejected.id]
        rows.append({"pair_id": pair_id(c.chosen.id, c.rejected.id), "group": key, "prompt": _msgs(prompts[ci]),
                     "chosen": _msgs(messages[ci][-1:]), "rejected": _msgs(messages[ri][-1:]),
                     "chosen_id": c.chosen.id, "rejected_id": c.rejected.id,
                     "chosen_rating": _agg(c.chosen, how), "rejected_rating": _agg(c.rejected, how),
                     "margin": c.margin, "agreement": c.agreement, "n_annotators": c.n_annotators,
                     "agreement_basis": c.basis, "source": sources[ci]})
    return pa.Table.from_pylist(rows, schema=PAIR_SCHEMA)


def _agg(r: Response, how: str) -> float | None:
    return aggregate(r.ratings, how) if r.ratings else None


def _write_records(table: pa.Table, directory: Path, reasons: dict[int, str], schema: pa.Schema) -> None:
    with ShardWriter(directory, schema) as writer:
        if reasons:
            rows = sorted(reasons)
            writer.write(with_reject_columns(table.take(rows), STAGE, [reasons[i] for i in rows]))


# Which config key loosens each reason, for the warning.
_KNOBS = {"tie": "preference.min_margin (ties are always dropped)", "low_margin": "preference.min_margin",
          "annotators_disagree": "preference.min_agreement", "no_shared_annotators": "preference.agreement",
          "over_max_pairs": "preference.max_pairs_per_prompt", "single_response": "preference.group_key",
          "no_group_key": "preference.group_key", "ambiguous_rating":
          "preference.desirable_min_rating / preference.undesirable_max_rating",
          "no_rating": "ingest.sources[].annotation_map", "no_response": "ingest.sources[].format",
          "no_prompt": "ingest.sources[].format", "unpaired_explicit": "dedup (it dropped one side of a pair)"}


def _warn_if_unusual(ledger: Ledger, pc: PreferenceConfig) -> None:
    dropped = sum(ledger.dropped.values())
    if ledger.n_in and dropped / ledger.n_in > pc.warn_share:
        top = ", ".join(f"{r}={n} ({_KNOBS.get(r, 'the curation before this stage')})"
                        for r, n in ledger.dropped.most_common(3))
        log.warning("preference: %d of %d responses (%.0f%%) made no %s; most: %s", dropped, ledger.n_in,
                    100 * dropped / ledger.n_in, "pair" if ledger.extra.get("objective") == "dpo" else "label", top)


def preference_key(upstream: StageOutput, cfg: PipelineConfig) -> str:
    return digest(STAGE, code_version("tasks.preference.stage", "tasks.preference.pairs", "tasks.core.stage"),
                  cfg.preference.cache_settings(), cfg.split.cache_settings(), cfg.train.objective, upstream.key)


@task(name="preference")
def preference_task(upstream: StageOutput, cfg: PipelineConfig) -> StageOutput:
    """Prefect wrapper: pairs (or KTO labels) from the filter stage's records, reused when the key matches."""
    return run_stage(cfg.workdir, STAGE, preference_key(upstream, cfg),
                     lambda tmp: build_preferences(upstream.data(), cfg, tmp))


def preference_rows(stage: StageOutput, split: str = "train", limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of a split as dicts (for previews and tests)."""
    out: list[dict[str, Any]] = []
    for batch in iter_batches(stage.data(split)):
        out += batch.to_pylist()
        if limit is not None and len(out) >= limit:
            return out[:limit]
    return out

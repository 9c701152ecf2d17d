"""Sweeps over preference curation (``train.objective: dpo | kto``): every variant's training pairs beside one
shared set of held-out pairs, the reference curation's.

The preference stage splits by a salted hash of the prompt group, so with the same ``split`` settings (which a
sweep cannot vary) a prompt held out by the reference is held out by every variant; a variant's training pair
whose group is in the shared eval set anyway (another ``preference.group_key``) is set aside with the reason
``in_shared_eval``. A variant's own held-out pairs are replaced by the shared ones and kept in ``rejects``.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from schemas.preference import PAIR_SCHEMA, UNPAIRED_SCHEMA
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

STAGE = "shared_eval_pairs"


def shared_eval_pairs(variant_dir: Path, reference_eval: Path, objective: str, out: Path) -> Ledger:
    """``out/train``: the variant's training pairs (examples); ``out/eval``: the reference's held-out ones."""
    schema = PAIR_SCHEMA if objective == "dpo" else UNPAIRED_SCHEMA
    reject_schema = pa.schema(list(schema) + [pa.field(n, pa.string()) for n in
                                              ("reject_stage", "reject_reason", "reject_detail")])
    ledger = Ledger(STAGE)
    groups: set[str] = set()
    with ShardWriter(out / "eval", schema) as ev:
        for batch in iter_batches(reference_eval):
            ev.write(batch)
            groups.update(batch.column("group").to_pylist())
    with ShardWriter(out / "train", schema) as train, ShardWriter(out / "rejects", reject_schema) as rejects:
        for batch in iter_batches(Path(variant_dir) / "train"):
            table = pa.Table.from_batches([batch])
            leak = pc.is_in(table["group"], value_set=pa.array(sorted(groups), pa.string()))
            train.write(table.filter(pc.invert(leak)))
            leaked = table.filter(leak)
            if leaked.num_rows:
                rejects.write(with_reject_columns(leaked, STAGE, "in_shared_eval"))
            ledger.n_in += table.num_rows
            ledger.kept += table.num_rows - leaked.num_rows
            ledger.drop("in_shared_eval", leaked.num_rows)
        for batch in iter_batches(Path(variant_dir) / "eval"):
            rejects.write(with_reject_columns(pa.Table.from_batches([batch]), STAGE, "replaced_by_shared_eval"))
            ledger.n_in += batch.num_rows
            ledger.drop("replaced_by_shared_eval", batch.num_rows)
    ledger.extra = {"train": train.rows, "eval": ev.rows}
    return ledger


def shared_eval_pairs_task(variant: StageOutput, reference: StageOutput, objective: str, workdir: str) -> StageOutput:
    """The variant's preference stage beside the reference's held-out pairs, content-addressed."""
    key = digest(STAGE, code_version("tasks.sweep.preference"), objective, variant.key, reference.key)
    return run_stage(workdir, STAGE, key, lambda tmp: shared_eval_pairs(variant.path, reference.data("eval"),
                                                                         objective, tmp))

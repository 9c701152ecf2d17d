"""A DPO sweep variant trains on its own pairs and is measured on the reference's held-out pairs."""
import pyarrow as pa

from schemas.preference import PAIR_SCHEMA
from tasks.core.stage import ShardWriter, read_table
from tasks.sweep.preference import shared_eval_pairs


def pairs(*groups):
    return [{"pair_id": f"{g}-{i}", "group": g, "prompt": [], "chosen": [], "rejected": [], "chosen_id": "c",
             "rejected_id": "r", "chosen_rating": 5.0, "rejected_rating": 1.0, "margin": 4.0, "agreement": 1.0,
             "n_annotators": 1, "agreement_basis": "shared", "source": "t"} for i, g in enumerate(groups)]


def write(directory, rows):
    with ShardWriter(directory, PAIR_SCHEMA) as w:
        w.write(pa.Table.from_pylist(rows, schema=PAIR_SCHEMA))


def test_variant_pairs_beside_the_shared_held_out_pairs(tmp_path):
    write(tmp_path / "variant" / "train", pairs("a", "b", "shared1"))  # shared1: held out by the reference
    write(tmp_path / "variant" / "eval", pairs("v"))
    write(tmp_path / "ref" / "eval", pairs("shared1", "shared2"))
    ledger = shared_eval_pairs(tmp_path / "variant", tmp_path / "ref" / "eval", "dpo", tmp_path / "out")
    ledger.check()
    assert (ledger.n_in, ledger.kept) == (4, 2)
    assert dict(ledger.dropped) == {"in_shared_eval": 1, "replaced_by_shared_eval": 1}
    assert read_table(tmp_path / "out" / "train")["group"].to_pylist() == ["a", "b"]
    assert read_table(tmp_path / "out" / "eval")["group"].to_pylist() == ["shared1", "shared2"]
    assert sorted(read_table(tmp_path / "out" / "rejects")["reject_reason"].to_pylist()) == [
        "in_shared_eval", "replaced_by_shared_eval"]
    assert ledger.extra == {"train": 2, "eval": 2}

"""The hub and saved-dataset paths, against datasets built locally (no network): ``disk:`` reads a
save_to_disk folder, ``hf:`` runs datasets.load_dataset on a local dataset directory, whole or streamed."""
from __future__ import annotations

import json

import datasets
import pytest

from schemas.ingest import IngestConfig, SourceConfig
from tasks.core.stage import read_table
from tasks.ingest.stage import IngestError, ingest, record_id, source_fingerprint
from tests.tasks.ingest.util import records

ROWS = [{"id": f"r{i}", "instruction": f"Double {i}.", "input": "", "output": str(2 * i), "score": 3 + i % 3}
        for i in range(12)]
ROWS[5]["output"] = None  # a bad row travels through the hub path too


def run(tmp_path, out, **src):
    cfg = IngestConfig(sources=[SourceConfig(name="hub", **src)], shard_rows=5)
    ledger = ingest(cfg, tmp_path / out)
    return ledger, records(tmp_path / out / "data"), read_table(tmp_path / out / "rejects").to_pylist()


def check(ledger, rows, rejects):
    assert (ledger.n_in, ledger.kept, dict(ledger.dropped)) == (12, 11, {"missing_field": 1})
    assert rejects[0]["location"].endswith("#5")
    assert rows[0]["id"] == record_id("hub", "r0")
    assert rows[1]["messages"] == [{"role": "user", "content": "Double 1."}, {"role": "assistant", "content": "2"}]
    assert rows[1]["annotations"] == [{"annotator_id": None, "rating": 4.0, "labels": []}]
    assert ledger.extra["sources"][0]["format"] == "alpaca"


def test_saved_dataset_dict_split_via_disk(tmp_path):
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS),
                               "test": datasets.Dataset.from_list(ROWS[:2])})
    dd.save_to_disk(str(tmp_path / "saved"))
    check(*run(tmp_path, "o", path=f"disk:{tmp_path / 'saved'}", annotation_map={"ratings": "score"}))
    ledger, _, _ = run(tmp_path, "o2", path=f"disk:{tmp_path / 'saved'}", split="test")
    assert ledger.n_in == 2
    with pytest.raises(IngestError, match="no split 'validation'"):
        run(tmp_path, "o3", path=f"disk:{tmp_path / 'saved'}", split="validation")
    with pytest.raises(IngestError, match="nowhere"):
        run(tmp_path, "o4", path=f"disk:{tmp_path / 'nowhere'}")


@pytest.mark.parametrize("streaming", [False, True])
def test_hub_loader_on_local_dataset_dir(tmp_path, streaming):
    d = tmp_path / "my_dataset" / "data"
    d.mkdir(parents=True)
    (d / "train-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    src = {"path": f"hf:{tmp_path / 'my_dataset'}", "split": "train", "streaming": streaming,
           "annotation_map": {"ratings": "score"}}
    first = run(tmp_path, "a", **src)
    check(*first)
    again = run(tmp_path, "b", **src)
    assert [r["id"] for r in again[1]] == [r["id"] for r in first[1]]
    assert again[0].extra["sources"][0]["digest"] == first[0].extra["sources"][0]["digest"]
    fp = source_fingerprint(SourceConfig(name="hub", **src))
    (d / "train-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[:3]))
    assert source_fingerprint(SourceConfig(name="hub", **src)) != fp


def test_hub_fingerprint_pins_revision():
    a = source_fingerprint(SourceConfig(name="h", path="hf:org/remote-name", revision="abc123"))
    b = source_fingerprint(SourceConfig(name="h", path="hf:org/remote-name", revision="def456"))
    assert a != b

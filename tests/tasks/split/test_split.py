import pyarrow as pa

from schemas.filters import SplitConfig
from schemas.record import RECORD_SCHEMA
from tasks.core.stage import ShardWriter, read_table
from tasks.split.stage import split_records


def write(tmp_path, ids):
    rows = [{"id": i, "source": "s", "messages": [{"role": "user", "content": i}], "annotations": [],
             "meta": "{}"} for i in ids]
    with ShardWriter(tmp_path / "in", RECORD_SCHEMA, shard_rows=50) as w:
        w.write(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA))
    return tmp_path / "in"


def test_split_is_complete_disjoint_and_stable_under_reordering(tmp_path):
    ids = [f"id-{i}" for i in range(400)]
    a = tmp_path / "a"
    b = tmp_path / "b"
    led = split_records(write(a, ids), SplitConfig(eval_fraction=0.2), a / "out")
    split_records(write(b, ids[::-1]), SplitConfig(eval_fraction=0.2), b / "out")
    train = set(read_table(a / "out/train")["id"].to_pylist())
    ev = set(read_table(a / "out/eval")["id"].to_pylist())
    assert train | ev == set(ids) and not train & ev
    assert 40 <= len(ev) <= 120  # about 20%
    assert set(read_table(b / "out/eval")["id"].to_pylist()) == ev
    led.check()
    assert led.extra == {"train": len(train), "eval": len(ev)}


def test_zero_eval_fraction_keeps_all_in_train(tmp_path):
    led = split_records(write(tmp_path, ["x", "y"]), SplitConfig(eval_fraction=0.0), tmp_path / "out")
    assert led.extra == {"train": 2, "eval": 0}

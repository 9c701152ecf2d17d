"""Exact and near dedup stages: what is dropped, what is kept, the map, the rejects, the ledger, the report."""
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tasks.dedup.lsh as dedup_lsh
from schemas.dedup import DedupConfig
from schemas.record import RECORD_SCHEMA
from tasks.core.stage import ShardWriter, StageOutput, read_table
from tasks.dedup.stage import exact_dedup, exact_dedup_task, near_dedup, near_dedup_task

VOCAB = [f"w{i}" for i in range(3000)]


def record(rid, prompt, response, ratings=(3.0,)):
    return {"id": rid, "source": "t", "meta": "{}",
            "messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": prompt},
                         {"role": "assistant", "content": response}],
            "annotations": [{"annotator_id": f"a{i}", "rating": r, "labels": []} for i, r in enumerate(ratings)]}


def write(tmp: Path, rows, shard_rows=50) -> Path:
    with ShardWriter(tmp / "in", RECORD_SCHEMA, shard_rows=shard_rows) as w:
        w.write(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA))
    return tmp / "in"


def words(rng, n=80):
    return list(rng.choice(VOCAB, n))


@pytest.fixture
def planted(tmp_path):
    """60 distinct records; 10 of them have a near copy (1 word of 80 changed, J~0.9) and 5 a far one (J~0.5)."""
    rng = np.random.default_rng(0)
    rows, near_copies = [], []
    for i in range(60):
        w = words(rng)
        rows.append(record(f"r{i:03d}", " ".join(w[:20]), " ".join(w[20:])))
        if i < 10:
            v = list(w)
            v[40] = "changed"
            rows.append(record(f"r{i:03d}-near", " ".join(v[:20]), " ".join(v[20:]), ratings=(1.0,)))
            near_copies.append(f"r{i:03d}-near")
        elif i < 15:
            v = list(w)
            for k in range(5, 80, 8):
                v[k] = f"x{k}"
            rows.append(record(f"r{i:03d}-far", " ".join(v[:20]), " ".join(v[20:])))
    return write(tmp_path, rows, shard_rows=17), near_copies, len(rows)


def test_near_dedup_drops_planted_near_copies_only(planted, tmp_path):
    in_dir, near_copies, n = planted
    ledger = near_dedup(in_dir, DedupConfig(unit_rows=100), tmp_path / "out")
    ledger.check()
    assert ledger.n_in == n and dict(ledger.dropped) == {"near_duplicate": 10}
    rejects = read_table(tmp_path / "out" / "rejects").to_pylist()
    assert sorted(r["id"] for r in rejects) == near_copies  # the originals are rated higher: they are kept
    for r in rejects:
        assert r["reject_stage"] == "near_dedup" and r["reject_reason"] == "near_duplicate"
        assert r["kept_id"] == r["id"].replace("-near", "") == r["cluster_id"]
    kept = read_table(tmp_path / "out" / "data")
    assert kept.num_rows == n - 10 and kept.schema.equals(RECORD_SCHEMA)
    dmap = pq.read_table(tmp_path / "out" / "dedup_map.parquet").to_pylist()
    assert len(dmap) == n and len({m["id"] for m in dmap}) == n
    by_id = {m["id"]: m for m in dmap}
    assert by_id["r000-near"]["is_duplicate"] and not by_id["r000-near"]["kept"]
    assert by_id["r000"]["cluster_id"] == "r000" and by_id["r000"]["cluster_size"] == 2
    assert by_id["r012"]["cluster_id"] == "r012" and by_id["r012-far"]["cluster_id"] == "r012-far"  # J~0.5: alone
    assert (tmp_path / "out" / "cluster_sizes.png").stat().st_size > 1000
    assert "duplicate clusters (2+ records): 10" in (tmp_path / "out" / "report.md").read_text()


def test_keep_rules_and_tie_break_by_id(tmp_path):
    rng = np.random.default_rng(1)
    w = words(rng, 60)
    base = " ".join(w)
    rows = [record("b", base[:100], base[100:], ratings=(5.0, 1.0)),            # mean 3.0
            record("c", base[:100], base[100:] + " tail", ratings=(4.0,)),      # mean 4.0, longest
            record("a", base[:100], base[100:], ratings=(None,)),               # no rating: lowest
            record("d", base[:100], base[100:], ratings=(4.0,))]                # ties c on score; c < d by id
    in_dir = write(tmp_path, rows)
    expect = {"best_rated": "c", "longest": "c", "first": "b"}
    for rule, winner in expect.items():
        near_dedup(in_dir, DedupConfig(keep=rule), tmp_path / rule)
        assert [r["id"] for r in read_table(tmp_path / rule / "data").to_pylist()] == [winner], rule
    rows[1] = record("c", base[:100], base[100:], ratings=(4.0,))  # now c and d tie on score and length
    near_dedup(write(tmp_path / "tie", rows), DedupConfig(keep="longest"), tmp_path / "tie_out")
    assert [r["id"] for r in read_table(tmp_path / "tie_out" / "data").to_pylist()] == ["a"]


def test_exact_dedup_normalizes_case_punctuation_and_spaces(tmp_path):
    rows = [record("1", "Hello, World!", "The answer is 42."), record("2", "hello world", "the  answer is 42"),
            record("3", "hello world", "the answer is 43"), record("4", "", ""), record("5", "", "")]
    ledger = exact_dedup(write(tmp_path, rows), DedupConfig(keep="first"), tmp_path / "out")
    assert dict(ledger.dropped) == {"exact_duplicate": 2}
    rej = {r["id"]: r["kept_id"] for r in read_table(tmp_path / "out" / "rejects").to_pylist()}
    assert rej == {"2": "1", "5": "4"}


def test_compared_text_choice(tmp_path):
    rows = [record("1", "same prompt here", "first answer entirely different words"),
            record("2", "same prompt here", "second reply with other tokens altogether")]
    in_dir = write(tmp_path, rows)
    assert dict(exact_dedup(in_dir, DedupConfig(text="prompt"), tmp_path / "p").dropped) == {"exact_duplicate": 1}
    assert exact_dedup(in_dir, DedupConfig(text="prompt_response"), tmp_path / "pr").kept == 2


def test_char_shingles_find_near_copies(tmp_path):
    text = "Deduplication with character shingles catches small edits like typos in short texts, too."
    rows = [record("1", text, ""), record("2", text.replace("typos", "typo"), ""), record("3", "unrelated", "")]
    ledger = near_dedup(write(tmp_path, rows), DedupConfig(shingle="char", ngram=5), tmp_path / "out")
    assert dict(ledger.dropped) == {"near_duplicate": 1}


def test_disabled_stage_passes_everything_through(planted, tmp_path):
    in_dir, _, n = planted
    ledger = near_dedup(in_dir, DedupConfig(near=False), tmp_path / "out")
    assert ledger.kept == ledger.n_in == n and not ledger.dropped
    assert read_table(tmp_path / "out" / "data").num_rows == n
    assert read_table(tmp_path / "out" / "rejects").num_rows == 0


def test_out_of_core_paths_and_workers_give_the_same_map(planted, tmp_path, monkeypatch):
    in_dir, _, _ = planted
    ledger = near_dedup(in_dir, DedupConfig(unit_rows=100), tmp_path / "one")
    # many partitions, unit groups of one unit each (several verify blocks), two worker processes
    monkeypatch.setattr(dedup_lsh, "group_budget", lambda plan: 1)
    near_dedup(in_dir, DedupConfig(unit_rows=100, partitions=3), tmp_path / "split")
    near_dedup(in_dir, DedupConfig(unit_rows=100, workers=2), tmp_path / "two")
    ref = pq.read_table(tmp_path / "one" / "dedup_map.parquet")
    assert pq.read_table(tmp_path / "split" / "dedup_map.parquet").equals(ref)
    assert pq.read_table(tmp_path / "two" / "dedup_map.parquet").equals(ref)
    assert ledger.to_dict()["dropped"] == {"near_duplicate": 10}


def test_large_row_groups_are_sliced_into_units_and_give_the_same_map(planted, tmp_path):
    """A file written with one big row group (pyarrow's default holds a million rows) is cut into units of
    at most unit_rows, read by streaming; the map is the one of small shards."""
    in_dir, _, n = planted
    near_dedup(in_dir, DedupConfig(unit_rows=100), tmp_path / "ref")
    whole = tmp_path / "whole"
    whole.mkdir()
    pq.write_table(read_table(in_dir), whole / "part-00000.parquet", row_group_size=n)
    units = dedup_lsh.plan_units([whole / "part-00000.parquet"], 7)
    assert max(u.rows for u in units) <= 7 and sum(u.rows for u in units) == n and units[1].sliced
    spans = dedup_lsh.plan_spans(units, workers=2)
    assert len(spans) == 4 and [u for s in spans for u in s] == units  # slices of one group stay together
    for workers in (1, 2):  # unit_rows below the config's floor of 100, to cut this small file (no validation)
        cfg = DedupConfig(workers=workers).model_copy(update={"unit_rows": 7})
        near_dedup(whole, cfg, tmp_path / f"sliced{workers}")
        assert pq.read_table(tmp_path / f"sliced{workers}" / "dedup_map.parquet").equals(
            pq.read_table(tmp_path / "ref" / "dedup_map.parquet"))


def test_slices_read_back_the_rows_of_their_range(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"x": np.arange(1000)}), path, row_group_size=1000)
    units = dedup_lsh.plan_units([path], 300)
    assert [(u.offset, u.rows) for u in units] == [(0, 300), (300, 300), (600, 300), (900, 100)]
    streamed = [t.column("x").to_pylist() for _, t in dedup_lsh.iter_unit_tables(units)]
    assert streamed == [list(range(u.offset, u.offset + u.rows)) for u in units]
    assert dedup_lsh.read_unit(units[2]).column("x").to_pylist() == list(range(600, 900))  # alone: skips


def test_bucket_members_groups_like_a_group_by():
    rng = np.random.default_rng(5)
    keys = rng.integers(0, 400, 2000).astype(np.uint64)
    docs = np.arange(2000, dtype=np.int64)
    members, sizes = dedup_lsh.bucket_members(keys, docs)
    got = sorted(tuple(sorted(g)) for g in np.split(members, np.cumsum(sizes)[:-1]))
    want = sorted(tuple(sorted(docs[keys == k])) for k in np.unique(keys) if (keys == k).sum() > 1)
    assert got == want and sizes.min() >= 2


def test_verify_matters_raw_lsh_is_the_peers_behaviour(tmp_path):
    rng = np.random.default_rng(3)
    w = words(rng, 200)
    v = list(w)
    for k in range(0, 200, 10):  # J ~ 0.6: a candidate sometimes, never a duplicate at 0.8
        v[k] = f"y{k}"
    rows = [record("1", " ".join(w), ""), record("2", " ".join(v), "")]
    in_dir = write(tmp_path, rows)
    cfg = dict(bands=64, rows=2, num_perm=128)  # a deliberately loose LSH: this pair is a candidate
    assert near_dedup(in_dir, DedupConfig(**cfg), tmp_path / "v").kept == 2
    assert near_dedup(in_dir, DedupConfig(**cfg, verify="none"), tmp_path / "n").kept == 1


def test_tasks_run_through_run_stage_and_reuse_output(planted, tmp_path):
    from schemas.pipeline import validate_config

    in_dir, _, n = planted
    cfg = validate_config({"workdir": str(tmp_path / "work"), "ingest": {"sources": [{"name": "t", "path": "x"}]}})
    up = StageOutput("ingest", "k0", in_dir.parent)
    (in_dir.parent / "data").symlink_to(in_dir)
    exact = exact_dedup_task.fn(up, cfg)
    near = near_dedup_task.fn(exact, cfg)
    assert exact.ledger.n_in == n and near.ledger.to_dict()["dropped"] == {"near_duplicate": 10}
    assert (near.path / "dedup_map.parquet").exists() and (near.path / "report.md").exists()
    assert near_dedup_task.fn(exact, cfg).path == near.path  # same inputs and config: reused
    cfg.dedup.threshold = 0.7
    assert near_dedup_task.fn(exact, cfg).key != near.key


@pytest.mark.parametrize("stage", [exact_dedup, near_dedup])
def test_an_empty_input_gives_an_empty_map_and_a_balanced_ledger(stage, tmp_path):
    in_dir = write(tmp_path, [])
    ledger = stage(in_dir, DedupConfig(), tmp_path / "out")
    ledger.check()
    assert ledger.n_in == ledger.kept == 0
    assert pq.read_table(tmp_path / "out" / "dedup_map.parquet").num_rows == 0
    assert read_table(tmp_path / "out" / "data").num_rows == 0

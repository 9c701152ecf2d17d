"""The ``peftpipe dedup`` command: inputs it reads, the map it writes, the errors it gives; the Prefect flow."""
import gzip
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.cli import main


def corpus(n=120, every=10, seed=0):
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(2000)]
    rows, dups = [], set()
    for i in range(n):
        words = [rng.choice(vocab) for _ in range(60)]
        rows.append({"doc": i, "body": " ".join(words), "extra": {"nested": [1, 2]}})
        if i % every == 0:
            words[30] = "EDITED"
            rows.append({"doc": f"{i}-copy", "body": " ".join(words)})
            dups.add(f"{i}-copy")
    return rows, dups


def read_map(path):
    return {r["id"]: r for r in pq.read_table(path).to_pylist()}


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "parquet"])
def test_dedup_command_reads_each_format(tmp_path, fmt, capsys):
    rows, dups = corpus()
    path = tmp_path / f"in.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist([{"doc": str(r["doc"]), "body": r["body"]} for r in rows]), path)
    else:
        opener = gzip.open if fmt.endswith(".gz") else open
        with opener(path, "wt") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
    code = main(["dedup", str(path), "--text-field", "body", "--id-field", "doc", "--threshold", "0.8",
                 "--out", str(tmp_path / "map.parquet"), "--workers", "1"])
    assert code == 0
    dmap = read_map(tmp_path / "map.parquet")
    assert pq.read_table(tmp_path / "map.parquet").column_names[:3] == ["id", "cluster_id", "is_duplicate"]
    assert len(dmap) == len(rows)
    assert {i for i, r in dmap.items() if r["is_duplicate"]} == dups
    assert dmap["0-copy"]["cluster_id"] == dmap["0"]["cluster_id"] == "0"  # --keep first: the original
    assert dmap["1"]["cluster_id"] == "1" and not dmap["1"]["is_duplicate"]  # alone, a cluster of its own
    assert "duplicates" in capsys.readouterr().out


def test_without_id_field_ids_are_row_numbers_and_report_is_written(tmp_path):
    rows, _ = corpus(n=30)
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["dedup", str(path), "--text-field", "body", "--threshold", "0.8", "--out",
                 str(tmp_path / "m.parquet"), "--workers", "1", "--report", str(tmp_path / "rep")]) == 0
    dmap = read_map(tmp_path / "m.parquet")
    assert list(dmap) == [str(i) for i in range(len(rows))]
    assert dmap["1"]["is_duplicate"] and dmap["1"]["cluster_id"] == "0"
    assert (tmp_path / "rep" / "report.md").exists() and (tmp_path / "rep" / "cluster_sizes.png").exists()


def test_bad_inputs_exit_2_with_a_clear_message(tmp_path, capsys):
    out = str(tmp_path / "m.parquet")
    assert main(["dedup", str(tmp_path / "missing.jsonl"), "--text-field", "t", "--out", out]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"t": "fine", "id": 1}\n{"t": broken\n')
    assert main(["dedup", str(bad), "--text-field", "t", "--id-field", "id", "--out", out]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err
    pq.write_table(pa.table({"other": ["x"]}), tmp_path / "p.parquet")
    assert main(["dedup", str(tmp_path / "p.parquet"), "--text-field", "t", "--out", out]) == 2
    assert "no column 't'" in capsys.readouterr().err
    assert main(["dedup", str(bad), "--text-field", "t", "--threshold", "1.5", "--out", out]) == 2


@pytest.mark.slow
def test_prefect_process_pool_runner_gives_the_same_map(tmp_path):
    from prefect.testing.utilities import prefect_test_harness

    rows, dups = corpus(n=60)
    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist([{"doc": str(r["doc"]), "body": r["body"]} for r in rows]), path)
    args = ["dedup", str(path), "--text-field", "body", "--id-field", "doc", "--set", "unit_rows=100"]
    assert main(args + ["--out", str(tmp_path / "local.parquet"), "--workers", "1"]) == 0
    with prefect_test_harness(server_startup_timeout=240):
        assert main(args + ["--out", str(tmp_path / "pp.parquet"), "--runner", "processes", "--workers", "2"]) == 0
    assert pq.read_table(tmp_path / "pp.parquet").equals(pq.read_table(tmp_path / "local.parquet"))
    assert {i for i, r in read_map(tmp_path / "pp.parquet").items() if r["is_duplicate"]} == dups


@pytest.mark.slow
def test_ray_runner_on_a_local_ray_cluster(tmp_path, ray_session):
    from prefect.testing.utilities import prefect_test_harness

    rows, dups = corpus(n=60)
    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist([{"doc": str(r["doc"]), "body": r["body"]} for r in rows]), path)
    with prefect_test_harness(server_startup_timeout=240):
        assert main(["dedup", str(path), "--text-field", "body", "--id-field", "doc", "--out",
                     str(tmp_path / "ray.parquet"), "--runner", "ray", "--workers", "2",
                     "--set", "unit_rows=100"]) == 0
    assert {i for i, r in read_map(tmp_path / "ray.parquet").items() if r["is_duplicate"]} == dups


def test_auto_runner_uses_prefect_when_a_server_is_configured(tmp_path, monkeypatch):
    from flows.cli_dedup import resolve_runner

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("PREFECT_PROFILE", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    assert resolve_runner("auto") == "local"  # no profile file at all
    (tmp_path / "profiles.toml").write_text(
        'active = "team"\n[profiles.team]\nPREFECT_API_URL = "http://127.0.0.1:4200/api"\n[profiles.solo]\n')
    assert resolve_runner("auto") == "processes"
    monkeypatch.setenv("PREFECT_PROFILE", "solo")
    assert resolve_runner("auto") == "local"
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert resolve_runner("auto") == "processes" and resolve_runner("local") == "local"

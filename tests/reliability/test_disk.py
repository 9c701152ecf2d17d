"""A full disk and a read-only output directory, for real: a small tmpfs mounted as the workdir (remounted
read-only, or filled up mid-run). The run must stop with a clear error and leave no corrupt output; once there
is room again a rerun finishes the curation with the same data as an uninterrupted run."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.reliability.harness import (
    assert_nothing_partial_looks_complete,
    cli_env,
    complete_stage_dirs,
    file_digests,
    start_run,
)


def mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return res.returncode == 0


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True, capture_output=True)


@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    if not mount_tmpfs(mnt, "1m"):
        pytest.skip("mounting a tmpfs needs root with CAP_SYS_ADMIN")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_read_only_workdir_fails_before_any_work(tmp_path, tmpfs):
    remount(tmpfs, "ro")
    run = start_run(tmp_path, tmpfs / "work", f"sqlite:///{tmp_path / 'mlruns.db'}")
    assert run.wait(timeout=300) == 3, run.tail()
    out = run.output()
    assert f"workdir {tmpfs / 'work'} is not writable" in out and "Read-only file system" in out
    assert "Traceback" not in out
    assert not (tmp_path / "mlruns.db").exists()  # stopped before MLflow or Prefect were touched


def test_unwritable_workdir_without_root(tmp_path):
    """The same check where the workdir's parent is a file (works for any user)."""
    (tmp_path / "blocker").write_text("")
    run = start_run(tmp_path, tmp_path / "blocker" / "work", f"sqlite:///{tmp_path / 'mlruns.db'}")
    assert run.wait(timeout=300) == 3, run.tail()
    assert "is not writable: Not a directory" in run.output() and "Traceback" not in run.output()


@pytest.mark.slow
def test_disk_full_mid_curation_then_rerun_with_room(tmp_path, tmpfs, concurrent_pair, prefect_api):
    workdir = tmpfs / "work"
    env = cli_env(tmp_path, PEFTPIPE_MIN_FREE_MB="1", PREFECT_API_URL=prefect_api)  # let preflight pass: the disk fills up during the run
    run = start_run(tmp_path, workdir, f"sqlite:///{tmp_path / 'mlruns.db'}", env=env, command="curate",
                    log_name="full.log")
    rc = run.wait(timeout=600)
    out = run.output()
    assert rc == 4, run.tail()
    assert f"peftpipe: cannot write to workdir {workdir}: No space left on device" in out, run.tail()
    done = complete_stage_dirs(workdir)
    assert "split" not in done  # 1 MiB cannot hold the curation (about 1.5 MiB)
    assert_nothing_partial_looks_complete(workdir)  # what is marked complete reads back whole

    remount(tmpfs, "size=200m")
    again = start_run(tmp_path, workdir, f"sqlite:///{tmp_path / 'mlruns.db'}", command="curate",
                      env=cli_env(tmp_path, PREFECT_API_URL=prefect_api), log_name="again.log")
    assert again.wait(timeout=600) == 0, again.tail()
    assert not list(workdir.rglob(".*.tmp-*"))  # the failed run removed its temporary output
    ours, clean = complete_stage_dirs(workdir), complete_stage_dirs(concurrent_pair.a.workdir)
    for stage in done:  # outputs finished before the disk filled were reused, not recomputed
        assert ours[stage] == done[stage]
    assert file_digests(ours["split"]) == file_digests(clean["split"])


def test_dedup_without_room_for_its_work_files_exits_4_before_any_work(tmp_path, tmpfs, monkeypatch, capsys):
    """`peftpipe dedup` estimates its work space from the Parquet metadata and stops at once when the disk of
    its work directory (TMPDIR) cannot hold it, instead of failing hours in; --out is left untouched."""
    import tempfile

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from flows.cli import main

    rng = np.random.default_rng(0)
    words = np.array([f"w{i}" for i in range(5000)])
    texts = [" ".join(rng.choice(words, 200)) for _ in range(3000)]  # ~3.5 MB of text against a 1 MB disk
    pq.write_table(pa.table({"id": [str(i) for i in range(3000)], "text": texts}), tmp_path / "in.parquet")
    monkeypatch.setattr(tempfile, "tempdir", str(tmpfs))
    out = tmp_path / "map.parquet"
    assert main(["dedup", str(tmp_path / "in.parquet"), "--text-field", "text", "--id-field", "id",
                 "--out", str(out), "--workers", "1"]) == 4
    err = capsys.readouterr().err
    assert "work space" in err and "MiB are free" in err and "TMPDIR" in err
    assert not out.exists() and not list(tmpfs.iterdir())  # no work files, no map

"""tests/conftest.py under CI=true: a skip for a missing browser, server or database fails the run, naming what
is missing; locally it stays a skip with its reason printed. Run as a real pytest session on a small file."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIPS = '''
import pytest

def test_browser():
    pytest.skip("no Chromium at /nowhere/chromium (.ci/setup-system.sh installs Debian's chromium)")

def test_database():
    pytest.importorskip("no_such_psycopg_module", reason="MLflow on PostgreSQL needs psycopg2-binary")

@pytest.mark.skipif(True, reason="needs CUDA")
def test_gpu():
    pass
'''


def run_pytest(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "test_skips.py").write_text(SKIPS)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(ROOT)
    if ci is not None:
        env["CI"] = ci
    # tests/conftest.py loaded as a plugin: the small file sits outside the repository.
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-q",
                           "-ra", str(tmp_path / "test_skips.py")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


def test_ci_fails_skips_for_missing_browser_or_database_and_names_them(tmp_path):
    out = run_pytest(tmp_path, "true")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "2 failed, 1 skipped" in out.stdout, out.stdout
    assert "CI=true" in out.stdout and "no Chromium at /nowhere/chromium" in out.stdout
    assert "psycopg2-binary" in out.stdout
    assert "SKIPPED [1] test_skips.py" in out.stdout and "needs CUDA" in out.stdout  # not a missing server


def test_locally_they_stay_skips_with_the_reason_printed(tmp_path):
    for ci in (None, "false"):
        out = run_pytest(tmp_path, ci)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "3 skipped" in out.stdout, out.stdout
        assert "no Chromium at /nowhere/chromium" in out.stdout and "psycopg2-binary" in out.stdout

"""The test-only pause point: a no-op unless PEFTPIPE_TEST_PAUSE names it; when named, it writes its note on
the N-th visit and blocks there until killed (a real child process)."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tasks.core.pause import PAUSE_ENV, PAUSE_FILE_ENV, pause_point
from tests.reliability.harness import wait_for

ROOT = Path(__file__).resolve().parents[3]


def test_a_point_not_named_returns_at_once(monkeypatch, tmp_path):
    monkeypatch.delenv(PAUSE_ENV, raising=False)
    pause_point("stage.ingest")
    monkeypatch.setenv(PAUSE_ENV, "stage.split")
    monkeypatch.setenv(PAUSE_FILE_ENV, str(tmp_path / "note.json"))
    pause_point("stage.ingest", tmp=tmp_path)
    assert not (tmp_path / "note.json").exists()


def test_the_named_point_blocks_on_its_nth_visit_after_writing_its_note(tmp_path):
    note = tmp_path / "note.json"
    script = "from tasks.core.pause import pause_point\nfor i in range(3):\n    print(i, flush=True)\n" \
             "    pause_point('train.checkpoint', step=i)\nprint('passed', flush=True)\n"
    env = {**os.environ, PAUSE_ENV: "train.checkpoint#2", PAUSE_FILE_ENV: str(note),
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert wait_for(note.exists, proc, timeout=120), proc.stdout.read()  # the note appears at the point
        got = json.loads(note.read_text())
        assert got == {"point": "train.checkpoint", "hit": 2, "pid": proc.pid, "step": "1"}
        assert proc.poll() is None  # still waiting there
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.stdout.read().split() == ["0", "1"]  # nothing after the pause ran

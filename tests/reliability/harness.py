"""Helpers of the fault suite: the real ``peftpipe`` CLI in its own process group, a short config, polling,
and checks that nothing partial looks complete."""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "sample.jsonl"
# Short but complete: every stage runs, training writes checkpoints at steps 2 and 4 of 6.
SHORT = ["train.max_steps=6", "train.save_every=2", "train.eval_every=3", "train.warmup_steps=1",
         "train.keep_checkpoints=3", "train.eval_max_batches=2", "tokenize.max_seq_len=128"]
# Credentials in the environment of the concurrency runs; none may show up in anything the runs write.
SECRET_ENV = {"HF_TOKEN": "hf_" + secrets.token_hex(17), "PEFTPIPE_TEST_API_TOKEN": secrets.token_hex(12),
              "AWS_SECRET_ACCESS_KEY": secrets.token_hex(20)}
RUN_TIMEOUT = 900  # one CLI run on 2 busy cores; a hang fails the test instead of the whole CI job


def cli_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect-home"), "PYTHONUNBUFFERED": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PEFTPIPE_MIN_FREE_MB": "16"}
    env.pop("PREFECT_API_URL", None)
    env.update(extra)
    return env


@dataclass
class Run:
    """One ``peftpipe run`` child: its workdir, MLflow URI, cwd (where MLflow puts artifacts) and log."""

    proc: subprocess.Popen
    workdir: Path
    tracking_uri: str
    cwd: Path
    log: Path

    def wait(self, timeout: float = RUN_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"peftpipe run timed out after {timeout}s:\n{self.tail()}") from None

    def kill(self) -> None:
        """kill -9 of the whole process group: the CLI, its task workers, nothing gets to clean up."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:]) if self.log.exists() else ""

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_run(tmp: Path, workdir: Path, tracking_uri: str, overrides: list[str] = (), env: dict | None = None,
              log_name: str = "run.log", command: str = "run", config: Path | None = None) -> Run:
    """Start ``peftpipe COMMAND`` (run; or sweep, with a sweep ``config``) on the bundled sample with the short
    config, in a new session (process group)."""
    cwd = tmp / "cwd"
    cwd.mkdir(parents=True, exist_ok=True)
    log = tmp / log_name
    config = config or ROOT / "configs" / "sample.yaml"
    args = [sys.executable, "-m", "flows.cli", command, "--config", str(config),
            "--set", f"workdir={workdir}", "--set", f"tracking.tracking_uri={tracking_uri}",
            "--set", f"ingest.sources.0.path={SAMPLE}"]
    for item in [*SHORT, *overrides]:
        args += ["--set", item]
    run_env = env if env is not None else cli_env(tmp)
    run_env["PYTHONPATH"] = str(ROOT) + os.pathsep + run_env.get("PYTHONPATH", "")
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, cwd=cwd, env=run_env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return Run(proc, workdir, tracking_uri, cwd, log)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = RUN_TIMEOUT, every: float = 0.005):
    """Poll ``predicate()`` until it returns something truthy; None if the process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        if proc.poll() is not None:
            return predicate() or None
        time.sleep(every)
    return None


def wait_for_pause(run: Run, note: Path, timeout: float = RUN_TIMEOUT) -> dict:
    """Wait until the run reaches the pause point named by its ``PEFTPIPE_TEST_PAUSE`` (tasks.core.pause writes
    ``note`` there and blocks); return the note. Fails if the run ends or hangs before reaching it."""
    try:
        found = wait_for(note.is_file, run.proc, timeout, every=0.1)  # the run waits there: no hurry
    except BaseException:  # the test's own timeout, Ctrl-C: leave no paused run behind
        run.kill()
        raise
    if not found:
        alive = run.proc.poll() is None
        run.kill()
        raise AssertionError(f"the run {'hung' if alive else 'ended'} before its pause point ({note.name}):\n"
                             f"{run.tail()}")
    return json.loads(note.read_text())


def file_digests(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory``, by relative path: byte-level identity of a stage output."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


TIMING_KEYS = ("seconds", "tokens_per_s")  # wall-clock figures in stats.json: the only run-dependent bytes


def _drop_timings(node):
    if isinstance(node, dict):
        return {k: _drop_timings(v) for k, v in node.items() if k not in TIMING_KEYS}
    return [_drop_timings(v) for v in node] if isinstance(node, list) else node


def stage_fingerprint(directory: Path) -> dict[str, str]:
    """Byte digests of a stage output's files; stats.json compared without its wall-clock timings."""
    digests = file_digests(directory)
    stats = json.loads((directory / "stats.json").read_text())
    digests["stats.json"] = hashlib.sha256(json.dumps(_drop_timings(stats), sort_keys=True).encode()).hexdigest()
    return digests


def complete_stage_dirs(workdir: Path) -> dict[str, Path]:
    return {p.parent.name: p for p in sorted((workdir / "stages").glob("*/*"))
            if not p.name.startswith(".") and (p / "_SUCCESS").is_file()}


def assert_nothing_partial_looks_complete(workdir: Path) -> None:
    """Every visible stage, model and checkpoint directory is complete; partial work only hides in dot-dirs."""
    import pyarrow.parquet as pq

    for p in (workdir / "stages").glob("*/*"):
        if p.name.startswith("."):
            continue
        assert (p / "_SUCCESS").is_file() and (p / "stats.json").is_file(), f"partial stage output {p}"
        ledger = json.loads((p / "stats.json").read_text())
        assert ledger["in"] == ledger["kept"] + sum(ledger["dropped"].values()), p
        for shard in p.rglob("*.parquet"):
            assert pq.ParquetFile(shard).metadata.num_rows >= 0  # a truncated file raises here
    for ckpt in workdir.glob("adapters/*/checkpoints/step-*"):
        assert (ckpt / "state.pt").is_file() and (ckpt / "meta.json").is_file(), f"partial checkpoint {ckpt}"
    for model in workdir.glob("models/*"):
        if not model.name.startswith("."):
            assert (model / "config.json").is_file() and (model / "model.safetensors").is_file(), model

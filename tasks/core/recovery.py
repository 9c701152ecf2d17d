"""Recovery and safety around a pipeline run: stale MLflow runs, preflight checks, secret scrubbing.

A ``kill -9`` runs no handler, so the MLflow run of a killed attempt stays RUNNING for ever. Each run is
tagged with its owner (host, pid, pid start time); the next start on that host marks RUNNING runs whose owner
is gone as FAILED. Preflight checks fail fast, with the URL or path in the message, before curation or any
GPU time: an unreachable MLflow or Prefect server (or one that is not MLflow), a tracking URI of an unknown
scheme, a workdir that cannot be written or has no room, and every path the config names
(``tasks.core.paths``: sources, decontamination sets, a local base model). It also removes the temporary
directories that killed runs left behind. ``mlflow_retry_env`` bounds how long a lost MLflow server is retried.
Secrets (tokens in the environment, passwords in URLs) are scrubbed from MLflow params and from log records.
"""
from __future__ import annotations

import base64
import errno
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from schemas.base import URL_PASSWORD, redact_url_passwords

OWNER_HOST_TAG = "peftpipe.host"
OWNER_PID_TAG = "peftpipe.pid"
OWNER_START_TAG = "peftpipe.pid_start"
FAILURE_TAG = "peftpipe.failure"
REDACTED = "***"


# --------------------------------------------------------------------------- stale runs of killed attempts

def process_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), which tells a reused pid from the owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    return stat.rsplit(")", 1)[1].split()[19]


def pid_alive(pid: int, start_time: str | None = None) -> bool:
    """True when ``pid`` runs and, if ``start_time`` is known, is the same process that was recorded."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        pass
    if start_time is not None:
        now = process_start_time(pid)
        if now is not None and now != start_time:
            return False
    return True


def owner_tags() -> dict[str, str]:
    """Tags that say which process owns an MLflow run, for :func:`mark_stale_runs_failed`."""
    pid = os.getpid()
    tags = {OWNER_HOST_TAG: socket.gethostname(), OWNER_PID_TAG: str(pid)}
    if (start := process_start_time(pid)) is not None:
        tags[OWNER_START_TAG] = start
    return tags


def mark_stale_runs_failed(tracking_uri: str, experiment: str) -> list[str]:
    """Mark RUNNING runs of ``experiment`` whose owner process on this host is gone as FAILED; return their ids.

    Runs owned by another host, or without owner tags, are left alone: their liveness cannot be told here.
    """
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    host = socket.gethostname()
    stale = []
    for run in client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'",
                                  max_results=1000):
        tags = run.data.tags
        if tags.get(OWNER_HOST_TAG) != host or not tags.get(OWNER_PID_TAG, "").isdigit():
            continue
        pid = int(tags[OWNER_PID_TAG])
        if pid == os.getpid() or pid_alive(pid, tags.get(OWNER_START_TAG)):
            continue
        client.set_tag(run.info.run_id, FAILURE_TAG, f"owner process {pid} on {host} ended without closing the "
                                                     "run (killed); marked FAILED at the next start")
        client.set_terminated(run.info.run_id, status="FAILED")
        stale.append(run.info.run_id)
    return stale


def sweep_stale_tmp(workdir: str | Path) -> list[Path]:
    """Remove ``.KEY.tmp-PID`` stage and checkpoint leftovers of dead processes under ``workdir``.

    They are never read (only renamed, complete outputs are), but they hold disk space. A live pid's
    directory is another run at work and is kept.
    """
    removed = []
    root = Path(workdir)
    if not root.is_dir():
        return removed
    for tmp in root.glob("**/.*.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if tmp.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


# --------------------------------------------------------------------------- preflight

class PreflightError(RuntimeError):
    """A server or directory the run needs is not usable; the message names it and says what to do."""


def _get(url: str, timeout: float, want_body: bool = False) -> Any:
    parts = urllib.parse.urlsplit(url)
    headers = {"User-Agent": "peftpipe-preflight"}
    if parts.username is not None:  # urllib does not take credentials from the URL: send them as Basic auth
        user_pw = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(user_pw.encode()).decode()
        url = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return (resp.status, resp.read(200)) if want_body else resp.status
    except urllib.error.HTTPError as exc:  # it answered: reachable, the status says the rest
        return (exc.code, b"") if want_body else exc.code


def check_http(url: str, what: str, hint: str, timeout: float = 5.0, attempts: int = 2,
               backoff: float = 1.0) -> None:
    """GET ``url`` up to ``attempts`` times; raise PreflightError naming the server and URL if none answers."""
    shown = redact_url(url)
    error: str = ""
    for attempt in range(attempts):
        try:
            status = _get(url, timeout)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            error = f"{type(reason).__name__}: {reason}" if not isinstance(reason, str) else reason
        else:
            if status in (401, 403):
                raise PreflightError(f"{what} at {shown} refused our credentials (HTTP {status}). {hint}")
            if status >= 500:
                error = f"HTTP {status}"
            else:
                return
        if attempt + 1 < attempts:
            time.sleep(backoff * 2**attempt)
    raise PreflightError(f"{what} at {shown} cannot be reached after {attempts} attempt(s) ({error}). {hint}")


# MLflow's tracking URI schemes (a database scheme may name its driver: postgresql+psycopg2).
TRACKING_SCHEMES = ("", "file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks",
                    "databricks-uc")
_DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


def check_tracking(tracking_uri: str, timeout: float = 5.0, attempts: int = 2) -> None:
    """The URI's scheme must be one MLflow takes; an http(s) MLflow server must answer its health check with
    200 (a server that is not MLflow answers 404); a database server must accept a connection; a SQLite or
    file store must be in a writable directory."""
    parsed = urllib.parse.urlparse(tracking_uri)
    scheme = parsed.scheme.split("+", 1)[0]
    hint = "Start it (`make ui`) or set tracking.tracking_uri, e.g. sqlite:///mlruns.db."
    if scheme not in TRACKING_SCHEMES:
        raise PreflightError(f"tracking.tracking_uri {redact_url(tracking_uri)!r} has the scheme {parsed.scheme!r}, "
                             f"which MLflow does not take (allowed: {', '.join(s for s in TRACKING_SCHEMES if s)}, "
                             "or a plain path).")
    if scheme in ("http", "https"):
        url = tracking_uri.rstrip("/") + "/health"
        check_http(url, "MLflow tracking server", hint, timeout, attempts)
        status, body = _get(url, timeout, want_body=True)
        if status != 200:
            raise PreflightError(f"{redact_url(tracking_uri)} answers, but is not an MLflow tracking server "
                                 f"(GET /health gave HTTP {status}; MLflow answers 200 OK). {hint}")
    elif scheme in _DB_PORTS:
        host, port = parsed.hostname or "localhost", parsed.port or _DB_PORTS[scheme]
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as exc:
            raise PreflightError(f"the tracking database at {host}:{port} ({scheme}) does not accept connections "
                                 f"({exc.strerror or exc}). {hint}") from None
    elif parsed.scheme == "sqlite":
        path = tracking_uri.split(":///", 1)[-1] if ":///" in tracking_uri else ""
        if path and path != ":memory:":
            check_writable_dir(Path(path).parent, "tracking.tracking_uri's SQLite directory")
    elif parsed.scheme in ("", "file"):
        check_writable_dir(Path(parsed.path or tracking_uri), "tracking.tracking_uri's directory")


def prepare_sqlite_tracking(tracking_uri: str, experiment: str) -> None:
    """Create the SQLite tracking database and the experiment under a file lock.

    Two runs starting at once on a new database would otherwise both run MLflow's schema migrations, or both
    create the experiment, and one of them fail.
    """
    import fcntl

    from mlflow import MlflowClient

    path = Path(tracking_uri.split(":///", 1)[1])
    with open(path.parent / f".{path.name}.init.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        client = MlflowClient(tracking_uri=tracking_uri)
        if client.get_experiment_by_name(experiment) is None:
            client.create_experiment(experiment)


def prefect_api_url() -> str | None:
    """The Prefect API the run will talk to; None means Prefect's temporary local server."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url) if url else None


def check_prefect(timeout: float = 5.0, attempts: int = 2) -> None:
    """When PREFECT_API_URL (or the active profile) names a server, it must answer its health check."""
    url = prefect_api_url()
    if url:
        check_http(url.rstrip("/") + "/health", "Prefect server (PREFECT_API_URL)",
                   "Start it (`make ui`), or unset PREFECT_API_URL to use a temporary local server.",
                   timeout, attempts)


def check_writable_dir(path: str | Path, what: str, min_free_mb: float = 0) -> None:
    """Create ``path`` if needed, write and fsync a probe file in it, and check the free space."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".peftpipe-probe-") as probe:
            probe.write(b"x" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        raise PreflightError(f"{what} {path} is not writable: {exc.strerror or exc}. "
                             "Choose another directory or fix its permissions.") from None
    free_mb = shutil.disk_usage(path).free / 2**20
    if free_mb < min_free_mb:
        raise PreflightError(f"{what} {path} has only {free_mb:.0f} MiB free; at least {min_free_mb:.0f} MiB "
                             "are needed (PEFTPIPE_MIN_FREE_MB).")


def mlflow_retry_env(lost_after_s: float) -> dict[str, str]:
    """MLflow HTTP client settings under which a lost server fails a run within ``lost_after_s``.

    A run makes at most two requests after the loss (the one that fails, then ending its run as FAILED), so
    each request gets half: 3 attempts of ``timeout`` seconds (fewer for a budget under ~18 s), with urllib3's
    backoff (0 s, then 2 x factor) and MLflow's jitter (up to 1 s per retry) between them. MLflow's default (7 retries, 120 s timeouts) takes
    minutes."""
    per_request = lost_after_s / 2
    factor, jitter = 1, 1.0
    for retries in (2, 1, 0):  # fewer retries when the budget cannot hold three attempts of 1 s
        backoff = factor * max(0, 2 ** retries - 2) + retries * jitter
        timeout = int((per_request - backoff) / (retries + 1))
        if timeout >= 1:
            break
    timeout = max(1, timeout)
    return {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries), "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(factor),
            "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": str(jitter), "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout)}


def worst_case_request_s(env: Mapping[str, str]) -> float:
    """The longest an MLflow request can take against a dead server under ``env`` (every attempt timing out)."""
    retries, factor = int(env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]), int(env["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"])
    jitter, timeout = float(env["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"]), int(env["MLFLOW_HTTP_REQUEST_TIMEOUT"])
    return (retries + 1) * timeout + factor * max(0, 2 ** retries - 2) + retries * jitter


def bound_mlflow_retries(lost_after_s: float) -> None:
    """Apply ``mlflow_retry_env`` where the environment does not set the variable already (the user's wins);
    MLflow reads them at request time."""
    for key, value in mlflow_retry_env(lost_after_s).items():
        os.environ.setdefault(key, value)


def preflight(cfg: Any, check_servers: bool = True) -> None:
    """Every check a run needs before it starts; raises one PreflightError listing all problems found.

    First it removes the temporary stage directories of dead runs (``sweep_stale_tmp``). Policy
    (environment): PEFTPIPE_PREFLIGHT_TIMEOUT seconds per request (5), PEFTPIPE_PREFLIGHT_ATTEMPTS (2, with
    1 s, 2 s... between them), PEFTPIPE_MIN_FREE_MB free space in the workdir (256).
    """
    from tasks.core import storage
    from tasks.core.paths import check_config_paths, check_store

    timeout = float(os.environ.get("PEFTPIPE_PREFLIGHT_TIMEOUT", "5"))
    attempts = max(1, int(os.environ.get("PEFTPIPE_PREFLIGHT_ATTEMPTS", "2")))
    min_free = float(os.environ.get("PEFTPIPE_MIN_FREE_MB", "256"))
    storage.configure(cfg.storage)
    remote = storage.is_remote(cfg.workdir)
    # A remote workdir's temporary directories are in the local scratch (tasks.core.storage)
    if removed := sweep_stale_tmp(storage.scratch_root() if remote else cfg.workdir):
        logging.getLogger(__name__).info("removed %d temporary directories of killed runs", len(removed))
    problems = check_config_paths(cfg, timeout)
    if remote and (problem := check_store(cfg.workdir, "workdir", timeout * 2)):
        problems.append(problem)
    local = storage.local_workdir(cfg.workdir)  # models, adapters, logs; a remote workdir's scratch
    checks = [lambda: check_writable_dir(local, "local scratch (storage.scratch_dir)" if remote else "workdir",
                                         min_free)]
    if check_servers:
        checks += [lambda: check_tracking(cfg.tracking.tracking_uri, timeout, attempts),
                   lambda: check_prefect(timeout, attempts)]
    for check in checks:
        try:
            check()
        except PreflightError as exc:
            problems.append(str(exc))
    if problems:
        raise PreflightError("preflight failed:\n  " + "\n  ".join(problems))
    uri = cfg.tracking.tracking_uri
    if check_servers and uri.startswith("sqlite:///") and not uri.endswith(":memory:"):
        prepare_sqlite_tracking(uri, cfg.tracking.experiment)


_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")  # pyarrow's message for a write cut short


def _inside(path: Any, root: str | Path) -> bool:
    if not path:
        return False
    return Path(os.path.abspath(path)).is_relative_to(Path(os.path.abspath(root)))


def is_disk_full(exc: BaseException) -> bool:
    """A write failed for lack of space: ENOSPC/EDQUOT, or pyarrow's errno-less short write."""
    return getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or (
        isinstance(exc, OSError) and _SHORT_WRITE.search(str(exc)) is not None)


_STORE_CLIENTS = ("s3fs", "botocore", "gcsfs", "adlfs")  # fsspec object-store clients and what they call


def describe_store_error(exc: BaseException, workdir: str) -> str | None:
    """For an object-store workdir: a clear message when the store itself refused or lost a request during
    the run (the bucket deleted, the credentials revoked or expired, the endpoint gone); None otherwise. Told
    apart from every other error by where it was raised: inside the store's client library."""
    from tasks.core.storage import endpoint_url

    if not isinstance(exc, (PermissionError, FileNotFoundError, ConnectionError, TimeoutError)):
        return None
    frames = traceback.extract_tb(exc.__traceback__)
    if not any(any(f"/{lib}/" in f.filename for lib in _STORE_CLIENTS) for f in frames):
        return None
    hint = "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY" if isinstance(exc, PermissionError) else \
        f"check the bucket and the endpoint ({endpoint_url() or 'AWS'})"
    return (f"the object store of workdir {redact_url_passwords(workdir)} failed: {type(exc).__name__}: "
            f"{redact_url_passwords(str(exc))[:300]}. Finished stages are complete and kept there; the "
            f"unfinished one has no _SUCCESS marker and is redone by the next run. Fix it ({hint}) and rerun.")


def describe_storage_error(exc: BaseException, workdir: str | Path) -> str | None:
    """A clear message for a write that failed because the workdir's disk is full, read-only or not ours,
    or because its object store failed (``describe_store_error``); None for any other error. pyarrow reports
    a full disk as 'N requested and M written', without an errno."""
    from tasks.core.storage import is_remote

    if is_remote(workdir):
        return describe_store_error(exc, str(workdir))
    err = getattr(exc, "errno", None)
    try:
        free_mb = shutil.disk_usage(workdir).free / 2**20
    except OSError:
        free_mb = None
    if is_disk_full(exc):
        room = f" ({free_mb:.1f} MiB free)" if free_mb is not None else ""
        problem = f"No space left on device{room}"
    elif err in (errno.EROFS, errno.EACCES, errno.EPERM) and _inside(getattr(exc, "filename", None), workdir):
        problem = f"{exc.strerror}: {exc.filename}"
    else:
        return None
    return (f"cannot write to workdir {workdir}: {problem}. Finished stages are complete and kept; the "
            "unfinished one left only a hidden temporary directory. Make room (or fix the directory) and "
            "rerun: finished work is reused.")


def describe_tracking_error(exc: BaseException, tracking_uri: str) -> str | None:
    """A clear message when the MLflow server went away mid-run (preflight saw it up); None otherwise."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    text = str(exc)
    host = urllib.parse.urlsplit(tracking_uri).netloc.rsplit("@", 1)[-1]
    lost = ("Connection refused", "Max retries exceeded", "Failed to establish", "timed out", "ConnectionError")
    if host not in text or not any(s in text for s in lost):
        return None
    return (f"the MLflow tracking server at {redact_url(tracking_uri)} became unreachable during the run "
            f"({type(exc).__name__}). Finished stages and training checkpoints are kept; rerun once it is back: "
            "finished work is reused, training resumes from its last checkpoint, and this attempt's run is "
            "marked FAILED.")


# --------------------------------------------------------------------------- secrets

# Exact names, then suffixes: any variable named like a credential is treated as one.
SECRET_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN", "MLFLOW_TRACKING_TOKEN",
                   "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                   "WANDB_API_KEY", "OPENAI_API_KEY", "DATABRICKS_TOKEN", "GITHUB_TOKEN")
SECRET_SUFFIXES = ("_TOKEN", "_SECRET", "_PASSWORD", "_API_KEY", "_SECRET_KEY")
_TOKEN_PATTERNS = (
    re.compile(r"\bhf_[A-Za-z0-9]{20,}"),            # Hugging Face
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"),     # GitHub
    re.compile(r"\bsk-[A-Za-z0-9_\-]{20,}"),         # OpenAI-style keys
    re.compile(r"\bpnu_[A-Za-z0-9]{20,}"),           # Prefect Cloud
)
_URL_PASSWORD = URL_PASSWORD  # one pattern for the log scrubber and the config's JSON form (schemas.base)


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of credential-like environment variables (long enough not to match ordinary words)."""
    env = os.environ if environ is None else environ
    names = {k for k in env if k in SECRET_ENV_VARS or k.upper().endswith(SECRET_SUFFIXES)}
    return sorted({env[k] for k in names if len(env[k]) >= 6}, key=len, reverse=True)


def redact_url(url: str) -> str:
    """``scheme://user:password@host`` -> ``scheme://user:***@host``."""
    return _URL_PASSWORD.sub(lambda m: m["head"] + REDACTED, url)


def scrub(text: str, extra: Iterable[str] = ()) -> str:
    """Replace secret env values, known token shapes and URL passwords in ``text`` by ``***``."""
    for value in [*secret_values(), *extra]:
        if value and value in text:
            text = text.replace(value, REDACTED)
    for pattern in _TOKEN_PATTERNS:
        text = pattern.sub(REDACTED, text)
    return redact_url(text)


def scrub_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Scrubbed copies of MLflow params (or tags); keys named like a credential lose their value entirely."""
    out = {}
    for key, value in params.items():
        leaf = key.rsplit(".", 1)[-1].lower()
        out[key] = REDACTED if leaf in ("token", "password", "api_key", "secret") and value not in ("", "None") \
            else scrub(str(value))
    return out


_installed = False


def install_log_scrubber() -> None:
    """Scrub every log record as it is created, so Prefect's API log handler and the console never see a
    secret (a record factory covers all loggers, including ones configured later)."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the logger's problem, not ours
            return record
        cleaned = scrub(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, ()
        return record

    logging.setLogRecordFactory(factory)
    _installed = True

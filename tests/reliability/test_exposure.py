"""Secrets and exposure: tokens in the environment never reach MLflow (params, tags, artifacts, database) nor
Prefect (its server database, where run logs live, and the console); servers listen on 127.0.0.1 only; no
pickle is loaded from user data; remote model code is off unless asked for."""
from __future__ import annotations

import ast
import pickle
import socket
import sqlite3
from pathlib import Path

import yaml
from mlflow import MlflowClient

from schemas.pipeline import PipelineConfig, load_config
from tests.reliability.harness import SECRET_ENV

ROOT = Path(__file__).resolve().parents[2]


def files_under(*roots: Path):
    for root in roots:
        if root.is_file():
            yield root
        elif root.is_dir():
            yield from (p for p in root.rglob("*") if p.is_file())


def test_tokens_never_written_by_the_runs(concurrent_pair, prefect_server):
    assert concurrent_pair.rc == (0, 0)
    tmp = concurrent_pair.a.log.parent
    scanned = 0
    # Everything the two runs wrote: workdir, MLflow database + artifacts, console logs, the Prefect server's
    # database (flow-run parameters and every log line the runs sent) and its own log.
    for path in files_under(tmp, prefect_server.home):
        data = path.read_bytes()
        scanned += len(data)
        for name, value in SECRET_ENV.items():
            assert value.encode() not in data, f"{name} leaked into {path}"
    assert scanned > 1_000_000  # the scan did read the outputs (databases, Parquet, adapters)

    client = MlflowClient(tracking_uri=concurrent_pair.a.tracking_uri)
    for run in client.search_runs([client.get_experiment_by_name("peftpipe").experiment_id]):
        shown = " ".join([*run.data.params.values(), *run.data.tags.values()])
        assert not any(v in shown for v in SECRET_ENV.values())
    with sqlite3.connect(prefect_server.home / "prefect.db") as db:
        n_logs = db.execute("select count(*) from log").fetchone()[0]
    assert n_logs > 10  # the runs' logs did reach the server that was scanned


def listening_hosts(port: int) -> set[str]:
    """Local addresses of sockets listening on ``port``, from /proc/net/tcp{,6} (state 0A = LISTEN)."""
    hosts = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if state == "0A" and int(p, 16) == port:
                raw = bytes.fromhex(addr)
                if family == socket.AF_INET:
                    raw = raw[::-1]
                else:  # four little-endian 32-bit words
                    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                hosts.add(socket.inet_ntop(family, raw))
    return hosts


def test_servers_listen_on_loopback_only(prefect_server):
    port = int(prefect_server.api_url.rsplit(":", 1)[1].split("/")[0])
    assert listening_hosts(port) == {"127.0.0.1"}
    # The commands `make ui` runs: both servers get --host 127.0.0.1.
    import scripts.servers as servers
    source = Path(servers.__file__).read_text()
    assert source.count('"--host", "127.0.0.1"') >= 2 and "0.0.0.0" not in source


UNSAFE_CALLS = {("pickle", "load"), ("pickle", "loads"), ("pd", "read_pickle"), ("pandas", "read_pickle"),
                ("joblib", "load"), ("dill", "load"), ("cloudpickle", "load"), ("cloudpickle", "loads")}
# Our own training checkpoints (RNG states need the full unpickler); never user data: see the report.
ALLOWED_TORCH_LOAD = {"tasks/train/checkpoint.py"}


def test_no_pickle_loading_in_the_code_paths():
    found = []
    for path in sorted((ROOT / "tasks").rglob("*.py")) + sorted((ROOT / "flows").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
            kwargs = {k.arg: k.value for k in node.keywords}
            if (owner, node.func.attr) in UNSAFE_CALLS:
                found.append(f"{rel}:{node.lineno} {owner}.{node.func.attr}")
            if owner == "torch" and node.func.attr == "load" and rel not in ALLOWED_TORCH_LOAD:
                safe = kwargs.get("weights_only")
                if not (isinstance(safe, ast.Constant) and safe.value is True):
                    found.append(f"{rel}:{node.lineno} torch.load without weights_only=True")
            if node.func.attr == "load" and isinstance(kwargs.get("allow_pickle"), ast.Constant) \
                    and kwargs["allow_pickle"].value is True:
                found.append(f"{rel}:{node.lineno} numpy.load(allow_pickle=True)")
    assert not found, found


def test_a_pickle_given_as_data_is_never_unpickled(tmp_path):
    """A malicious pickle named like data: ingesting it must not run its payload."""
    from tasks.ingest.stage import ingest

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (marker, "x"))

    blob = pickle.dumps(Payload())
    for name in ("data.pkl", "data.pickle", "data.jsonl", "data.parquet"):
        (tmp_path / name).write_bytes(blob)
    for name in ("data.pkl", "data.pickle", "data.jsonl", "data.parquet"):
        cfg = load_config(ROOT / "configs" / "sample.yaml", [f"ingest.sources.0.path={tmp_path / name}",
                                                              f"workdir={tmp_path / 'w'}"])
        out = tmp_path / f"out-{name}"
        out.mkdir()
        try:
            ingest(cfg.ingest, out)
        except Exception as exc:  # refusing the file is fine; running it is not
            assert "pwned" not in str(exc)
        assert not marker.exists(), f"{name}: the pickle payload ran"


def test_trust_remote_code_off_by_default_everywhere():
    assert PipelineConfig.model_fields["model"].default_factory().trust_remote_code is False
    for path in (ROOT / "configs").glob("*.yaml"):
        assert yaml.safe_load(path.read_text()).get("model", {}).get("trust_remote_code", False) is False, path
    for path in sorted((ROOT / "tasks").rglob("*.py")) + sorted((ROOT / "flows").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                assert not (isinstance(node.value, ast.Constant) and node.value.value is True), path

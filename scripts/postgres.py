"""A throwaway local PostgreSQL cluster on 127.0.0.1, for trying (and testing) the production profile.

    python scripts/postgres.py start [--dir .cache/pg] [--port 5432]   # prints the URL for servers.py --postgres
    python scripts/postgres.py stop  [--dir .cache/pg]

It uses Debian's ``postgresql`` binaries (``/usr/lib/postgresql/<version>/bin``), trusts local connections
(it listens on loopback only) and creates the ``prefect`` and ``mlflow`` databases. Run as root, it runs the
server as the ``postgres`` user, since PostgreSQL refuses to run as root. A real deployment points
``servers.py start --postgres postgresql://user:password@host:port`` at a managed server instead.
"""
from __future__ import annotations

import argparse
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

DATABASES = ("prefect", "mlflow")


class PostgresError(RuntimeError):
    """PostgreSQL binaries are missing or the cluster did not start."""


def find_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` (or wherever ``pg_ctl`` is on PATH)."""
    on_path = shutil.which("pg_ctl")
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if candidates:
        return candidates[-1].parent
    return Path(on_path).resolve().parent if on_path else None


def _as_postgres_user() -> list[str]:
    """A command prefix that drops root to the ``postgres`` user (a no-op for other users)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresError("running as root and there is no 'postgres' user to run PostgreSQL as") from None
    return ["runuser", "-u", "postgres", "--"]


def _run(cmd: list[str], timeout: float = 120) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise PostgresError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res.stdout


class LocalPostgres:
    """One cluster in ``directory``, listening on 127.0.0.1:``port``, superuser ``postgres`` without password."""

    def __init__(self, directory: Path, port: int, bin_dir: Path | None = None):
        self.directory, self.port = Path(directory), port
        self.bin_dir = bin_dir or find_bin_dir()
        if self.bin_dir is None:
            raise PostgresError("PostgreSQL binaries not found (apt-get install postgresql; see .ci/setup-system.sh)")
        self.data = self.directory / "data"

    @property
    def url(self) -> str:
        """The server's base URL; ``scripts/servers.py`` appends the database name."""
        return f"postgresql://postgres@127.0.0.1:{self.port}"

    def _own(self) -> None:
        # The server (as `postgres`) must own its data directory and reach it through every parent.
        self.directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
            os.chmod(self.directory, 0o755)

    def start(self, timeout: float = 60) -> LocalPostgres:
        self._own()
        sudo = _as_postgres_user()
        if not (self.data / "PG_VERSION").exists():
            _run([*sudo, str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--encoding=UTF8", "--no-sync"])
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.directory} "
                "-c fsync=off -c max_connections=200")
        _run([*sudo, str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.directory / "server.log"),
              "-o", opts, "-w", "-t", str(int(timeout)), "start"], timeout=timeout + 10)
        for name in DATABASES:
            self.create_database(name)
        return self

    def psql(self, sql: str, database: str = "postgres") -> str:
        return _run([str(self.bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                     "-d", database, "-At", "-c", sql])

    def create_database(self, name: str) -> None:
        if self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'").strip() != "1":
            self.psql(f'CREATE DATABASE "{name}"')

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            _run([*_as_postgres_user(), str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                  "stop"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("start", "stop"))
    parser.add_argument("--dir", default=".cache/pg", help="cluster directory (default: .cache/pg)")
    parser.add_argument("--port", type=int, default=5432)
    args = parser.parse_args(argv)
    try:
        pg = LocalPostgres(Path(args.dir).resolve(), args.port)
        if args.command == "start":
            pg.start()
            print(pg.url)
        else:
            pg.stop()
    except PostgresError as exc:
        print(f"postgres: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

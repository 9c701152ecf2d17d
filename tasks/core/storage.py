"""Where stage data lives at rest: a local directory or an fsspec URL (``s3://bucket/prefix``, ``gs://``, ...).

A workdir, a source or an eval set may be a URL, so that processes on other machines (Ray workers) read and
write the same stage directories. This module is the one place that turns a URL into a filesystem; stage
code goes through it, or through ``tasks.core.stage``'s readers, which do.

How a stage reaches an object store (``tasks.core.stage.run_stage``): its body still writes into a local
scratch directory, as it does for a local workdir, and the finished directory is uploaded file by file with
the completion marker last (``put_tree``). A stage's input from an object store is read from a local mirror,
downloaded once per machine and kept by its URL (``local_copy``): a stage URL names one content-addressed
key, so the mirror never goes stale. Training and evaluation read the tokenized rows from that mirror too;
model weights, checkpoints and adapters stay on local disk (``local_workdir``).

Credentials and the endpoint come from the standard environment: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY`` (or a profile), ``AWS_ENDPOINT_URL`` for an S3-compatible server such as MinIO,
or the config's ``storage.endpoint_url`` (``configure``). No secret is ever put in a message: URLs shown
are passed through ``redact_url_passwords``.
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
SCRATCH_ENV = "PEFTPIPE_SCRATCH"


def is_remote(location: str | os.PathLike) -> bool:
    """True for a URL of a non-local filesystem (``s3://...``); local paths and ``file://`` are not."""
    text = os.fspath(location)
    return "://" in text and not text.startswith("file://")


def configure(storage_cfg: Any) -> None:
    """Apply the config's ``storage`` section to this process and the processes it starts (process pools,
    torchrun): ``endpoint_url`` is exported as ``AWS_ENDPOINT_URL``, the variable every AWS SDK reads, and
    ``scratch_dir`` as ``PEFTPIPE_SCRATCH``. Ray workers on other machines need both in their own environment
    (a Ray ``runtime_env``), and the AWS credentials too."""
    if storage_cfg.endpoint_url:
        os.environ["AWS_ENDPOINT_URL"] = storage_cfg.endpoint_url
    if storage_cfg.scratch_dir:
        os.environ[SCRATCH_ENV] = os.path.abspath(os.path.expanduser(storage_cfg.scratch_dir))


def endpoint_url() -> str | None:
    """The S3 endpoint in use: ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``; None for AWS itself."""
    return next((os.environ[k] for k in ENDPOINT_ENV if os.environ.get(k)), None)


def _options(protocol: str) -> dict[str, Any]:
    # Passed explicitly: older botocore releases ignore AWS_ENDPOINT_URL, and fsspec caches one instance
    # per set of options, so a changed endpoint gets a new client rather than the old one.
    if protocol in ("s3", "s3a") and (endpoint := endpoint_url()):
        return {"endpoint_url": endpoint}
    return {}


def filesystem(location: str | os.PathLike) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) of a local path or URL. fsspec keeps one instance per protocol and
    options, so this is cheap to call per file."""
    import fsspec

    text = os.fspath(location)
    protocol = text.split("://", 1)[0] if "://" in text else "file"
    return fsspec.core.url_to_fs(text, **_options(protocol))


def join(location: str | os.PathLike, *parts: str) -> str:
    """``location/part/...``; a URL keeps its scheme (``os.path.join`` would do for local paths only)."""
    text = os.fspath(location)
    return posixpath.join(text, *parts) if is_remote(text) else os.path.join(text, *parts)


def exists(location: str | os.PathLike) -> bool:
    fs, path = filesystem(location)
    fs.invalidate_cache(posixpath.dirname(path))  # another process may have written it since we last listed
    return fs.exists(path)


def isfile(location: str | os.PathLike) -> bool:
    fs, path = filesystem(location)
    fs.invalidate_cache(posixpath.dirname(path))
    return fs.isfile(path)


def _url(fs: Any, path: str) -> str:
    return fs.unstrip_protocol(path) if fs.protocol not in ("file", ("file", "local")) else path


def list_files(location: str | os.PathLike, suffix: str = "") -> list[str]:
    """The files directly under a directory (URLs for a URL, paths for a path), sorted; [] if it is absent."""
    if not is_remote(location):
        root = Path(location)
        return sorted(str(p) for p in root.glob(f"*{suffix}") if p.is_file()) if root.is_dir() else []
    fs, path = filesystem(location)
    fs.invalidate_cache(path)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
    return sorted(_url(fs, e["name"]) for e in entries if e["type"] == "file" and e["name"].endswith(suffix))


def open_file(location: str | os.PathLike, mode: str = "rb", **kwargs: Any) -> IO:
    fs, path = filesystem(location)
    return fs.open(path, mode, **kwargs)


def read_bytes(location: str | os.PathLike) -> bytes:
    fs, path = filesystem(location)
    return fs.cat_file(path)


def read_text(location: str | os.PathLike) -> str:
    return read_bytes(location).decode()


def write_bytes(location: str | os.PathLike, data: bytes) -> None:
    """Write a whole file so that a reader sees the old content or the new, never a part.

    Locally: a temporary sibling, then ``os.replace`` (atomic on POSIX). On S3 one PUT is already atomic per
    object: a reader gets the previous object or the whole new one, and since 2020 a read after a write sees
    it (strong read-after-write and list consistency). What S3 does not give is a rename: a "move" is a copy
    then a delete, object by object, so a directory can never appear at once. Hence ``put_tree``'s marker."""
    text = os.fspath(location)
    if not is_remote(text):
        tmp = f"{text}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        Path(tmp).parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, text)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return
    fs, path = filesystem(text)
    fs.pipe_file(path, data)


def put_tree(local_dir: Path, location: str, last: str | None = None) -> None:
    """Upload every file under ``local_dir`` to ``location``, the file named ``last`` (a completion marker)
    after all the others, so a reader that checks the marker never sees a partial directory.

    Objects already under ``location`` that the upload does not replace are removed first (a killed run's
    leftovers, which no reader trusts without the marker). Files this upload writes are never deleted: a
    concurrent run of the same key writes the same names with the same bytes (outputs are content-addressed
    and deterministic), so the two cannot take each other's files away."""
    fs, root = filesystem(location)
    local_dir = Path(local_dir)
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    names = {p.relative_to(local_dir).as_posix() for p in files}
    try:
        existing = fs.find(root)
    except FileNotFoundError:
        existing = []
    stale = [p for p in existing if posixpath.relpath(p, root) not in names]
    if stale:
        fs.rm(stale)
    target = lambda p: posixpath.join(root, p.relative_to(local_dir).as_posix())  # noqa: E731
    for batch in ([p for p in files if p.name != last], [p for p in files if p.name == last]):
        if batch:  # one call per batch: s3fs sends its files concurrently
            fs.put([str(p) for p in batch], [target(p) for p in batch])
    fs.invalidate_cache(root)


def arrow_filesystem(location: str | os.PathLike) -> tuple[Any, str]:
    """(pyarrow filesystem, path) for ``pyarrow.parquet`` readers and writers of a path or URL: fsspec's
    filesystem wrapped by pyarrow's ``FSSpecHandler``, so the same endpoint and credentials apply."""
    from pyarrow.fs import FSSpecHandler, LocalFileSystem, PyFileSystem

    if not is_remote(location):
        return LocalFileSystem(), os.fspath(location)
    fs, path = filesystem(location)
    return PyFileSystem(FSSpecHandler(fs)), path


# ----------------------------------------------------------------------------------- local scratch and mirror

def scratch_root() -> Path:
    """Local disk for work on a remote workdir: stage bodies' temporary directories, mirrors of remote stage
    outputs, models and adapters. ``PEFTPIPE_SCRATCH``, else a folder in the system's temporary directory."""
    root = os.environ.get(SCRATCH_ENV) or os.path.join(tempfile.gettempdir(), f"peftpipe-scratch-{os.getuid()}")
    return Path(root)


def local_workdir(workdir: str) -> Path:
    """The local directory for what stays on this machine (models, adapters, checkpoints, logs): the workdir
    itself when it is local; for a URL, a folder of the scratch named after it."""
    if not is_remote(workdir):
        return Path(workdir)
    name = hashlib.sha256(workdir.encode()).hexdigest()[:12]
    return scratch_root() / "workdirs" / name


def with_local_workdir(cfg: Any) -> Any:
    """A pipeline config whose ``workdir`` is ``local_workdir(cfg.workdir)``: for the steps that keep their
    files on local disk (the base model, training, the sweep's report); the config itself when local."""
    if not is_remote(cfg.workdir):
        return cfg
    return cfg.model_copy(update={"workdir": str(local_workdir(cfg.workdir))})


def _mirror_path(location: str) -> Path:
    digest = hashlib.sha256(location.encode()).hexdigest()[:16]
    return scratch_root() / "mirror" / f"{posixpath.basename(location.rstrip('/'))}-{digest}"


MIRRORED = ".mirrored"


def local_copy(location: str | os.PathLike, seed: Path | None = None) -> Path:
    """A local directory holding the files of a remote stage directory (the path itself when local).

    Downloaded once per machine into the scratch, under a temporary name then renamed into place, so a
    killed download is never taken for a copy. ``seed``, a local directory with the same files (the one just
    uploaded), is moved in instead of downloading them again. Only for stage directories, whose URL names one
    content-addressed output that never changes once complete."""
    text = os.fspath(location)
    if not is_remote(text):
        return Path(text)
    final = _mirror_path(text)
    if (final / MIRRORED).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    if seed is not None:
        os.replace(seed, tmp)
    else:
        fs, root = filesystem(text)
        fs.invalidate_cache(root)
        tmp.mkdir()
        remote = fs.find(root)
        local = [tmp / posixpath.relpath(r, root) for r in remote]
        for p in local:
            p.parent.mkdir(parents=True, exist_ok=True)
        if remote:
            fs.get(remote, [str(p) for p in local])  # concurrently, as put_tree
    (tmp / MIRRORED).write_text(text + "\n")
    try:
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except OSError:  # another process put its copy in place in between: same files
        if not (final / MIRRORED).is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


@contextmanager
def local_scratch(name: str) -> Iterator[Path]:
    """A fresh local temporary directory ``.NAME.tmp-PID`` in the scratch (swept by preflight once its
    process is dead), removed on exit unless it was moved away."""
    root = scratch_root() / "stages"
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def file_version(location: str | os.PathLike) -> tuple[int, int] | None:
    """(size, version) of a file, or None if there is none: locally its mtime in ns, on an object store a
    number taken from its ETag (the content hash S3 keeps), so a cache key from it is the same on every
    machine and changes when the object does."""
    if not is_remote(location):
        path = Path(location)
        if not path.is_file():
            return None
        st = path.stat()
        return st.st_size, st.st_mtime_ns
    fs, path = filesystem(location)
    fs.invalidate_cache(posixpath.dirname(path))
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return None
    if info.get("type") != "file":
        return None
    tag = str(info.get("ETag") or info.get("etag") or info.get("LastModified") or "")
    return int(info.get("size") or 0), int(hashlib.sha256(tag.encode()).hexdigest()[:15], 16)


def local_file(location: str | os.PathLike) -> Path:
    """A local path with a file's bytes: the path itself when local; for a URL, a copy in the scratch,
    fetched again when the object's version changes. For inputs a config names (eval sets, decontamination
    sources); a missing remote file gives a path that does not exist, so callers' own checks report it."""
    if not is_remote(location):
        return Path(location)
    text = os.fspath(location)
    version = file_version(text)
    name = posixpath.basename(text.rstrip("/")) or "file"
    if version is None:
        return scratch_root() / "files" / "missing" / name
    key = hashlib.sha256(f"{text}\0{version}".encode()).hexdigest()[:16]
    final = scratch_root() / "files" / key / name  # the name keeps its suffix: readers go by it
    if final.is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    fs, path = filesystem(text)
    tmp = final.parent / f".{name}.tmp-{os.getpid()}"
    try:
        fs.get_file(path, str(tmp))
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final

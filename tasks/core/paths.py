"""Preflight of every path a config names: found (or reachable) before any work starts, or one clear problem.

Checked: each ingest source (a local file, glob or directory; ``disk:PATH``; ``hf:NAME`` from the hub or
its local cache; an fsspec URL, whose package must be installed and whose server must answer), each
decontamination set of the filter chain, and a base model given as a local path (or, offline, a hub id that
is not in the local cache). A remote check runs with a timeout, so a server that never answers cannot hang
the start. Each problem names the config key. Only cheap existence checks: ingest itself still reads every
file and quarantines what it cannot read.
"""
from __future__ import annotations

import glob
import os
import posixpath
import threading
import urllib.error
import urllib.request
import uuid
from typing import Any

from schemas.base import redact_url_passwords
from tasks.core import storage


def _timed(fn: Any, timeout: float) -> tuple[bool, Any]:
    """Run ``fn()`` in a daemon thread; (finished, result or exception)."""
    box: list[Any] = []

    def target() -> None:
        try:
            box.append((True, fn()))
        except Exception as exc:  # noqa: BLE001 - reported as the problem
            box.append((False, exc))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if not box:
        return False, TimeoutError(f"no answer within {timeout:g} s")
    return True, box[0][1]


def _local(key: str, path: str) -> str | None:
    path = os.path.expanduser(path)
    if any(c in path for c in "*?["):
        return None if glob.glob(path, recursive=True) else f"{key}: {path} matches no files"
    if not os.path.lexists(path):
        return f"{key}: {path} does not exist"
    return None


def _url(key: str, url: str, timeout: float) -> str | None:
    if url.startswith(("http://", "https://")):
        def head() -> int:
            req = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "peftpipe-preflight"})
            try:
                with urllib.request.urlopen(req, timeout=timeout) as resp:
                    return resp.status
            except urllib.error.HTTPError as exc:
                return exc.code
        done, status = _timed(head, timeout + 1)
        if isinstance(status, BaseException) or not done:
            return f"{key}: {url} cannot be reached ({type(status).__name__}: {status})"
        if status == 405:  # HEAD not allowed: it answered, so it is reachable
            return None
        return None if status < 400 else f"{key}: {url} answers HTTP {status}"
    try:
        fs, root = storage.filesystem(url)
    except ImportError as exc:  # s3:// without s3fs, gs:// without gcsfs, ...
        return f"{key}: {url} needs a package that is not installed: {exc}"
    except Exception as exc:  # noqa: BLE001 - an unknown protocol, bad credentials, ...
        return f"{key}: {url} cannot be opened ({type(exc).__name__}: {exc})"
    fs.invalidate_cache()
    done, found = _timed(lambda: fs.glob(root) if any(c in root for c in "*?[") else fs.exists(root), timeout)
    if not done or isinstance(found, BaseException):
        return f"{key}: {url} cannot be reached ({type(found).__name__}: {found})"
    return None if found else f"{key}: {url} does not exist"


def _hub_dataset(key: str, src: Any, timeout: float) -> str | None:
    name = src.path[len("hf:"):]
    if os.path.isdir(name):  # a local dataset folder, read by datasets.load_dataset
        return None

    def builder() -> Any:
        import datasets
        return datasets.load_dataset_builder(name, src.subset, revision=src.revision)
    offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE")
    done, result = _timed(builder, max(timeout * 6, 30))
    if not done or isinstance(result, BaseException):
        why = "offline (HF_HUB_OFFLINE) and not in the local cache" if offline else \
            f"{type(result).__name__}: {str(result)[:200]}"
        return f"{key}: hub dataset {name!r} cannot be loaded ({why})"
    return None


def _source(key: str, src: Any, timeout: float) -> str | None:
    path = src.path
    if path.startswith("hf:"):
        return _hub_dataset(key, src, timeout)
    if path.startswith("disk:"):
        target = path[len("disk:"):]
        return None if os.path.isdir(target) else f"{key}: no saved dataset folder at {target}"
    if "://" in path and not path.startswith("file://"):
        return _url(key, path, timeout)
    return _local(key, path.removeprefix("file://"))


def _model(cfg: Any) -> str | None:
    name = cfg.model.name_or_path
    if name == "tiny-llama":
        return None
    if name.startswith(("/", "./", "../", "~")) or os.path.isdir(name):
        return None if os.path.isdir(os.path.expanduser(name)) else \
            f"model.name_or_path: {name} is not a directory (a local model path must hold config.json)"
    if os.environ.get("HF_HUB_OFFLINE"):
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        if not isinstance(try_to_load_from_cache(name, "config.json", revision=cfg.model.revision), str):
            return f"model.name_or_path: {name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
    return None


def config_paths(cfg: Any) -> list[tuple[str, Any]]:
    """(config key, source config or path) of every input path the config names."""
    named: list[tuple[str, Any]] = [(f"ingest.sources[{i}] ({s.name}).path", s)
                                    for i, s in enumerate(cfg.ingest.sources)]
    for i, spec in enumerate(cfg.filters.filters):
        if spec.name == "decontaminate":
            for name, path in (spec.params.get("sources") or {}).items():
                named.append((f"filters.filters[{i}] (decontaminate).params.sources.{name}", path))
    for i, eval_set in enumerate(cfg.evaluate.eval_sets):
        named.append((f"evaluate.eval_sets[{i}] ({eval_set.name}).path", eval_set.path))
    return named


def check_config_paths(cfg: Any, timeout: float = 5.0) -> list[str]:
    """One problem line per config path that is missing or unreachable (an empty list when all are fine)."""
    problems = []
    for key, target in config_paths(cfg):
        if isinstance(target, str):
            problem = _url(key, target, timeout) if "://" in target else _local(key, target)
        else:
            problem = _source(key, target, timeout)
        if problem:
            problems.append(problem)
    if problem := _model(cfg):
        problems.append(problem)
    return problems


def check_store(location: str, what: str, timeout: float = 10.0) -> str | None:
    """None when ``location`` can be written (a probe object is written and deleted), else one line naming
    what is wrong: the package to install, a bucket that does not exist, credentials refused, no answer."""
    shown = redact_url_passwords(location)
    try:
        fs, root = storage.filesystem(location)
    except ImportError as exc:
        return f"{what} {shown} needs a package that is not installed ({exc}); pip install s3fs"
    except Exception as exc:  # noqa: BLE001 - an unknown protocol, a malformed URL
        return f"{what} {shown} cannot be opened ({type(exc).__name__}: {redact_url_passwords(str(exc))})"
    bucket = root.split("/", 1)[0]
    probe = posixpath.join(root, f".peftpipe-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}")

    def write_probe() -> None:
        # A write first: s3fs's exists() answers False, not an error, to a refused signature.
        try:
            fs.pipe_file(probe, b"x")
        except FileNotFoundError:
            raise FileNotFoundError(f"bucket {bucket!r} does not exist") from None
        fs.rm_file(probe)

    done, result = _timed(write_probe, timeout)
    if done and not isinstance(result, BaseException):
        return None
    if not done:
        return f"{what} {shown}: the object store did not answer within {timeout:g} s (endpoint: " \
               f"{storage.endpoint_url() or 'AWS default'}; AWS_ENDPOINT_URL or storage.endpoint_url)"
    if isinstance(result, PermissionError):
        why = "access denied: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket's policy"
    elif isinstance(result, FileNotFoundError):
        why = f"{result}; create it first"
    else:
        why = f"{type(result).__name__}: {redact_url_passwords(str(result))[:300]}"
    return f"{what} {shown} cannot be written ({why})"

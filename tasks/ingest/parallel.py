"""Big JSON-lines files in parallel: split at line starts, convert the chunks in worker processes, reconcile.

Each worker converts one byte range into its own part (shards, quarantine, id keys) exactly as the in-process
path would, with line numbers counted from the chunk start. The parent hashes the file meanwhile (the SHA-256
of its bytes, as in-process: the file's entry among the source's per-file digests), then ``reconcile`` makes
the result identical to a sequential run: it shifts line numbers by the lines of earlier chunks, moves rows
whose id already appeared earlier (in the same part or an earlier one) to the quarantine as ``duplicate_id``,
and renumbers the ids of id-less rows whose content appeared in an earlier part. Only the parts that need a
change are rewritten, one shard at a time. In-process ingest runs ``reconcile`` too, for the duplicate ids.
"""
from __future__ import annotations

import io
import json
import multiprocessing
import os
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.ingest import IngestConfig, SourceConfig
from schemas.record import QUARANTINE_SCHEMA
from tasks.core.handoff import read_handoff, write_handoff
from tasks.core.shards import Mapper
from tasks.core.stage import shard_paths
from tasks.ingest.convert import PartResult, RowConverter, content_record_id
from tasks.ingest.listing import COMPRESSIONS
from tasks.ingest.readers import BLOCK_BYTES, NoHash, SourceStats, file_kind, json_layout, read_json_file


def can_split(fs: Any, path: str, cfg: IngestConfig, src: SourceConfig) -> bool:
    """Only plain local JSON-lines files, big enough to be worth a process pool."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if (cfg.workers == 1 or src.limit is not None or protocol not in ("file", "local")
            or file_kind(path) != "json" or path.lower().endswith(COMPRESSIONS)
            or os.path.getsize(path) < cfg.parallel_min_bytes):
        return False
    with open(path, "rb") as f:
        return json_layout(f.read(1 << 16), path) == "lines"


def split_points(path: str, n: int) -> list[int]:
    """n+1 offsets, each at the start of a line, cutting the file into about equal ranges."""
    size = os.path.getsize(path)
    points = [0]
    with open(path, "rb") as f:
        for i in range(1, n):
            at = max(size * i // n, points[-1])
            f.seek(at)
            if at > 0:
                f.seek(at - 1)
                while (chunk := f.read(1 << 16)) and (nl := chunk.find(b"\n")) < 0:
                    pass
                at = f.tell() - len(chunk) + nl + 1 if chunk else size
            if at < size and at > points[-1]:
                points.append(at)
    return points + [size]


def convert_chunk(src_json: dict, cfg_json: dict, path: str, start: int, end: int, prefix: str, out: str,
                  preset: str | None) -> PartResult:
    """Worker: convert the lines in [start, end) of a file into part ``prefix``."""
    src, cfg = SourceConfig.model_validate(src_json), IngestConfig.model_validate(cfg_json)
    stats = SourceStats(hasher=NoHash())
    conv = RowConverter(src, cfg, Path(out), prefix, preset)
    conv.begin_file(preset)
    with open(path, "rb", buffering=0) as raw:
        raw.seek(start)
        for row in read_json_file(io.BufferedReader(raw, BLOCK_BYTES), path, stats, cfg.max_record_bytes,
                                  length=end - start):
            conv.add(row)
    conv.end_file()
    result = conv.close()
    result.n_lines = stats.lines
    return result


def convert_chunk_to_file(job: tuple) -> str:
    """Runner worker: convert one byte range (``convert_chunk``'s arguments); its PartResult, which holds a key
    per kept row, goes to a file in the stage directory rather than through the task runner."""
    part = convert_chunk(*job)
    target = Path(job[6]) / "_parts" / f"{part.prefix}.pkl"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_handoff(part, target)
    return str(target)


def _hash_file(path: str, stats: SourceStats) -> None:
    with open(path, "rb") as f:
        while block := f.read(BLOCK_BYTES):
            stats.hasher.update(block)
            stats.bytes_read += len(block)


def _on_runner(jobs: list[tuple], path: str, stats: SourceStats, mapper: Mapper) -> list[PartResult]:
    """The byte ranges as the runner's tasks while this process hashes the file in a thread."""
    hashing = threading.Thread(target=_hash_file, args=(path, stats), name="ingest-hash")
    hashing.start()
    try:
        files = mapper(convert_chunk_to_file, jobs)
    finally:
        hashing.join()
    parts = []
    for f in files:
        parts.append(read_handoff(Path(f)))
        Path(f).unlink()
    if files:
        Path(files[0]).parent.rmdir()  # the stage's output holds data/ and rejects/ only
    return parts


def convert_split(src: SourceConfig, cfg: IngestConfig, path: str, out: Path, prefix: str, preset: str | None,
                  stats: SourceStats, mapper: Mapper | None = None) -> list[PartResult]:
    """Convert one big file with a process pool (or ``mapper``'s task runner) while this process hashes it;
    parts in file order. If the file cannot be read to its end, every shard of it is removed before the
    error goes up. The byte ranges depend on ``ingest.workers`` only, never on who converts them."""
    workers = cfg.workers or os.cpu_count() or 1
    points = split_points(path, workers)
    jobs = [(src.model_dump(), cfg.model_dump(), path, a, b, f"{prefix}-{i:05d}", str(out), preset)
            for i, (a, b) in enumerate(zip(points, points[1:], strict=False))]
    try:
        if mapper is not None:
            parts = _on_runner(jobs, path, stats, mapper)
        else:
            # spawn, not fork: the parent may run Prefect or MLflow threads that a fork would copy mid-lock.
            with ProcessPoolExecutor(len(jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = [pool.submit(convert_chunk, *job) for job in jobs]
                try:
                    _hash_file(path, stats)
                    parts = [fut.result() for fut in futures]
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    pool.shutdown(wait=True)
                    raise
    except BaseException:
        for sub in ("data", "rejects"):
            for shard in (out / sub).glob(f"{prefix}-*.parquet"):
                shard.unlink()
        shutil.rmtree(out / "_parts", ignore_errors=True)
        raise
    stats.files.append(path)
    offset = 0
    for part in parts:
        part.line_offset = offset
        offset += part.n_lines
    stats.lines += offset
    return parts


def _shift_location(loc: str, offset: int) -> str:
    head, _, num = loc.rpartition(":")
    return f"{head}:{int(num) + offset}" if num.isdigit() else loc


def _rewrite(path: Path, fix: Callable[[pa.Table], pa.Table]) -> None:
    table = fix(pq.read_table(path))
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def reconcile(parts: list[PartResult], src: SourceConfig, cfg: IngestConfig, out: Path) -> None:
    """Make parts written independently equal to one sequential pass (see the module docstring): the first
    kept row with an id keeps it, every later one moves to the quarantine as ``duplicate_id``."""
    sizes = [len(p.id_keys) for p in parts]
    keys = np.concatenate([np.frombuffer(p.id_keys, np.uint64) for p in parts]) if sum(sizes) else \
        np.zeros(0, np.uint64)
    _, first = np.unique(keys, return_index=True)  # index of the first occurrence, in input order
    dup = np.ones(len(keys), bool)
    dup[first] = False
    del first
    csizes = [len(p.content_keys) for p in parts]
    ckeys = np.concatenate([np.frombuffer(p.content_keys, np.uint64) for p in parts]) if sum(csizes) else \
        np.zeros(0, np.uint64)
    order = np.argsort(ckeys, kind="stable")
    ranked = ckeys[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]]) if len(ranked) else np.zeros(0, np.int64)
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(ranked)]))
    occurrence = np.empty(len(ckeys), np.int64)
    occurrence[order] = np.arange(len(ckeys)) - group_start
    at = cat = 0
    for part, n, cn in zip(parts, sizes, csizes, strict=True):
        part_dup = dup[at:at + n]
        part_occ = occurrence[cat:cat + cn]
        local_occ = np.frombuffer(part.content_occurrence, np.int64)
        renumber = np.flatnonzero(part_occ != local_occ)
        drop_pos = np.frombuffer(part.id_pos, np.int64)[part_dup]
        content_pos = np.frombuffer(part.content_pos, np.int64)
        new_ids = {int(content_pos[i]): content_record_id(src.name, int(ckeys[cat + i]), int(part_occ[i]))
                   for i in renumber}
        if drop_pos.size or new_ids:
            moved = _fix_data(part, drop_pos, new_ids, cfg, out)
            locations = [f"{part.where[part.id_where[i]]}{part.id_number[i] + part.line_offset}"
                         for i in np.flatnonzero(part_dup)]
            _quarantine_duplicates(moved, locations, src, cfg, out, part.prefix)
            part.kept -= int(drop_pos.size)
            if drop_pos.size:
                part.dropped["duplicate_id"] += int(drop_pos.size)
        if part.line_offset and part.dropped:
            for path in shard_paths(out / "rejects"):
                if path.name.startswith(part.prefix + "-") and "-dup-" not in path.name:
                    _rewrite(path, lambda t, o=part.line_offset: t.set_column(
                        1, "location", pa.array([_shift_location(x, o) for x in t["location"].to_pylist()],
                                                pa.string())))
        at, cat = at + n, cat + cn


def _fix_data(part: PartResult, drop_pos: np.ndarray, new_ids: dict[int, str], cfg: IngestConfig,
              out: Path) -> pa.Table:
    """Drop rows at kept positions ``drop_pos`` and replace ids by position; return the dropped rows."""
    drop = set(int(x) for x in drop_pos)
    moved = []
    paths = [p for p in shard_paths(out / "data") if p.name.startswith(part.prefix + "-")]
    for s, path in enumerate(paths):
        base = s * cfg.shard_rows
        n = pq.ParquetFile(path).metadata.num_rows
        here_drop = [i - base for i in range(base, base + n) if i in drop]
        here_ids = {i - base: rid for i, rid in new_ids.items() if base <= i < base + n}
        if not here_drop and not here_ids:
            continue

        def fix(t: pa.Table, here_drop: list[int] = here_drop, here_ids: dict[int, str] = here_ids) -> pa.Table:
            if here_ids:
                ids = t["id"].to_pylist()
                for i, rid in here_ids.items():
                    ids[i] = rid
                t = t.set_column(0, "id", pa.array(ids, pa.string()))
            if here_drop:
                mask = np.ones(t.num_rows, bool)
                mask[here_drop] = False
                moved.append(t.filter(pa.array(~mask)))
                t = t.filter(pa.array(mask))
            return t
        _rewrite(path, fix)
    return pa.concat_tables(moved) if moved else None


def _quarantine_duplicates(moved: pa.Table | None, locations: list[str], src: SourceConfig, cfg: IngestConfig,
                           out: Path, prefix: str) -> None:
    if moved is None or moved.num_rows == 0:
        return
    rows = moved.to_pylist()
    raw = [json.dumps({k: r[k] for k in ("messages", "annotations")} | {"meta": r["meta"]},
                      ensure_ascii=False)[:2000] for r in rows]
    detail = [f"id {json.loads(r['meta']).get('source_id', '')!r:.80} already seen in source {src.name}"
              for r in rows]
    table = pa.table({"source": pa.array([src.name] * len(rows), pa.string()),
                      "location": pa.array(locations, pa.string()),
                      "reject_reason": pa.array(["duplicate_id"] * len(rows), pa.string()),
                      "reject_detail": pa.array(detail, pa.string()), "raw": pa.array(raw, pa.string())},
                     schema=QUARANTINE_SCHEMA)
    pq.write_table(table, out / "rejects" / f"{prefix}-dup-00000.parquet")

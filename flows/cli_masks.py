"""``peftpipe masks --config FILE [--records N]``: see which tokens carry a loss before training.

Renders the first N curated records through the configured tokenizer and chat template, exactly as the
tokenize stage does (``tasks.tokenize.encode_chat_sequences``), and prints each with its loss tokens marked
(colour on a terminal, ``[[…]]`` brackets otherwise), the reason for every record the stage would reject, and
what the template did to the messages. Records come from ``--data DIR`` (record shards, e.g. the output of
``peftpipe ingest``) or else the newest finished split under the config's workdir (``peftpipe curate``
makes it). No Prefect, no MLflow.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any


def newest_split(workdir: Path, split: str) -> Path | None:
    """The ``split`` records of the most recently finished split stage under ``workdir``, if any."""
    from tasks.core.stage import is_complete

    done = [d for d in (workdir / "stages" / "split").glob("*") if d.is_dir() and is_complete(d)]
    return max(done, key=lambda d: d.stat().st_mtime) / split if done else None


def read_records(directory: Path, n: int) -> list[tuple[str, list[dict]]]:
    from tasks.core.stage import iter_batches

    out: list[tuple[str, list[dict]]] = []
    for batch in iter_batches(directory, columns=["id", "messages"]):
        for rid, msgs in zip(batch.column("id").to_pylist(), batch.column("messages").to_pylist(), strict=True):
            out.append((rid, msgs or []))
            if len(out) >= n:
                return out
    return out


def load_configured_tokenizer(cfg, corpus: Path):
    """The tokenizer the train flow would use: the configured model's (a hub id or a directory that holds a
    tokenizer), or for the offline tiny model the one it builds on ``corpus``."""
    from tasks.tokenize.tokenizer import load_tokenizer

    base = cfg.model.name_or_path
    if base == "tiny-llama":  # tasks.train.model.TINY, not imported: that module loads torch
        from tasks.core.storage import local_workdir
        from tasks.train.model import prepare_base_model

        base = prepare_base_model(cfg.model, local_workdir(cfg.workdir), corpus)
    return load_tokenizer(base, cfg.model.revision, cfg.model.trust_remote_code, cfg.tokenize.chat_template)


def run(args: argparse.Namespace) -> int:
    from schemas.pipeline import ConfigError, load_config
    from tasks.tokenize.chat import MaskReject, encode_chat_sequences
    from tasks.tokenize.report import BEHAVIOURS
    from tasks.tokenize.show import mask_view, token_table
    from tasks.tokenize.spans import probe

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"peftpipe masks: {exc}", file=sys.stderr)
        return 2
    data = Path(args.data) if args.data else newest_split(Path(cfg.workdir), args.split)
    if data is None or not data.is_dir():
        print(f"peftpipe masks: no curated records under {cfg.workdir} (run `peftpipe curate --config "
              f"{args.config}` first, or pass --data DIR)", file=sys.stderr)
        return 2
    records = read_records(data, args.records)
    tok = load_configured_tokenizer(cfg, data)
    info = probe(tok)
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    print(f"tokenizer {info.name}; records from {data}; reasoning={cfg.tokenize.reasoning}; "
          f"end of turn {list(info.end_of_turn) or 'none'}; reasoning read from "
          f"{'reasoning_content' if info.reasoning_field else 'inline <think> text'}")
    print("loss tokens: " + ("\x1b[1;32mgreen\x1b[0m" if color else "[[in brackets]]") + "\n")
    rejected: Counter = Counter()
    seen: Counter = Counter()
    for rid, msgs in records:
        found: set[str] = set()
        try:
            seqs = encode_chat_sequences(tok, msgs, cfg.tokenize, found)
        except MaskReject as exc:
            rejected[exc.reason] += 1
            print(f"--- {rid}: REJECTED {exc.reason}: {exc.detail}\n")
            continue
        finally:
            seen.update(found)
        for k, (ids, labels) in enumerate(seqs):
            n_loss = int((labels != -100).sum())
            tag = f" (sequence {k + 1} of {len(seqs)})" if len(seqs) > 1 else ""
            over = f"; over max_seq_len {cfg.tokenize.max_seq_len}: the stage would " + (
                "drop it" if cfg.tokenize.overlong == "drop" else "truncate it") if len(ids) > cfg.tokenize.max_seq_len else ""
            print(f"--- {rid}{tag}: {len(ids)} tokens, {n_loss} with a loss{over}")
            print(token_table(tok, ids, labels) if args.tokens else mask_view(tok, ids, labels, color))
            print()
    print(f"{len(records)} records, {sum(rejected.values())} rejected {dict(rejected) or ''}")
    for key, n in sorted(seen.items()):
        print(f"  {n} records: the template {BEHAVIOURS.get(key, key)}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("masks", help="print curated records with their loss tokens marked",
                              description=__doc__.splitlines()[0])
    p.add_argument("--config", "-c", default="configs/sample.yaml", help="YAML config (default: configs/sample.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set tokenize.reasoning=all (repeatable)")
    p.add_argument("--records", "-n", type=int, default=5, help="how many records to show (default 5)")
    p.add_argument("--split", choices=["train", "eval"], default="train", help="which curated split (default train)")
    p.add_argument("--data", default=None, metavar="DIR", help="record shards to read instead of the curated split")
    p.add_argument("--tokens", action="store_true", help="one line per token: position, id, label, text")
    p.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                   help="colour the loss tokens (default: when printing to a terminal)")
    p.set_defaults(func=run)

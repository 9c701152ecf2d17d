"""Masks checked where they are made: the loss tokens must sit exactly on the trained character spans.

Two checks per sequence, both after the mask is built from the tokenizer's offsets:
- positions: each trained span is covered, without a gap, by a run of loss tokens, and no loss token lies
  outside every span. A loss token may reach past a span only over whitespace (a tokenizer that merges the
  template's newline with a reply's leading newline into one token); anything else (a token across a role
  header, a span left partly out) is a mismatch;
- text: the loss tokens of each span decode to that span's text, in order.
A mismatch rejects the record (``mask_mismatch``) with what differed.
"""
from __future__ import annotations

import numpy as np


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


def _same(got: str, want: str) -> bool:
    return got == want or got.strip() == want.strip()  # SentencePiece decoders drop a leading space


def check_mask(tok, text: str, ids: np.ndarray, offsets: np.ndarray, mask: np.ndarray,
               spans: list[tuple[int, int]]) -> str | None:
    """None when the mask is right, else a one-line description of the first thing that is not."""
    starts, ends = offsets[:, 0], offsets[:, 1]
    claimed = np.zeros(len(ids), dtype=bool)
    runs: list[tuple[int, int, int, int]] = []
    for a, b in spans:
        lo = int(np.searchsorted(ends, a, side="right"))  # first token ending after the reply starts
        hi = int(np.searchsorted(starts, b, side="left"))  # first token starting at or after its end
        if lo >= hi or starts[lo] > a or ends[hi - 1] < b or (starts[lo + 1:hi] > ends[lo:hi - 1]).any():
            return f"the tokens do not cover the reply at characters {a}-{b} ({text[a:a + 24]!r})"
        if not mask[lo:hi].all():
            return f"part of the reply at characters {a}-{b} ({text[a:a + 24]!r}) is not in the loss"
        if text[starts[lo]:a].strip() or text[b:ends[hi - 1]].strip():
            return (f"a loss token reaches past the reply at characters {a}-{b} into the markup "
                    f"({text[starts[lo]:a]!r} before, {text[b:ends[hi - 1]]!r} after)")
        claimed[lo:hi] = True
        runs.append((lo, hi, a, b))
    # One Rust call decodes every run (the transformers wrapper costs 3x the decoding itself).
    got = tok.backend_tokenizer.decode_batch([ids[lo:hi].tolist() for lo, hi, _, _ in runs],
                                             skip_special_tokens=False)
    for text_got, (lo, hi, a, b) in zip(got, runs, strict=True):
        want = text[starts[lo]:ends[hi - 1]]
        if _same(text_got, want):
            continue
        # A decoder that rewrites text (Metaspace turns every '▁', even inside a special token, into a space)
        # is compared with its own rendering of the reply.
        backend = tok.backend_tokenizer
        if not _same(text_got, backend.decode(backend.encode(want, add_special_tokens=False).ids,
                                              skip_special_tokens=False)):
            return f"the loss tokens of characters {a}-{b} decode to {text_got[:60]!r}, the reply is {want[:60]!r}"
    stray = np.flatnonzero(mask & ~claimed)
    if len(stray):
        at = int(starts[stray[0]])
        return f"a token at character {at} ({text[max(0, at - 12):at + 12]!r}) is in the loss outside every reply"
    return None

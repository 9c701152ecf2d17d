"""Masks made visible: a tokenized sequence as text with its loss tokens marked, as axolotl's ``--debug``
preprocessing prints them. Colour on a terminal, ``[[…]]`` brackets otherwise; ``peftpipe masks`` uses it.
"""
from __future__ import annotations

import numpy as np

from schemas.tokenize import IGNORE_INDEX

LOSS_ON, LOSS_OFF = "\x1b[1;32m", "\x1b[0m"  # bold green: the tokens that carry a loss
PROMPT_ON = "\x1b[2m"  # dim: everything else


def mask_view(tok, ids: np.ndarray, labels: np.ndarray, color: bool) -> str:
    """The sequence decoded run by run: loss runs green (colour) or in ``[[ ]]`` (plain), the rest as is."""
    loss = np.asarray(labels) != IGNORE_INDEX
    if not len(ids):
        return ""
    cuts = np.flatnonzero(np.diff(loss.astype(np.int8))) + 1
    parts = []
    for run in np.split(np.arange(len(ids)), cuts):
        text = tok.decode(np.asarray(ids)[run].tolist(), skip_special_tokens=False,
                          clean_up_tokenization_spaces=False)
        if loss[run[0]]:
            parts.append(f"{LOSS_ON}{text}{LOSS_OFF}" if color else f"[[{text}]]")
        else:
            parts.append(f"{PROMPT_ON}{text}{LOSS_OFF}" if color else text)
    return "".join(parts)


def token_table(tok, ids: np.ndarray, labels: np.ndarray) -> str:
    """One line per token: position, id, label (-100 where no loss) and the token's text."""
    lines = []
    for i, (t, lab) in enumerate(zip(np.asarray(ids).tolist(), np.asarray(labels).tolist(), strict=True)):
        text = tok.decode([t], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        lines.append(f"{i:6d} {t:8d} {lab:8d} {'*' if lab != IGNORE_INDEX else ' '} {text!r}")
    return "\n".join(lines)

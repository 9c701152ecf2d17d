"""Best-fit-decreasing packing and the packed rows' layout. That packed records stay apart in the model, on
the path training uses, is tests/tasks/train/test_packing_isolation.py."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.tokenize.packing import (
    IGNORE_INDEX,
    TokenizedSeq,
    best_fit_decreasing,
    pack_sequences,
    packing_efficiency,
)


def seq(rid: str, n: int, start: int = 5, loss_from: int = 1) -> TokenizedSeq:
    ids = np.arange(start, start + n, dtype=np.int32)
    labels = ids.copy()
    labels[:loss_from] = IGNORE_INDEX
    return TokenizedSeq(rid, ids, labels)


def test_best_fit_decreasing_known_case():
    # BFD puts 6 with 4, 5 with 5, then 3+3+2 share a bin: 3 full bins of 10.
    assert best_fit_decreasing([3, 6, 5, 2, 4, 5, 3], 10) == [[1, 4], [2, 5], [0, 6, 3]]


def test_best_fit_decreasing_rejects_oversized_and_empty():
    with pytest.raises(ValueError, match="capacity"):
        best_fit_decreasing([11], 10)
    with pytest.raises(ValueError, match="empty"):
        best_fit_decreasing([0], 10)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 64), min_size=1, max_size=200))
def test_best_fit_decreasing_places_every_item_once_within_capacity(lengths):
    bins = best_fit_decreasing(lengths, 64)
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 64 for b in bins)
    # Any-fit invariant: at most one row is half empty (else its first record would have fitted the other).
    assert sum(sum(lengths[i] for i in b) <= 32 for b in bins) <= 1
    assert best_fit_decreasing(lengths, 64) == bins  # deterministic


def test_packed_rows_restart_positions_per_record():
    seqs = [seq("a", 5), seq("b", 3), seq("c", 7), seq("d", 2)]
    rows = pack_sequences(seqs, 10)
    assert sum(r["num_seqs"] for r in rows) == 4 and all(r["num_tokens"] <= 10 for r in rows)
    by_id = {s.record_id: s for s in seqs}
    for row in rows:
        at = 0
        for rid in row["record_ids"]:
            n = len(by_id[rid])
            assert row["position_ids"][at:at + n].tolist() == list(range(n))
            assert row["input_ids"][at:at + n].tolist() == by_id[rid].input_ids.tolist()
            assert row["labels"][at] == IGNORE_INDEX  # a record's first token never carries a loss
            at += n
        assert at == row["num_tokens"]
    assert packing_efficiency(17, len(rows), 10) == 17 / (10 * len(rows))

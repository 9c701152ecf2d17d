"""Best-fit-decreasing packing, collate, and the model-call convention that keeps packed records apart."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.tokenize.packing import (
    IGNORE_INDEX,
    TokenizedSeq,
    best_fit_decreasing,
    collate,
    concat_row,
    pack_sequences,
    packing_efficiency,
    single_rows,
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


def test_collate_pads_as_its_own_sequence():
    rows = [concat_row([seq("a", 3), seq("b", 2)]), concat_row([seq("c", 2)])]
    batch = collate(rows, pad_id=0)
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    assert batch["input_ids"][1, 2:].tolist() == [0, 0, 0]
    assert batch["labels"][1, 2:].tolist() == [IGNORE_INDEX] * 3
    with_mask = collate(single_rows([seq("a", 3), seq("c", 1)]), pad_id=0, attention_mask=True, pad_to=4)
    assert with_mask["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      attn_implementation="sdpa")
    return LlamaForCausalLM(cfg).eval()


def token_losses(model, batch: dict) -> torch.Tensor:
    """Per-token loss, aligned with the labels (position t holds the loss of predicting labels[t])."""
    with torch.no_grad():
        logits = model(**batch, use_cache=False).logits.float()
    labels = batch["labels"]
    shifted = torch.full_like(labels, IGNORE_INDEX)
    shifted[:, :-1] = labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), shifted, reduction="none",
                                             ignore_index=IGNORE_INDEX)
    out = torch.full_like(loss, float("nan"))
    out[:, 1:] = loss[:, :-1]  # move each loss onto the label it predicts
    return out


def random_seqs(n_seqs: int, seed: int) -> list[TokenizedSeq]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n_seqs):
        n = int(rng.integers(3, 14))
        ids = rng.integers(1, 97, n).astype(np.int32)
        labels = np.where(rng.random(n) < 0.6, ids, IGNORE_INDEX).astype(np.int32)
        labels[0] = IGNORE_INDEX
        out.append(TokenizedSeq(f"r{k}", ids, labels))
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_forward_equals_separate_forward(tiny_llama, attn):
    tiny_llama.config._attn_implementation = attn
    seqs = random_seqs(9, seed=1)
    rows = pack_sequences(seqs, 32)
    assert any(r["num_seqs"] > 1 for r in rows)
    packed = token_losses(tiny_llama, collate(rows, pad_id=0))
    alone = {s.record_id: token_losses(tiny_llama, collate(single_rows([s]), pad_id=0))[0] for s in seqs}
    compared = 0
    for i, row in enumerate(rows):
        at = 0
        for rid in row["record_ids"]:
            n = len(alone[rid])
            mine, ref = packed[i, at:at + n], alone[rid]
            has = ~torch.isnan(ref) & (torch.as_tensor(row["labels"][at:at + n]) != IGNORE_INDEX)
            torch.testing.assert_close(mine[has], ref[has], rtol=1e-4, atol=1e-5)
            compared += int(has.sum())
            at += n
    assert compared == sum(int((s.labels != IGNORE_INDEX).sum()) for s in seqs)

    # The check has teeth: the same row with one running position lets records see each other.
    leaky = collate(rows, pad_id=0)
    leaky["position_ids"] = torch.arange(leaky["input_ids"].shape[1]).expand_as(leaky["input_ids"]).clone()
    assert not torch.allclose(torch.nan_to_num(token_losses(tiny_llama, leaky)), torch.nan_to_num(packed))


def test_model_loss_on_packed_batch_equals_mean_of_separate_losses(tiny_llama):
    """What training sees: the HF loss of a packed, padded batch is the token-mean of the records' losses."""
    tiny_llama.config._attn_implementation = "sdpa"
    seqs = random_seqs(6, seed=2)
    with torch.no_grad():
        packed = tiny_llama(**collate(pack_sequences(seqs, 24), pad_id=0), use_cache=False).loss
        total = n = 0
        for s in seqs:
            batch = collate(single_rows([s]), pad_id=0)
            k = int((batch["labels"] != IGNORE_INDEX).sum())
            total += tiny_llama(**batch, use_cache=False).loss * k
            n += k
    torch.testing.assert_close(packed, total / n, rtol=1e-4, atol=1e-5)


def test_padding_only_batch_with_attention_mask_matches_separate(tiny_llama):
    tiny_llama.config._attn_implementation = "sdpa"
    seqs = random_seqs(4, seed=3)
    padded = token_losses(tiny_llama, collate(single_rows(seqs), pad_id=0, attention_mask=True))
    for i, s in enumerate(seqs):
        ref = token_losses(tiny_llama, collate(single_rows([s]), pad_id=0))[0]
        has = ~torch.isnan(ref) & (torch.as_tensor(s.labels) != IGNORE_INDEX)
        torch.testing.assert_close(padded[i, : len(s)][has], ref[has], rtol=1e-4, atol=1e-5)

"""Packed rows never attend across records, on the path training uses.

Rows are packed by the tokenize stage's packer, written in the tokenized layout, read back by the trainer's
reader (``load_rows``), batched by the trainer's one collate and scored by the trainer's loss code
(``causal_lm_token_losses``, whose per-token values ``causal_lm_loss_sum`` adds up). Under sdpa, eager and
flex attention every record's per-token loss in a packed row equals its loss run alone.

Isolation rests on transformers reading the restarts of ``position_ids`` as sequence boundaries. The controls
show the comparison would catch its loss: rows with one running position, and rows whose boundaries are hidden
from attention (an explicit all-ones mask, which turns that reading off), both give other losses.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from schemas.tokenize import IGNORE_INDEX
from tasks.tokenize.packing import TokenizedSeq, pack_sequences
from tasks.train.data import Batch, TrainingRow, collate, load_rows, shift_targets
from tasks.train.loss import causal_lm_loss_sum, causal_lm_token_losses, decoder_and_head
from tasks.train.synthetic import write_split

VOCAB = 97
KERNELS = ["sdpa", "eager", "flex_attention"]


def tiny_llama(device: str = "cpu", dtype: torch.dtype = torch.float32, width: int = 32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).to(device, dtype).eval()


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


@pytest.fixture
def attn(request, model):
    """Switch the model to the attention kernel under test."""
    model.config._attn_implementation = request.param
    return request.param


def random_seqs(n_seqs: int, seed: int, max_len: int = 14) -> list[TokenizedSeq]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n_seqs):
        n = int(rng.integers(3, max_len))
        ids = rng.integers(1, VOCAB, n).astype(np.int32)
        labels = np.where(rng.random(n) < 0.7, ids, IGNORE_INDEX).astype(np.int32)
        labels[0] = IGNORE_INDEX
        out.append(TokenizedSeq(f"r{k}", ids, labels))
    return out


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """(records by id, packed row dicts, the rows as the trainer reads them back from Parquet)."""
    seqs = random_seqs(9, seed=1)
    rows = pack_sequences(seqs, 32)
    assert any(r["num_seqs"] > 1 for r in rows)
    split = write_split(tmp_path_factory.mktemp("tok") / "train", rows)
    return {s.record_id: s for s in seqs}, rows, load_rows(split)


def alone(seq: TokenizedSeq) -> TrainingRow:
    pos = np.arange(len(seq), dtype=np.int32)
    return TrainingRow(seq.input_ids, shift_targets(seq.labels, pos), pos)


@torch.no_grad()
def token_losses(model, batch: Batch) -> torch.Tensor:
    dev = next(model.parameters()).device
    b = batch.to(dev)
    return causal_lm_token_losses(model, b.input_ids, b.position_ids, b.targets).float().cpu()


def compare_records(model, packed_losses: torch.Tensor, by_id: dict, rows: list[dict]):
    """(first record of each row, later records) as lists of (got, alone) per-token loss pairs. The alone
    reference always runs through sdpa (flex attention on one short lone sequence drifts on CPU)."""
    impl = model.config._attn_implementation
    model.config._attn_implementation = "sdpa"
    firsts, laters = [], []
    try:
        for i, row in enumerate(rows):
            at = 0
            for j, rid in enumerate(row["record_ids"]):
                n = len(by_id[rid])
                ref = token_losses(model, collate([alone(by_id[rid])], "padded"))[0, :n]
                (firsts if j == 0 else laters).append((packed_losses[i, at:at + n], ref))
                at += n
    finally:
        model.config._attn_implementation = impl
    return firsts, laters


@pytest.mark.parametrize("attn", KERNELS, indirect=True)
def test_each_packed_record_scores_as_if_alone(model, packed, attn):
    by_id, rows, loaded = packed
    batch = collate(loaded, "padded", pad_id=0, multiple=8)
    got = token_losses(model, batch)
    assert int((~got.isnan()).sum()) == batch.n_loss_tokens == sum(int((s.labels != IGNORE_INDEX).sum())
                                                                   for s in by_id.values())
    with torch.no_grad():  # the per-token values are what training adds up, fused or not
        for fused in (False, True):
            total = causal_lm_loss_sum(model, batch.input_ids, batch.position_ids, batch.targets, fused, chunk=16)
            torch.testing.assert_close(total, got.nansum(), rtol=1e-5, atol=1e-5)
    firsts, laters = compare_records(model, got, by_id, rows)
    assert laters, "no row holds more than one record: the test would prove nothing"
    for mine, ref in firsts + laters:
        assert torch.equal(mine.isnan(), ref.isnan())  # the same tokens carry a loss
        torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-5, equal_nan=True)


def differs(pairs) -> bool:
    return all((mine - ref).nan_to_num().abs().max() > 1e-3 for mine, ref in pairs)


@pytest.mark.parametrize("attn", KERNELS, indirect=True)
def test_controls_without_boundaries_fail(model, packed, attn):
    by_id, rows, loaded = packed
    batch = collate(loaded, "padded", pad_id=0, multiple=8)

    # 1. One running position per row, as a collate that forgot the restarts would give.
    running = torch.arange(batch.input_ids.shape[1]).expand_as(batch.input_ids).contiguous()
    got = token_losses(model, Batch(batch.input_ids, running, batch.targets, batch.n_tokens, batch.n_loss_tokens))
    firsts, laters = compare_records(model, got, by_id, rows)
    assert differs(laters)
    for mine, ref in firsts:  # a row's first record has nothing before it: it still scores as alone
        torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-5, equal_nan=True)

    # 2. Restarts kept, but attention told nothing of the boundaries: what a transformers that stopped reading
    #    position restarts would do. Later records then see earlier ones and score differently.
    decoder, head = decoder_and_head(model)
    with torch.no_grad():
        hidden = decoder(input_ids=batch.input_ids, position_ids=batch.position_ids,
                         attention_mask=torch.ones_like(batch.input_ids), use_cache=False).last_hidden_state
        logits = head(hidden).float()
    keep = batch.targets != IGNORE_INDEX
    got = torch.full(batch.targets.shape, float("nan"))
    got[keep] = torch.nn.functional.cross_entropy(logits[keep], batch.targets[keep], reduction="none")
    firsts, laters = compare_records(model, got, by_id, rows)
    assert differs(laters)
    for mine, ref in firsts:
        torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-5, equal_nan=True)


CUDA_KERNELS = [("sdpa", torch.float32, 1e-4), ("eager", torch.float32, 1e-4), ("sdpa", torch.bfloat16, 3e-2),
                ("flex_attention", torch.bfloat16, 3e-2)]
if importlib.util.find_spec("flash_attn") is not None:
    CUDA_KERNELS.append(("flash_attention_2", torch.bfloat16, 3e-2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("attn", "dtype", "tol"), CUDA_KERNELS, ids=str)
def test_each_packed_record_scores_as_if_alone_on_cuda(packed, attn, dtype, tol):
    by_id, rows, loaded = packed
    model = tiny_llama("cuda", dtype, width=128)
    model.config._attn_implementation = attn
    got = token_losses(model, collate(loaded, "padded", pad_id=0, multiple=8))
    firsts, laters = compare_records(model, got, by_id, rows)
    for mine, ref in firsts + laters:
        torch.testing.assert_close(mine, ref, rtol=tol, atol=tol, equal_nan=True)

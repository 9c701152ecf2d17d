"""On CUDA: a packed row gives each record the same per-token loss as running it alone, for every attention
kernel the trainer may pick (the CPU test covers sdpa and eager in fp32)."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from schemas.tokenize import IGNORE_INDEX
from tasks.tokenize.packing import TokenizedSeq, collate, pack_sequences, single_rows

pytestmark = pytest.mark.gpu

KERNELS = [("sdpa", torch.float32, 1e-4), ("eager", torch.float32, 1e-4), ("sdpa", torch.bfloat16, 3e-2),
           ("flex_attention", torch.bfloat16, 3e-2)]
if importlib.util.find_spec("flash_attn") is not None:
    KERNELS.append(("flash_attention_2", torch.bfloat16, 3e-2))


def seqs(seed: int = 0) -> list[TokenizedSeq]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(12):
        n = int(rng.integers(4, 60))
        ids = rng.integers(1, 257, n).astype(np.int32)
        labels = ids.copy()
        labels[0] = IGNORE_INDEX
        out.append(TokenizedSeq(f"r{k}", ids, labels))
    return out


def per_token_loss(model, batch: dict) -> torch.Tensor:
    batch = {k: v.cuda() for k, v in batch.items()}
    with torch.no_grad():
        logits = model(**batch, use_cache=False).logits.float()
    return torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:],
                                             reduction="none", ignore_index=IGNORE_INDEX).cpu()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("attn", "dtype", "tol"), KERNELS, ids=lambda x: str(x))
def test_packed_equals_separate_on_cuda(attn, dtype, tol):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=257, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    model = LlamaForCausalLM(cfg).to("cuda", dtype).eval()
    data = seqs()
    rows = pack_sequences(data, 128)
    assert any(r["num_seqs"] > 1 for r in rows)
    model.config._attn_implementation = attn
    packed = per_token_loss(model, collate(rows, pad_id=0))
    # The reference runs each record alone through sdpa (on CPU, flex attention on a lone short sequence
    # drifts by ~1e-2 while its packed rows match sdpa to 5e-7).
    model.config._attn_implementation = "sdpa"
    by_id = {s.record_id: s for s in data}
    for i, row in enumerate(rows):
        at = 0
        for rid in row["record_ids"]:
            n = len(by_id[rid])
            alone = per_token_loss(model, collate(single_rows([by_id[rid]]), pad_id=0))[0]
            # The packed loss at t predicts token t+1; the last token of a record predicts nothing.
            torch.testing.assert_close(packed[i, at:at + n - 1], alone[: n - 1], rtol=tol, atol=tol)
            at += n

"""The trainer's fast path computes what plain HF + peft compute (tiny Llama, fp32, CPU).

Ours is the trainer's own code: the no-upcast load (``load_base_model``), ``add_adapter``, optionally
``compile_layers`` (here with the aot_eager backend: the GPU bench checks inductor's kernels in bf16), rows packed and written in the tokenized layout, read by ``load_rows``, batched by the one
``collate`` and scored by ``causal_lm_loss_sum`` (plain and chunked). The reference is the stock recipe
(bench/train/hf_stock_recipe.py): ``from_pretrained``, ``prepare_model_for_kbit_training`` for QLoRA,
``get_peft_model``, one record per row with an attention mask, ``model(..., labels=...).loss``.
At step 0 the losses agree and the LoRA gradients point the same way (cosine > 0.999).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from schemas.tokenize import IGNORE_INDEX
from schemas.train import AdapterConfig, ModelConfig
from tasks.tokenize.packing import TokenizedSeq, pack_sequences
from tasks.train.data import collate, load_rows
from tasks.train.loss import causal_lm_loss_sum
from tasks.train.model import add_adapter, compile_layers, load_base_model
from tasks.train.synthetic import write_split

VOCAB = 128
ADAPTER = dict(r=8, alpha=16, dropout=0.0, target_modules="all-linear")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                 tie_word_embeddings=False, initializer_range=0.1)).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def records() -> list[TokenizedSeq]:
    rng = np.random.default_rng(0)
    out = []
    for k in range(10):
        n = int(rng.integers(6, 30))
        ids = rng.integers(1, VOCAB, n).astype(np.int32)
        labels = ids.copy()
        labels[: int(rng.integers(1, n // 2))] = IGNORE_INDEX  # a prompt without loss
        out.append(TokenizedSeq(f"r{k}", ids, labels))
    return out


def reference_model(base_dir: str, method: str):
    """The stock HF + peft recipe, as its docs show it."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if method == "qlora":
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=torch.float32)
        model = AutoModelForCausalLM.from_pretrained(base_dir, quantization_config=bnb, dtype=torch.float32,
                                                     device_map={"": "cpu"}, attn_implementation="sdpa")
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    else:
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="sdpa")
    lora = LoraConfig(r=ADAPTER["r"], lora_alpha=ADAPTER["alpha"], lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    return get_peft_model(model, lora).train()


def our_model(base_dir: str, method: str, compiled: bool):
    adapter = AdapterConfig(method=method, **ADAPTER)
    model = add_adapter(load_base_model(ModelConfig(name_or_path=base_dir, attn_implementation="sdpa"), adapter,
                                        "cpu"), adapter)
    if compiled:  # dynamo's capture and AOT autograd as in training; inductor's kernels: bench/train/gpu_equivalence.py
        compile_layers(model, backend="aot_eager")
    return model.train()


def same_random_lora(models) -> None:
    """Both adapters get the same random A and B: with peft's B = 0 the A gradients would all be zero."""
    gen = torch.Generator().manual_seed(1)
    names = sorted(n for n, p in models[0].named_parameters() if p.requires_grad)
    for name in names:
        shape = dict(models[0].named_parameters())[name].shape
        value = torch.randn(shape, generator=gen) * 0.05
        for m in models:
            with torch.no_grad():
                dict(m.named_parameters())[name].copy_(value)


def lora_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def reference_step0(model, records) -> tuple[float, dict]:
    """One record per row, right-padded, attention mask, HF's own shifted loss."""
    width = max(len(r) for r in records)
    ids = torch.zeros((len(records), width), dtype=torch.long)
    labels = torch.full((len(records), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(records), width), dtype=torch.long)
    for i, r in enumerate(records):
        ids[i, :len(r)] = torch.from_numpy(r.input_ids.astype(np.int64))
        labels[i, :len(r)] = torch.from_numpy(r.labels.astype(np.int64))
        mask[i, :len(r)] = 1
    loss = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
    loss.backward()
    return float(loss), lora_grads(model)


def our_step0(model, rows, fused: bool) -> tuple[float, dict]:
    model.zero_grad(set_to_none=True)
    batch = collate(rows, "padded", pad_id=0, multiple=8)
    loss_sum = causal_lm_loss_sum(model, batch.input_ids, batch.position_ids, batch.targets, fused, chunk=32)
    (loss_sum / batch.n_loss_tokens).backward()
    return float(loss_sum) / batch.n_loss_tokens, lora_grads(model)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.reshape(1, -1).double(), b.reshape(1, -1).double()))


@pytest.mark.parametrize(("method", "compiled"), [("lora", False), ("qlora", False), ("lora", True)],
                         ids=["lora", "qlora", "lora-compiled"])
def test_step0_loss_and_lora_gradients_equal_hf_peft(base_dir, records, tmp_path, method, compiled):
    if method == "qlora":
        pytest.importorskip("bitsandbytes")
    ref, ours = reference_model(base_dir, method), our_model(base_dir, method, compiled)
    same_random_lora([ref, ours])
    ref_loss, ref_grads = reference_step0(ref, records)
    rows = load_rows(write_split(tmp_path / "train", pack_sequences(records, 64)))
    assert len(rows) < len(records)  # packed: several records share a row
    for fused in (False, True):
        loss, grads = our_step0(ours, rows, fused)
        assert loss == pytest.approx(ref_loss, rel=1e-5), (fused, loss, ref_loss)
        assert set(grads) == set(ref_grads) and len(grads) == 2 * 7 * 2  # A and B, 7 linears, 2 layers
        flat, ref_flat = (torch.cat([g[n].reshape(-1) for n in sorted(g)]) for g in (grads, ref_grads))
        assert cosine(flat, ref_flat) > 0.999
        for name in ref_grads:
            assert cosine(grads[name], ref_grads[name]) > 0.999, name
        assert float(flat.norm() / ref_flat.norm()) == pytest.approx(1.0, abs=1e-3)

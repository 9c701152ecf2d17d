"""The base model: the tiny offline Llama is built once per corpus and cached; loading for LoRA and QLoRA."""
from __future__ import annotations

import json

import pyarrow as pa
import pytest
import torch

from schemas.pipeline import PipelineConfig
from schemas.record import RECORD_SCHEMA
from schemas.train import AdapterConfig, ModelConfig, TrainConfig
from tasks.core.stage import ShardWriter
from tasks.train.model import (
    add_adapter,
    enable_checkpointing,
    export_merged,
    load_base_model,
    prepare_base_model,
    resolve_device,
    resolve_dtype,
)


def write_corpus(directory, n=60, word="apples"):
    rows = [{"id": f"r{i}", "source": "t", "annotations": [], "meta": "{}",
             "messages": [{"role": "user", "content": f"how many {word} in box {i}?"},
                          {"role": "assistant", "content": f"there are {i * 7 % 13} {word} in box {i}."}]}
            for i in range(n)]
    with ShardWriter(directory, RECORD_SCHEMA) as w:
        w.write(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA))
    return directory


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("model")
    corpus = write_corpus(root / "corpus")
    cfg = ModelConfig(tiny_vocab_size=300)
    return root, corpus, cfg, prepare_base_model(cfg, root / "work", corpus)


def test_tiny_llama_is_built_for_the_corpus_and_cached(tiny, tmp_path):
    root, corpus, cfg, path = tiny
    config = json.loads((root / "work" / "models" / path.split("/")[-1] / "config.json").read_text())
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path)
    assert config["vocab_size"] == len(tok) <= 300 and config["num_hidden_layers"] == 2
    assert config["hidden_size"] == 64 and tok.chat_template
    assert prepare_base_model(cfg, root / "work", corpus) == path  # same corpus + config: reused
    other = prepare_base_model(cfg, root / "work", write_corpus(tmp_path / "other", word="pears"))
    assert other != path  # another corpus: another tokenizer and model
    assert not list((root / "work" / "models").glob(".*tmp*"))  # no temporary leftovers


def test_hub_ids_pass_through_and_tiny_needs_a_corpus(tmp_path):
    assert prepare_base_model(ModelConfig(name_or_path="meta-llama/Llama-3.2-1B-Instruct"), tmp_path, None) \
        == "meta-llama/Llama-3.2-1B-Instruct"
    with pytest.raises(ValueError, match="corpus"):
        prepare_base_model(ModelConfig(), tmp_path, None)


def test_device_and_dtype_resolution():
    assert resolve_device(TrainConfig(device="cpu")).type == "cpu"
    assert resolve_dtype(ModelConfig(), torch.device("cpu")) == torch.float32
    assert resolve_dtype(ModelConfig(), torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype(ModelConfig(dtype="bfloat16"), torch.device("cpu")) == torch.bfloat16
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            resolve_device(TrainConfig(device="cuda"))


def test_lora_and_qlora_loading_and_per_layer_checkpointing(tiny):
    _, _, cfg, path = tiny
    lora = load_base_model(cfg, AdapterConfig(), "cpu", base=path)
    assert lora.dtype == torch.float32 and type(lora.model.layers[0].mlp.up_proj) is torch.nn.Linear
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb
    qlora = load_base_model(cfg, AdapterConfig(method="qlora"), "cpu", base=path)
    up = qlora.model.layers[0].mlp.up_proj
    assert isinstance(up, bnb.nn.Linear4bit) and up.weight.quant_type == "nf4"
    assert qlora.model.norm.weight.dtype == torch.float32  # no blanket upcast, no downcast either
    model = add_adapter(qlora, AdapterConfig(method="qlora", r=4, use_rslora=True))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert enable_checkpointing(model, [1]) == 1
    layers = model.get_base_model().model.layers
    assert [layer.gradient_checkpointing for layer in layers] == [False, True]


def test_merged_export_matches_base_plus_adapter(tiny, tmp_path):
    _, _, cfg, path = tiny
    model = add_adapter(load_base_model(cfg, AdapterConfig(), "cpu", base=path), AdapterConfig(r=4))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    model.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    pipe = PipelineConfig.model_validate({"ingest": {"sources": [{"name": "x", "path": "x"}]},
                                          "model": cfg.model_dump()})
    merged_dir = export_merged(path, tmp_path / "adapter", pipe, tmp_path / "merged")
    from transformers import AutoModelForCausalLM
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert merged.dtype == torch.bfloat16 and not (merged_dir / "adapter_config.json").exists()
    with torch.no_grad():
        got = merged.float()(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=0.1)  # bf16 rounding of the merged weights

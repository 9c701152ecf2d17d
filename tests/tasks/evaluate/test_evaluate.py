"""evaluate_adapter on the tiny model: losses of base and adapter, whether the adapter changes the output."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from schemas.pipeline import PipelineConfig
from schemas.train import AdapterConfig, ModelConfig
from tasks.evaluate.stage import evaluate_adapter, prompt_ids
from tasks.tokenize.tokenizer import train_sample_tokenizer
from tasks.train.data import load_rows
from tasks.train.model import add_adapter, build_tiny_llama, load_base_model
from tasks.train.synthetic import pattern_rows, write_split

TEXTS = [f"user asks about item {i}; the assistant lists {i % 5} colours" for i in range(100)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    base = root / "base"
    train_sample_tokenizer(TEXTS, base, vocab_size=300)
    build_tiny_llama(base, base, ModelConfig())
    write_split(root / "tok" / "eval", pattern_rows(3, 290, seq_len=12, seed=3))
    return root, str(base)


def save_adapter(base: str, out: Path, scale: float) -> Path:
    """A LoRA adapter whose B matrices are ``scale`` * noise (0: the no-op adapter peft initialises)."""
    model = add_adapter(load_base_model(ModelConfig(), AdapterConfig(r=4), "cpu", base=base), AdapterConfig(r=4))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * scale)
    model.save_pretrained(out)
    return out


def cfg_for(root: Path) -> PipelineConfig:
    return PipelineConfig.model_validate({"ingest": {"sources": [{"name": "x", "path": "x.jsonl"}]},
                                          "workdir": str(root), "adapter": {"r": 4}, "train": {"device": "cpu"}})


def test_evaluate_reports_losses_and_detects_a_changed_model(setup):
    root, base = setup
    result = evaluate_adapter(root / "tok", base, save_adapter(base, root / "a1", 0.5), cfg_for(root))
    assert result["adapter_changes_output"] and result["max_abs_logit_diff"] > 1e-3
    assert math.isfinite(result["base_eval_loss"]) and math.isfinite(result["adapter_eval_loss"])
    assert result["base_eval_loss"] != pytest.approx(result["adapter_eval_loss"], abs=1e-6)
    assert result["base_perplexity"] == pytest.approx(math.exp(result["base_eval_loss"]))
    assert len(result["samples"]) == 2 and all(isinstance(s["adapter"], str) for s in result["samples"])


def test_a_no_op_adapter_changes_nothing(setup):
    root, base = setup
    result = evaluate_adapter(root / "tok", base, save_adapter(base, root / "a0", 0.0), cfg_for(root))
    assert not result["adapter_changes_output"]
    assert result["adapter_eval_loss"] == pytest.approx(result["base_eval_loss"], rel=1e-6)


def test_prompt_is_the_first_sequence_up_to_its_first_loss_token(setup):
    root, _ = setup
    row = load_rows(root / "tok" / "eval")[0]
    # pattern rows: token 0 is the prompt, token 1 the first one with a loss (predicted from token 0)
    assert prompt_ids(row) == row.input_ids[:1].tolist()

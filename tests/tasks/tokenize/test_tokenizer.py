"""The offline sample tokenizer: deterministic, round-trips text, and its chat template masks assistant turns."""
from __future__ import annotations

import pyarrow as pa
import pytest

from schemas.record import RECORD_SCHEMA
from tasks.core.stage import ShardWriter
from tasks.tokenize.tokenizer import (
    CHAT_TEMPLATE,
    load_tokenizer,
    tokenizer_corpus,
    tokenizer_digest,
    train_sample_tokenizer,
)

TEXTS = ["Hello world, how are you?", "I am fine, thanks. The weather is nice today.",
         "What is 2+2? It is 4.", "Ünïcödé and emoji 🙂 survive byte-level BPE."] * 20

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How are you?"},
    {"role": "user", "content": "fine\n"},
    {"role": "assistant", "content": "\nGreat  news 🙂."},
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return train_sample_tokenizer(TEXTS, tmp_path_factory.mktemp("tok") / "sample", vocab_size=400)


def test_training_is_deterministic(tok_dir, tmp_path):
    again = train_sample_tokenizer(TEXTS, tmp_path / "again", vocab_size=400)
    assert tokenizer_digest(str(again)) == tokenizer_digest(str(tok_dir))
    assert tokenizer_digest(str(tok_dir)) != tokenizer_digest("some/hub-model")


def test_digest_covers_tokenizer_files_not_weights(tok_dir, tmp_path):
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(tok_dir, model_dir)
    before = tokenizer_digest(str(model_dir))
    (model_dir / "model.safetensors").write_bytes(b"weights" * 1000)
    (model_dir / "config.json").write_text("{}")
    assert tokenizer_digest(str(model_dir)) == before
    (model_dir / "chat_template.jinja").write_text("{{ messages }}")
    assert tokenizer_digest(str(model_dir)) != before


def test_special_tokens_and_round_trip(tok_dir):
    tok = load_tokenizer(str(tok_dir))
    assert tok.bos_token == "<|begin_of_text|>" and tok.eos_token == "<|eot_id|>" and tok.pad_token == "<|pad|>"
    assert tok.unk_token is not None
    for text in TEXTS[:4]:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_chat_template_masks_exactly_the_assistant_turns(tok_dir):
    tok = load_tokenizer(str(tok_dir))
    out = tok.apply_chat_template(CONV, return_dict=True, return_assistant_tokens_mask=True)
    kept = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tok.decode(kept) == "Hello! How are you?<|eot_id|>\nGreat  news 🙂.<|eot_id|>"
    rendered = tok.apply_chat_template(CONV[:2], tokenize=False, add_generation_prompt=True)
    assert rendered.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>")
    assert rendered.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_load_sets_pad_and_fallback_template(tok_dir, tmp_path):
    from transformers import AutoTokenizer

    bare = AutoTokenizer.from_pretrained(str(tok_dir))
    bare.pad_token = None
    bare.chat_template = None
    bare.save_pretrained(tmp_path / "bare")
    tok = load_tokenizer(str(tmp_path / "bare"))
    assert tok.pad_token == tok.eos_token
    assert tok.chat_template == CHAT_TEMPLATE
    custom = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert load_tokenizer(str(tmp_path / "bare"), chat_template=custom).chat_template == custom
    assert load_tokenizer(str(tok_dir), chat_template=custom).chat_template == CHAT_TEMPLATE  # own one wins


def test_record_texts_reads_message_contents(tmp_path):
    rows = [{"id": "a", "source": "s", "annotations": [], "meta": "{}",
             "messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]},
            {"id": "b", "source": "s", "annotations": [], "meta": "{}",
             "messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a2"}]}]
    with ShardWriter(tmp_path, RECORD_SCHEMA) as w:
        w.write(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA))
    assert list(tokenizer_corpus(tmp_path)) == ["q1", "a1", "a2"]

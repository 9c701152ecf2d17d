"""Tokenizers: train the offline sample tokenizer, load any tokenizer with a pad token and a chat template.

The sample tokenizer is a byte-level BPE (GPT-2/Llama-3 style: every byte is in the alphabet, so no text is
ever unknown) trained with the ``tokenizers`` library on the curated corpus, so the whole pipeline runs
offline with nothing downloaded. Its chat template follows Llama 3's shape: a role header per turn, an
end-of-turn token, and ``{% generation %}`` around what the assistant says so
``apply_chat_template(..., return_assistant_tokens_mask=True)`` marks exactly the tokens that carry a loss.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from tasks.core.stage import iter_batches

BOS, EOS, PAD, UNK = "<|begin_of_text|>", "<|eot_id|>", "<|pad|>", "<|unk|>"
END_OF_TEXT, HEADER_START, HEADER_END = "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"
SPECIAL_TOKENS = [PAD, UNK, BOS, END_OF_TEXT, HEADER_START, HEADER_END, EOS]

# Llama-3-like template that works with any tokenizer: it uses the tokenizer's own bos/eos tokens, so the
# end-of-turn is eos (for the sample tokenizer eos *is* <|eot_id|>, which also makes generate() stop at the
# end of the assistant's turn). The end-of-turn token sits inside {% generation %}: the model must learn to
# stop, so it carries a loss. The header before each assistant turn does not.
CHAT_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}"
    "{% else %}"
    "{{ message['content'] }}{{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def train_sample_tokenizer(texts: Iterable[str], out_dir: Path, vocab_size: int = 2048) -> Path:
    """Train a byte-level BPE on ``texts`` and save it as a transformers fast tokenizer in ``out_dir``.

    Deterministic: the same texts in the same order give byte-identical files.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=None))  # byte-level: every byte has a token, nothing is unknown
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps each token's character span exact, which the assistant mask relies on.
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        additional_special_tokens=[END_OF_TEXT, HEADER_START, HEADER_END],
        model_max_length=1 << 20, padding_side="right", clean_up_tokenization_spaces=False,
    )
    tok.chat_template = CHAT_TEMPLATE
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out_dir)
    return out_dir


def load_tokenizer(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False,
                   chat_template: str | None = None):
    """AutoTokenizer with a pad token (eos when it has none) and a chat template (``chat_template`` or ours)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        # Reusing eos adds no embedding row; pads never carry a loss (labels are -100) so the clash is harmless.
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    if not tok.chat_template:
        tok.chat_template = chat_template or CHAT_TEMPLATE
    return tok


def tokenizer_corpus(records_dir: Path) -> Iterator[str]:
    """The corpus a sample tokenizer learns from: every message content of the RECORD_SCHEMA shards in
    ``records_dir``, one string per message, in shard order."""
    for batch in iter_batches(records_dir, columns=["messages"]):
        for messages in batch.column("messages").to_pylist():
            for message in messages or []:
                if message and message.get("content"):
                    yield message["content"]


_TOKENIZER_FILE_PREFIXES = ("tokenizer", "special_tokens_map", "added_tokens", "vocab", "merges", "spiece",
                            "sentencepiece", "chat_template")


def is_tokenizer_file(name: str) -> bool:
    """Files that define a tokenizer, as opposed to model weights sitting in the same directory."""
    return name.startswith(_TOKENIZER_FILE_PREFIXES) or name.endswith(".jinja")


def tokenizer_digest(name_or_path: str, revision: str | None = None) -> str:
    """A content hash of a local tokenizer's files (not the weights beside them: a model directory can hold
    gigabytes), or of the hub id + revision otherwise."""
    path = Path(name_or_path)
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file() and is_tokenizer_file(p.name)):
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
            h.update(f.read_bytes())
    else:
        h.update(f"{name_or_path}@{revision}".encode())
    return h.hexdigest()[:16]

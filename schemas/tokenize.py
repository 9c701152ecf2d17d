"""Config of tokenization: chat template, prompt masking, length policy and packing; the tokenized row schema."""
from __future__ import annotations

from typing import ClassVar, Literal

import pyarrow as pa
from pydantic import Field

from schemas.base import StrictModel


class TokenizeConfig(StrictModel):
    SPEED_ONLY: ClassVar[tuple[str, ...]] = ("num_proc",)  # see StrictModel.SPEED_ONLY
    max_seq_len: int = Field(512, ge=16, description="Longest sequence (and packed row) in tokens.")
    train_on: Literal["assistant", "all"] = Field("assistant", description="Which tokens carry a loss.")
    overlong: Literal["drop", "truncate"] = Field("drop", description="What happens to records over max_seq_len.")
    packing: bool = Field(True, description="Pack records into rows of max_seq_len (best-fit decreasing); "
                                            "off: one record per row, padded per batch by collate.")
    pack_eval: bool = Field(True, description="Pack the eval split too (always apart from train).")
    chat_template: str | None = Field(None, description="Jinja chat template used when the tokenizer has none.")
    reject_control_tokens: bool = Field(True, description="Reject records whose text spells a special token "
                                                          "(e.g. '<|eot_id|>'), which would fake turn boundaries; "
                                                          "the <think> tags around a reasoning trace are layout, "
                                                          "not text, and pass.")
    reasoning: Literal["last", "all", "strip"] = Field(
        "last", description="Reasoning traces of assistant turns (inline '<think>…</think>' or a "
        "reasoning_content field). 'last': the final reply keeps its reasoning and trains on it, rendered as "
        "the template renders a final turn (under templates that drop it everywhere, as DeepSeek-R1's does, "
        "after the template's generation prompt); earlier turns' reasoning is rendered as the template "
        "renders history (Qwen3 and DeepSeek-R1 drop it, as at inference). 'all': as 'last', and when the "
        "template drops earlier turns' reasoning, each assistant turn becomes its own sequence in which it "
        "is the final turn, so every trace trains (costs tokens: the history repeats). 'strip': remove "
        "reasoning, train on the answers only.")
    on_dropped_content: Literal["reject", "keep"] = Field(
        "reject", description="A record whose system or user text the chat template drops (Mistral's "
        "renders the system prompt only before a final user turn): 'reject' it (counted per template, see "
        "max_template_reject_share) or 'keep' it and train on the conversation as the template renders it.")
    max_template_reject_share: float = Field(
        0.05, ge=0, le=1, description="Fail the stage when more than this share of records is rejected "
        "for what the chat template does (drops, rewrites or repeats a message, raises, or masks that fail "
        "verification), naming the behaviour and the key to change.")
    num_proc: int = Field(1, ge=1, description="Processes for batched tokenization. 1 is fastest on small "
                                               "machines (the Rust tokenizer already uses every core); more "
                                               "spawns workers, so a calling script needs the "
                                               "`if __name__ == '__main__':` guard.")
    batch_size: int = Field(1000, ge=1, description="Records per tokenizer call.")
    pack_window: int = Field(50_000, ge=1, description="Sequences packed together at most; bounds memory "
                                                       "on big corpora at a tiny cost in packing efficiency.")


# The label of a token that carries no loss (PyTorch cross-entropy's default ignore_index).
IGNORE_INDEX = -100

# One tokenized row: one or more whole records laid end to end (see tasks.tokenize.packing).
TOKENIZED_SCHEMA = pa.schema([
    ("input_ids", pa.list_(pa.int32())),
    ("labels", pa.list_(pa.int32())),  # -100 where there is no loss
    ("position_ids", pa.list_(pa.int32())),  # restart at 0 at every packed record
    ("record_ids", pa.list_(pa.string())),  # which records the row holds, in order
    ("num_tokens", pa.int32()),
    ("num_seqs", pa.int32()),
    ("num_loss_tokens", pa.int32()),
])

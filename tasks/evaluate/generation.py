"""Greedy, batched answers to chat prompts: the chat template's generation prompt, left padding, a length cap.

Left padding is what a decoder needs in a batch: every prompt ends at the same position, so the first new
token of each row is predicted from its own last prompt token. The attention mask hides the pads and
``generate`` derives position ids from it, so a padded prompt is answered exactly as it is alone
(``test_batched_answers_equal_one_by_one`` pins that). Prompts are batched in length order, which keeps pads
few, and answers come back in the callers' order.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class Prompts:
    """Encoded prompts: token ids of each that fits, and the indices (into the input) of those that did not."""

    ids: list[list[int]]
    kept: list[int]  # index into the input of each entry of ids
    too_long: list[int]


def encode_prompts(tokenizer, conversations: Sequence[list[dict]], max_prompt_tokens: int) -> Prompts:
    """Render each conversation with the chat template and its generation prompt (the assistant header),
    tokenized as the template spells it (no extra BOS). Longer ones than ``max_prompt_tokens`` are listed in
    ``too_long``, never cut: a truncated prompt would be scored against a reference to a question it lost."""
    ids, kept, too_long = [], [], []
    for i, conv in enumerate(conversations):
        text = tokenizer.apply_chat_template(list(conv), add_generation_prompt=True, tokenize=False)
        enc = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(enc) > max_prompt_tokens:
            too_long.append(i)
        else:
            ids.append(list(enc))
            kept.append(i)
    return Prompts(ids, kept, too_long)


def stop_token_ids(model, tokenizer) -> list[int]:
    """The tokens that end an answer: the model's generation eos (often a list, e.g. Llama 3's end of turn
    and end of text) and the tokenizer's eos."""
    ids: list[int] = []
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (eos if isinstance(eos, (list, tuple)) else [eos]) + [tokenizer.eos_token_id]:
        if value is not None and int(value) not in ids:
            ids.append(int(value))
    return ids


def left_pad(batch: Sequence[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack prompts padded on the left, with the attention mask that hides the pads."""
    width = max(len(x) for x in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, x in enumerate(batch):
        if x:
            ids[row, width - len(x):] = torch.tensor(x, dtype=torch.long)
            mask[row, width - len(x):] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def generate_answers(model, tokenizer, prompt_ids: Sequence[list[int]], max_new_tokens: int, batch_size: int,
                     device: torch.device | str) -> list[str]:
    """Greedy answers (special tokens dropped, surrounding whitespace trimmed) in the order of ``prompt_ids``.

    An answer stops at a stop token (``stop_token_ids``) or after ``max_new_tokens`` tokens.
    """
    device = torch.device(device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = stop_token_ids(model, tokenizer)
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    answers: list[str] = [""] * len(prompt_ids)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        ids, mask = left_pad([prompt_ids[i] for i in chunk], pad_id, device)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             num_beams=1, pad_token_id=pad_id, eos_token_id=stops or None,
                             temperature=None, top_p=None, top_k=None)
        new = out[:, ids.shape[1]:].tolist()
        for i, tokens in zip(chunk, new, strict=True):
            cut = next((k for k, t in enumerate(tokens) if t in stops), len(tokens))
            answers[i] = tokenizer.decode(tokens[:cut], skip_special_tokens=True).strip()
    return answers

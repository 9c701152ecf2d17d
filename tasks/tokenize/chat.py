"""Chat records to token ids and labels: chat template, prompt masking, length policy. No Prefect here, so
worker processes (``num_proc > 1``) start without importing the orchestration stack.

Labels: with ``train_on="assistant"`` only assistant turns (their content and the end-of-turn token) carry a
loss; everything else is -100. The assistant spans come from the template's ``{% generation %}`` blocks when
it has them (what ``apply_chat_template(return_assistant_tokens_mask=True)`` uses), otherwise by finding each
message's text verbatim in the rendered conversation (most hub templates, e.g. Llama 3's or ChatML, have no
generation blocks). The first token of every record is always -100: nothing predicts it, and in a packed row
that is what stops the last token of one record from being trained to predict the next record.

Speed: the public ``apply_chat_template`` marks assistant tokens in a Python loop over every token. We render
with transformers' own renderer, tokenize with the Rust backend, and turn spans into masks with one numpy
``searchsorted`` per record; ``test_fast_path_matches_apply_chat_template`` pins the result to the public API.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np

from schemas.tokenize import IGNORE_INDEX, TokenizeConfig
from tasks.tokenize.packing import TokenizedSeq

_GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")
Encoded = tuple[np.ndarray, np.ndarray]  # (input_ids int32, loss mask bool)


@dataclass
class Reject:
    index: int  # row in the input batch
    reason: str
    detail: str
    num_tokens: int | None = None


@dataclass
class EncodedBatch:
    seqs: list[TokenizedSeq] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    truncated: int = 0


def mask_method(tok, train_on: str) -> str:
    """'all' (every token), 'generation' ({% generation %} blocks) or 'search' (verbatim message text)."""
    if train_on == "all":
        return "all"
    return "generation" if _GENERATION_BLOCK.search(tok.chat_template or "") else "search"


def spans_to_mask(offsets: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    """True for every token whose character range overlaps one of the sorted ``spans``."""
    mask = np.zeros(len(offsets), dtype=bool)
    if not spans or not len(offsets):
        return mask
    starts = np.array([s for s, _ in spans])
    ends = np.array([e for _, e in spans])
    first = np.searchsorted(ends, offsets[:, 0], side="right")  # first span ending after the token starts
    ok = first < len(spans)
    mask[ok] = offsets[ok, 1] > starts[first[ok]]
    return mask


def assistant_spans(text: str, conv: list[dict], control_tokens: list[str]) -> list[tuple[int, int]]:
    """Character spans of the assistant turns in ``text``, found in message order, each extended over the
    control token (end of turn) that follows it after optional whitespace. Raises ValueError when the
    template rewrote a message beyond trimming it."""
    spans, cursor = [], 0
    for m in conv:
        content = m["content"]
        if not content.strip():
            continue  # nothing to find, and nothing to learn from an empty turn
        at = text.find(content, cursor)
        if at < 0:
            content = content.strip()  # some templates trim messages
            at = text.find(content, cursor)
        if at < 0:
            raise ValueError(f"{m['role']} message not found verbatim in the rendered template")
        end = at + len(content)
        if m["role"] == "assistant":
            rest = text[end:]
            gap = len(rest) - len(rest.lstrip())
            follow = next((t for t in control_tokens if rest.startswith(t, gap)), None)
            spans.append((at, end + gap + len(follow) if follow else end))
        cursor = end
    return spans


def control_tokens(tok) -> list[str]:
    # Longest first, so "<|eot_id|>" wins over a shorter token that happens to prefix it.
    return sorted({t for t in tok.all_special_tokens if t} | {t.content for t in tok.added_tokens_decoder.values()},
                  key=len, reverse=True)


def render(tok, convs: list[list[dict]], with_spans: bool) -> tuple[list[str], list[list[tuple[int, int]]] | None]:
    """Rendered chats (and their {% generation %} spans), exactly as ``apply_chat_template`` renders them."""
    try:
        from transformers.utils.chat_template_utils import render_jinja_template
    except ImportError:  # a transformers without the helper: the public API, slower but equal
        return _render_public(tok, convs, with_spans)
    try:
        texts, spans = render_jinja_template(conversations=convs, chat_template=tok.get_chat_template(),
                                             return_assistant_tokens_mask=with_spans, **tok.special_tokens_map)
    except TypeError:  # the private helper's signature moved; a template's own TypeError simply recurs below
        return _render_public(tok, convs, with_spans)
    return texts, (spans if with_spans else None)


def _render_public(tok, convs, with_spans):
    texts = tok.apply_chat_template(convs, tokenize=False)
    if not with_spans:
        return texts, None
    out = tok.apply_chat_template(convs, return_dict=True, return_assistant_tokens_mask=True,
                                  tokenizer_kwargs={"return_offsets_mapping": True})
    spans = []  # rebuild character spans from the public token mask
    for offs, mask in zip(out["offset_mapping"], out["assistant_masks"], strict=True):
        spans.append([tuple(o) for o, m in zip(offs, mask, strict=True) if m])
    return texts, spans


def encode_chats(tok, convs: list[list[dict]], method: str) -> list[Encoded]:
    """Token ids and loss masks of a batch of conversations; raises on any template error."""
    if method == "generation":
        texts, spans = render(tok, convs, with_spans=True)
    else:
        texts, _ = render(tok, convs, with_spans=False)
        if method == "all":
            encs = tok.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)
            return [(np.asarray(e.ids, dtype=np.int32), np.ones(len(e.ids), dtype=bool)) for e in encs]
        controls = control_tokens(tok)
        spans = [assistant_spans(t, c, controls) for t, c in zip(texts, convs, strict=True)]
    encs = tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    return [(np.asarray(e.ids, dtype=np.int32),
             spans_to_mask(np.asarray(e.offsets, dtype=np.int64).reshape(-1, 2), sp))
            for e, sp in zip(encs, spans, strict=True)]


def encode_isolated(tok, convs: list[list[dict]], method: str) -> list[Encoded | str]:
    """Encode a batch; if it fails, encode record by record so one bad record only rejects itself."""
    try:
        return list(encode_chats(tok, convs, method))
    except Exception:  # noqa: BLE001  (any template or tokenizer error becomes a per-record reject below)
        results: list[Encoded | str] = []
        for conv in convs:
            try:
                results.extend(encode_chats(tok, [conv], method))
            except Exception as exc:  # noqa: BLE001
                results.append(f"{type(exc).__name__}: {exc}"[:500])
        return results


def encode_records(tok, ids: list[str], messages: list, cfg: TokenizeConfig, method: str) -> EncodedBatch:
    """Template, mask and length-police one batch of records; every record becomes a sequence or a Reject."""
    out = EncodedBatch()
    todo: list[tuple[int, list[dict]]] = []
    # Text that spells a control token would be encoded as that token: a fake end of turn or role header.
    controls = control_tokens(tok) if cfg.reject_control_tokens else []
    control_re = re.compile("|".join(re.escape(t) for t in controls)) if controls else None
    for j, msgs in enumerate(messages):
        conv = [{"role": m.get("role") or "", "content": m.get("content") or ""} for m in (msgs or []) if m]
        hit = next(((m["role"], h.group()) for m in conv if control_re and (h := control_re.search(m["content"]))),
                   None)
        if not conv:
            out.rejects.append(Reject(j, "no_messages", "the record has no messages"))
        elif hit:
            out.rejects.append(Reject(j, "control_token_in_content", f"a {hit[0]} message contains {hit[1]!r}"))
        elif cfg.train_on == "assistant" and not any(m["role"] == "assistant" and m["content"].strip()
                                                     for m in conv):
            out.rejects.append(Reject(j, "no_assistant_turn", "no assistant message with content"))
        else:
            todo.append((j, conv))
    encoded = encode_isolated(tok, [c for _, c in todo], method) if todo else []
    limit = cfg.max_seq_len
    for (j, _), enc in zip(todo, encoded, strict=True):
        if isinstance(enc, str):
            out.rejects.append(Reject(j, "template_error", enc))
            continue
        input_ids, mask = enc
        n = len(input_ids)
        if n == 0:
            out.rejects.append(Reject(j, "empty_after_template", "the template rendered no tokens", 0))
            continue
        labels = np.where(mask, input_ids, IGNORE_INDEX).astype(np.int32)
        labels[0] = IGNORE_INDEX
        cut = False
        if n > limit:
            if cfg.overlong == "drop":
                out.rejects.append(Reject(j, "too_long", f"{n} tokens > max_seq_len {limit}", n))
                continue
            input_ids, labels, cut = input_ids[:limit], labels[:limit], True
        if not (labels != IGNORE_INDEX).any():
            why = "truncation cut every assistant token" if cut else "the template marks no assistant tokens"
            out.rejects.append(Reject(j, "no_loss_tokens", why, n))
            continue
        out.truncated += cut
        out.seqs.append(TokenizedSeq(ids[j], input_ids, labels))
    return out


# --- worker processes (num_proc > 1): each loads the tokenizer once ---
_WORKER_TOK = None


def init_worker(tokenizer_dir: str, revision: str | None, trust_remote_code: bool, template: str | None) -> None:
    global _WORKER_TOK
    # Parallelism comes from the processes; Rust threads inside each would only fight over the same cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tasks.tokenize.tokenizer import load_tokenizer

    _WORKER_TOK = load_tokenizer(tokenizer_dir, revision, trust_remote_code, template)


def encode_in_worker(ids: list[str], messages: list, cfg: TokenizeConfig, method: str) -> EncodedBatch:
    return encode_records(_WORKER_TOK, ids, messages, cfg, method)

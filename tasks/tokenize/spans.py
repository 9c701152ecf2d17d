"""Where each message sits in a rendered chat, found structurally, never by searching for its text.

A conversation is rendered twice in one call: as it is, and with the text of every message (and of every
assistant reasoning trace) replaced by a unique sentinel. The sentinel render is the template's own markup
with a hole per slot; the real render must be that markup with the real texts put back, each as given or
trimmed (the one rewrite common templates make, e.g. Llama 3's and Gemma's ``| trim``). Then every slot's
character span is known exactly, and a reply that also occurs in the markup (a one-letter answer, a role
word, a word of an injected default system prompt) cannot be matched there: nothing is searched for.

When the real render is not that (a template that rewrites a text some other way), each trained slot is
located on its own: render once more with only that slot swapped for a sentinel; the span is where the two
renders differ, and outside it they must be identical, or the template's markup depends on the text and the
record is rejected (``template_rewrites_content``).

The sentinel render also shows what the template does with each slot: missing means dropped (Mistral's
template renders the system prompt only before a final user turn; Qwen3's and DeepSeek-R1's drop the
reasoning of earlier turns), twice means repeated, out of message order means moved.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# Reasoning written inline, as reasoning models emit it: "<think>…</think>answer" (the opening tag is optional:
# DeepSeek-R1's generation prompt already holds it). The whitespace after the closing tag is layout, not answer.
_INLINE_REASONING = re.compile(r"\A(\s*<think>)?(.*?)(</think>\s*)(.*)\Z", re.S)
REASONING_FIELDS = ("reasoning_content", "reasoning", "thinking")  # message keys transformers also reads

Slot = tuple[int, str]  # (message index, "content" | "reasoning")


@dataclass
class Turn:
    """One message as the encoder sees it: the reasoning, if any, split from what is said."""

    role: str
    text: str
    reasoning: str | None = None
    train: bool = False  # an assistant turn that carries a loss
    head: str = THINK_OPEN + "\n"  # inline layout: content == head + reasoning + mid + text
    mid: str = "\n" + THINK_CLOSE + "\n\n"

    def slots(self, i: int) -> list[Slot]:
        return ([(i, "reasoning")] if self.reasoning is not None else []) + [(i, "content")]


def to_turn(message: dict, strip_reasoning: bool) -> Turn:
    """A record's message as a Turn: inline ``<think>`` reasoning or a reasoning field is split off the text
    of assistant turns (or dropped with ``strip_reasoning``); ``weight: 0`` marks a turn without loss."""
    role, content = message.get("role") or "", message.get("content") or ""
    weight = message.get("weight")
    turn = Turn(role, content, train=role == "assistant" and weight not in (0, 0.0, False))
    if role != "assistant":
        return turn
    reasoning = next((message[k] for k in REASONING_FIELDS if message.get(k) is not None), None)
    if reasoning is None and THINK_CLOSE in content and (m := _INLINE_REASONING.match(content)):
        turn.head, reasoning, turn.mid, turn.text = m.group(1) or "", m.group(2), m.group(3), m.group(4)
    if reasoning is not None and not strip_reasoning:
        turn.reasoning = reasoning
    return turn


@dataclass(frozen=True)
class TemplateInfo:
    """What a template does, learnt once from probe renders."""

    name: str  # the tokenizer's name or path
    digest: str  # sha256 of the template text, first 12 hex digits: which template, exactly
    reasoning_field: bool  # reads message.reasoning_content (Qwen3) rather than inline <think> text
    end_of_turn: tuple[str, ...]  # control tokens the template emits right after an assistant reply
    final_end_of_turn: bool  # ... also after the last reply (vLLM's ChatML example emits none there)


@dataclass
class Layout:
    text: str
    slots: dict[Slot, tuple[int, int]] = field(default_factory=dict)  # located slots: character spans
    dropped: list[Slot] = field(default_factory=list)
    repeated: list[Slot] = field(default_factory=list)
    moved: list[Slot] = field(default_factory=list)


class TemplateRewrite(ValueError):
    """The template's markup around a slot depends on the slot's text."""


def render(tok, convs: list[list[dict]], add_generation_prompt: bool = False) -> list[str]:
    """Chats rendered exactly as ``apply_chat_template(tokenize=False)`` renders them."""
    try:
        from transformers.utils.chat_template_utils import render_jinja_template
    except ImportError:  # a transformers without the helper: the public API, slower but equal
        return tok.apply_chat_template(convs, tokenize=False, add_generation_prompt=add_generation_prompt)
    try:
        texts, _ = render_jinja_template(conversations=convs, chat_template=tok.get_chat_template(),
                                         add_generation_prompt=add_generation_prompt, **tok.special_tokens_map)
    except TypeError as exc:  # the private helper's signature moved; a template's own TypeError recurs below
        if "unexpected keyword" not in str(exc):
            raise
        return tok.apply_chat_template(convs, tokenize=False, add_generation_prompt=add_generation_prompt)
    return texts


def control_tokens(tok) -> tuple[str, ...]:
    """Special and added tokens, longest first (so "<|eot_id|>" wins over a token that prefixes it)."""
    found = {t for t in tok.all_special_tokens if t} | {t.content for t in tok.added_tokens_decoder.values()}
    return tuple(sorted(found, key=len, reverse=True))


def _sentinels(texts: list[str]):
    """A maker of sentinels from two private-use characters that occur in none of ``texts``."""
    for code in range(0xE000, 0xF8FF, 2):
        a, b = chr(code), chr(code + 1)
        if not any(a in t or b in t for t in texts):
            return lambda k: f"{a}{k}{b}"
    raise ValueError("no private-use character is free to mark the messages with")


def template_messages(turns: list[Turn], reasoning_field: bool, sub: dict[Slot, str] | None = None) -> list[dict]:
    """The messages handed to the template; ``sub`` replaces slots (by sentinels)."""
    sub = sub or {}
    out = []
    for i, t in enumerate(turns):
        text = sub.get((i, "content"), t.text)
        msg = {"role": t.role, "content": text}
        if t.reasoning is not None:
            r = sub.get((i, "reasoning"), t.reasoning)
            if reasoning_field:
                msg["reasoning_content"] = r
            else:
                msg["content"] = t.head + r + t.mid + text
        out.append(msg)
    return out


def _leading_control(markup: str, controls: tuple[str, ...]) -> str | None:
    rest = markup.lstrip()
    return next((c for c in controls if rest.startswith(c)), None)


def _probe(tok) -> TemplateInfo:
    controls = control_tokens(tok)
    mk = _sentinels([])
    su1, sa1, sr1, su2, sa2, sr2 = (mk(k) for k in range(6))
    conv = [{"role": "user", "content": su1}, {"role": "assistant", "content": sa1, "reasoning_content": sr1},
            {"role": "user", "content": su2}, {"role": "assistant", "content": sa2, "reasoning_content": sr2}]
    try:
        text, user_only = render(tok, [conv, conv[:1]])
    except Exception as exc:  # noqa: BLE001  (any template error: say which template, and why)
        raise ValueError(f"the chat template cannot render a plain user/assistant conversation: {exc}") from exc
    # The token that opens a user turn is not an end of turn, even where a template emits nothing between a
    # reply and the next user header.
    bos = tok.bos_token or ""
    header = user_only[:user_only.find(su1)]
    opener = _leading_control(header[len(bos):] if bos and header.startswith(bos) else header, controls)
    ends = []
    for sent, nxt in ((sa1, su2), (sa2, None)):
        at = text.find(sent)
        after = text[at + len(sent):text.find(nxt) if nxt else len(text)] if at >= 0 else ""
        token = _leading_control(after, controls)
        ends.append(token if token != opener else None)
    eot = tuple(dict.fromkeys(t for t in ends if t))
    name = getattr(tok, "name_or_path", "") or "tokenizer"
    if os.path.isabs(name):  # a local model: its folder's name, so the ledger does not depend on the workdir
        name = os.path.basename(os.path.normpath(name))
    digest = hashlib.sha256(tok.get_chat_template().encode()).hexdigest()[:12]
    return TemplateInfo(name=name, digest=digest, reasoning_field=sr1 in text or sr2 in text, end_of_turn=eot,
                        final_end_of_turn=ends[1] is not None)


_PROBED: dict[tuple[int, str, str], TemplateInfo] = {}


def probe(tok) -> TemplateInfo:
    """How ``tok``'s chat template treats reasoning and ends a turn (cached per tokenizer and template)."""
    key = (id(tok), getattr(tok, "name_or_path", ""), tok.get_chat_template())
    if key not in _PROBED:
        _PROBED[key] = _probe(tok)
    return _PROBED[key]


def common_prefix(a: str, b: str) -> int:
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:  # binary search on slice equality: C-speed compares instead of a Python loop per char
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _assemble(real: str, sent: str, order: list[tuple[int, Slot]], marks: dict[Slot, str],
              texts: dict[Slot, str]) -> dict[Slot, tuple[int, int]] | None:
    """Slot spans if ``real`` is the sentinel render's markup with each slot's text (as given or trimmed)
    put back; None otherwise."""
    spans, pos_r, pos_s = {}, 0, 0
    for n, (at, slot) in enumerate(order):
        markup = sent[pos_s:at]
        if not real.startswith(markup, pos_r):
            return None
        pos_r, pos_s = pos_r + len(markup), at + len(marks[slot])
        nxt = sent[pos_s:order[n + 1][0]] if n + 1 < len(order) else sent[pos_s:]
        fits = [c for c in dict.fromkeys((texts[slot], texts[slot].strip()))
                if real.startswith(c, pos_r) and real.startswith(nxt, pos_r + len(c))]
        if len(fits) != 1:
            return None
        spans[slot] = (pos_r, pos_r + len(fits[0]))
        pos_r += len(fits[0])
    return spans if real[pos_r:] == sent[pos_s:] else None


def layout(tok, turns: list[Turn], info: TemplateInfo, locate: set[Slot]) -> Layout:
    """Render ``turns`` and locate every slot; ``locate`` are the slots that must have exact spans (the
    trained ones). Raises TemplateRewrite when one of them cannot be located structurally."""
    texts = {s: (t.reasoning if s[1] == "reasoning" else t.text)
             for i, t in enumerate(turns) for s in t.slots(i)}
    mk = _sentinels([*texts.values(), *(t.head + t.mid for t in turns)])
    marks = {s: mk(k) for k, s in enumerate(texts)}
    real_msgs = template_messages(turns, info.reasoning_field)
    real, sent = render(tok, [real_msgs, template_messages(turns, info.reasoning_field, marks)])
    out = Layout(real)
    order = []
    for s, m in marks.items():
        first = sent.find(m)
        if first < 0:
            out.dropped.append(s)
        elif sent.find(m, first + 1) >= 0:
            out.repeated.append(s)
        else:
            order.append((first, s))
    order.sort()
    natural = sorted(order, key=lambda o: (o[1][0], o[1][1] == "content"))
    out.moved = [s for (_, s), (_, n) in zip(order, natural, strict=True) if s != n]
    spans = None if out.repeated else _assemble(real, sent, order, marks, texts)
    if spans is not None:
        out.slots = spans
        return out
    todo = [s for _, s in order if s in locate]
    variants = render(tok, [template_messages(turns, info.reasoning_field, {s: marks[s]}) for s in todo])
    for s, var in zip(todo, variants, strict=True):
        p = common_prefix(real, var)
        q = common_prefix(real[p:][::-1], var[p:][::-1])
        if var[p:len(var) - q] != marks[s]:
            i, kind = s
            raise TemplateRewrite(f"the template renders the markup around {turns[i].role} message {i}'s "
                                  f"{kind} differently depending on its text")
        out.slots[s] = (p, len(real) - q)
    return out


def extend_over_end_of_turn(text: str, end: int, info: TemplateInfo) -> int:
    """``end`` moved past the end-of-turn token that follows it after optional whitespace, if one does: the
    model must learn to stop, so that token carries a loss."""
    rest = text[end:]
    gap = len(rest) - len(rest.lstrip())
    token = next((t for t in info.end_of_turn if rest.startswith(t, gap)), None)
    return end + gap + len(token) if token else end

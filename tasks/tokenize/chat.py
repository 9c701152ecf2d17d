"""Chat records to token ids and labels: the chat template, assistant-only masks, the reasoning policy, the
length policy. No Prefect here, so worker processes (``num_proc > 1``) start without the orchestration stack.

Labels: with ``train_on="assistant"`` only assistant turns carry a loss (their reasoning, where the policy
keeps it, the reply, and the end-of-turn token that follows it); everything else is -100. Each reply is
located structurally (tasks.tokenize.spans): never by searching for its text, so a reply that also occurs in
the markup cannot be matched there. Spans map to tokens through the tokenizer's character offsets, and every
mask is verified where it is made (tasks.tokenize.verify). The first token of every sequence is -100:
nothing predicts it, and in a packed row that stops one record's last token from predicting the next record.

A record is rejected with a reason, never trained on silently wrong: the template raised, dropped or
repeated a message, rewrote the markup around a reply, or the mask failed verification. ``encode_chat`` is
the same path for one conversation, for users checking a template before training.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from schemas.tokenize import IGNORE_INDEX, TokenizeConfig
from tasks.tokenize.packing import TokenizedSeq
from tasks.tokenize.spans import (
    THINK_OPEN,
    TemplateInfo,
    TemplateRewrite,
    Turn,
    common_prefix,
    control_tokens,
    extend_over_end_of_turn,
    layout,
    probe,
    render,
    template_messages,
    to_turn,
)
from tasks.tokenize.verify import check_mask, spans_to_mask

# Reasons that say what the template did; their share is capped by tokenize.max_template_reject_share.
TEMPLATE_REASONS = ("template_error", "template_dropped_content", "template_repeats_content",
                    "template_rewrites_content", "template_drops_reasoning", "mask_mismatch")


NO_MASK = "the template marks no assistant tokens"


class EmptyMasksError(ValueError):
    """A whole batch would train on nothing because of what the template does."""


class MaskReject(ValueError):
    """A record that cannot be masked right; ``reason`` is its ledger key."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


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
    behaviours: Counter = field(default_factory=Counter)  # template behaviours seen, records per behaviour


@dataclass
class Planned:
    """One sequence to tokenize: the rendered text and the character spans that carry a loss."""

    text: str
    spans: list[tuple[int, int]]


def mask_method(tok, train_on: str) -> str:
    """'all' (every token) or 'structural' (assistant spans located by sentinel renders)."""
    return "all" if train_on == "all" else "structural"


def to_turns(messages: list, cfg: TokenizeConfig) -> list[Turn]:
    return [to_turn(m, strip_reasoning=cfg.reasoning == "strip") for m in (messages or []) if m]


def check_turns(turns: list[Turn], cfg: TokenizeConfig, control_re: re.Pattern | None) -> None:
    """Reject before rendering what cannot train: no messages, no assistant reply, text spelling a control
    token (a fake end of turn or role header; the reasoning tags themselves are layout, not text)."""
    if not turns:
        raise MaskReject("no_messages", "the record has no messages")
    if control_re is not None:
        for t in turns:
            for part in (t.text, t.reasoning or ""):
                if hit := control_re.search(part):
                    raise MaskReject("control_token_in_content", f"a {t.role} message contains {hit.group()!r}")
    if cfg.train_on == "assistant":
        replies = [t for t in turns if t.role == "assistant" and (t.text.strip() or t.reasoning)]
        if not replies:
            raise MaskReject("no_assistant_turn", "no assistant message with content")
        if not any(t.train for t in replies):
            raise MaskReject("no_trainable_turn", "every assistant message has weight 0")


def _note_layout(lay, turns: list[Turn], trained: set[int], cfg: TokenizeConfig, seen: set[str]) -> None:
    for i, kind in lay.dropped:
        t = turns[i]
        if kind == "reasoning" or not t.text.strip():
            continue  # reasoning has its own policy; an empty message loses nothing
        if t.role == "assistant" and i in trained:
            raise MaskReject("template_dropped_content", f"the template drops assistant message {i}")
        if cfg.on_dropped_content == "reject":
            raise MaskReject("template_dropped_content", f"the template drops the {t.role} message "
                             f"(message {i}); tokenize.on_dropped_content=keep trains without it")
        seen.add(f"{t.role}_dropped")
    for i, kind in lay.repeated:
        if i in trained:
            raise MaskReject("template_repeats_content", f"the template renders assistant message {i}'s "
                             f"{kind} more than once, so no single span is the reply")
        seen.add(f"{turns[i].role}_repeated")
    for i, _ in lay.moved:
        seen.add(f"{turns[i].role}_moved")


# Think tags the template writes right before a reply (Qwen3's "<think>\n…</think>\n\n" block, an inline
# trace's "<think>") belong to the reply: at inference the model writes them after the generation prompt.
_THINK_TAIL = re.compile(r"(?:\s*(?:<think>|</think>))+\s*\Z")


def _turn_start(text: str, lay, first: int) -> int:
    """Where a trained turn starts: at the think tags directly before its first slot, else at the slot."""
    lo = max([e for _, e in lay.slots.values() if e <= first], default=0)
    m = _THINK_TAIL.search(text, lo, first)
    if m is None:
        return first
    return m.start() + len(m.group()) - len(m.group().lstrip())


def _after_generation_prompt(tok, info: TemplateInfo, turns: list[Turn], i: int, text: str,
                             content: tuple[int, int]) -> tuple[str, int, int, int]:
    """The final reply with its reasoning put back, for templates that drop every turn's reasoning
    (DeepSeek-R1's): the template's generation prompt, then reasoning and reply, then the turn's end."""
    prompt = render(tok, [template_messages(turns[:i], info.reasoning_field)], add_generation_prompt=True)[0]
    a, b = content
    keep = common_prefix(prompt, text[:a])  # the history both render alike, up to the reply's own layout
    if text[keep:a].strip():
        raise MaskReject("template_drops_reasoning", "the template drops the final reply's reasoning and its "
                         "generation prompt does not continue the rendered conversation; "
                         "tokenize.reasoning=strip trains on the answers only")
    t, opener = turns[i], prompt[keep:]
    if opener.rstrip().endswith(THINK_OPEN):  # the prompt opened the block: the model writes the rest
        r = t.reasoning[1:] if opener.endswith("\n") and t.reasoning.startswith("\n") else t.reasoning
        body = r + t.mid + text[a:b]
    else:
        body = t.head + t.reasoning + t.mid + text[a:b]
    return prompt + body + text[b:], len(prompt), len(prompt) + len(body), keep


def _spans(tok, info: TemplateInfo, turns: list[Turn], lay, trained: set[int], seen: set[str]) -> Planned:
    text, spans, last = lay.text, [], len(turns) - 1
    for i in sorted(trained):
        t = turns[i]
        if (i, "content") not in lay.slots:
            raise MaskReject("template_dropped_content", f"the template drops assistant message {i}")
        start, end = lay.slots[(i, "content")]
        r = lay.slots.get((i, "reasoning")) if t.reasoning is not None else None
        start = _turn_start(text, lay, r[0] if r else start)
        if t.reasoning is not None and r is None:
            if i == last:
                content = lay.slots[(i, "content")]
                text, start, end, keep = _after_generation_prompt(tok, info, turns, i, text, content)
                if spans and spans[-1][1] > keep:
                    raise MaskReject("template_drops_reasoning", "the generation prompt rewrites an earlier reply")
                seen.add("final_reasoning_after_generation_prompt")
        spans.append((start, extend_over_end_of_turn(text, end, info)))
    if last in trained and not info.final_end_of_turn:
        seen.add("no_end_of_turn_after_last_reply")
    return Planned(text, spans)


def plan_record(tok, info: TemplateInfo, turns: list[Turn], cfg: TokenizeConfig, seen: set[str]) -> list[Planned]:
    """The sequences one record trains as (one, or one per turn under ``reasoning='all'``)."""
    if cfg.train_on == "all":
        return [Planned(render(tok, [template_messages(turns, info.reasoning_field)])[0], [])]
    trained = {i for i, t in enumerate(turns) if t.train and (t.text.strip() or t.reasoning)}
    try:
        lay = layout(tok, turns, info, {s for i in trained for s in turns[i].slots(i)})
        _note_layout(lay, turns, trained, cfg, seen)
        history = [i for i in trained if i != len(turns) - 1 and (i, "reasoning") in lay.dropped]
        if not history:
            return [_spans(tok, info, turns, lay, trained, seen)]
        seen.add("history_reasoning_dropped")
        if cfg.reasoning != "all":
            return [_spans(tok, info, turns, lay, trained, seen)]
        seen.add("reasoning_turns_split")
        out = []
        for k in sorted(trained):  # each turn as the final one, so the template keeps its reasoning
            head = turns[:k + 1]
            out.append(_spans(tok, info, head, layout(tok, head, info, set(head[k].slots(k))), {k}, seen))
        return out
    except TemplateRewrite as exc:
        raise MaskReject("template_rewrites_content", str(exc)) from None


def tokenize_texts(tok, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids int32, character offsets [n, 2]) per text, from the Rust tokenizer in one batch call."""
    encs = tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    return [(np.asarray(e.ids, dtype=np.int32), np.asarray(e.offsets, dtype=np.int64).reshape(-1, 2))
            for e in encs]


def finish(tok, planned: Planned, ids: np.ndarray, offsets: np.ndarray, cfg: TokenizeConfig) -> np.ndarray:
    """Labels of one tokenized sequence, after verifying its mask; raises MaskReject on a mismatch."""
    if cfg.train_on == "all":
        mask = np.ones(len(ids), dtype=bool)
    else:
        mask = spans_to_mask(offsets, planned.spans)
        if problem := check_mask(tok, planned.text, ids, offsets, mask, planned.spans):
            raise MaskReject("mask_mismatch", problem)
    labels = np.where(mask, ids, IGNORE_INDEX).astype(np.int32)
    if len(labels):
        labels[0] = IGNORE_INDEX
    return labels


def control_pattern(tok, cfg: TokenizeConfig) -> re.Pattern | None:
    controls = control_tokens(tok) if cfg.reject_control_tokens else ()
    return re.compile("|".join(re.escape(t) for t in controls)) if controls else None


def encode_chat_sequences(tok, messages: list[dict], cfg: TokenizeConfig | None = None,
                          behaviours: set[str] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every (input_ids, labels) sequence a conversation trains as; raises MaskReject naming the reason.
    ``behaviours`` collects what the template did (keys of tasks.tokenize.report.BEHAVIOURS)."""
    cfg = cfg or TokenizeConfig()
    turns = to_turns(messages, cfg)
    check_turns(turns, cfg, control_pattern(tok, cfg))
    try:
        planned = plan_record(tok, probe(tok), turns, cfg, behaviours if behaviours is not None else set())
    except MaskReject:
        raise
    except Exception as exc:  # noqa: BLE001  (the template raised: a reject like the stage's)
        raise MaskReject("template_error", f"{type(exc).__name__}: {exc}"[:500]) from exc
    out = []
    for p, (ids, offsets) in zip(planned, tokenize_texts(tok, [p.text for p in planned]), strict=True):
        out.append((ids, finish(tok, p, ids, offsets, cfg)))
    return out


def encode_chat(tok, messages: list[dict], cfg: TokenizeConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(input_ids, labels)`` of one conversation, exactly as the tokenize stage encodes it (labels -100
    where there is no loss). Raises MaskReject (a ValueError) with the reason the stage would reject it for.
    Under ``reasoning='all'`` a conversation can train as several sequences: use encode_chat_sequences."""
    seqs = encode_chat_sequences(tok, messages, cfg)
    if len(seqs) != 1:
        raise ValueError(f"this conversation trains as {len(seqs)} sequences under tokenize.reasoning='all'; "
                         "use encode_chat_sequences")
    return seqs[0]


def encode_records(tok, ids: list[str], messages: list, cfg: TokenizeConfig, method: str | None = None
                   ) -> EncodedBatch:
    """Template, mask, verify and length-police one batch; every record becomes sequences or a Reject.
    ``method`` (mask_method's result) is accepted for older callers; ``cfg.train_on`` decides.

    Raises EmptyMasksError when no record of the batch that reached the template has a loss token, for
    template reasons, beyond ``max_template_reject_share``: training on nothing must not start."""
    out = EncodedBatch()
    info = probe(tok)
    control_re = control_pattern(tok, cfg)
    todo: list[tuple[int, list[Planned]]] = []
    for j, msgs in enumerate(messages):
        seen: set[str] = set()
        try:
            turns = to_turns(msgs, cfg)
            check_turns(turns, cfg, control_re)
            todo.append((j, plan_record(tok, info, turns, cfg, seen)))
        except MaskReject as exc:
            out.rejects.append(Reject(j, exc.reason, exc.detail))
        except Exception as exc:  # noqa: BLE001  (any template error becomes this record's reject)
            out.rejects.append(Reject(j, "template_error", f"{type(exc).__name__}: {exc}"[:500]))
        out.behaviours.update(seen)
    templated = len(todo) + sum(r.reason in TEMPLATE_REASONS for r in out.rejects)  # records the template saw
    flat = [p for _, planned in todo for p in planned]
    encoded = iter(tokenize_texts(tok, [p.text for p in flat]) if flat else [])
    limit = cfg.max_seq_len
    for j, planned in todo:
        seqs, reject = [], None
        for p in planned:
            input_ids, offsets = next(encoded)
            if reject is not None:
                continue
            n = len(input_ids)
            try:
                labels = finish(tok, p, input_ids, offsets, cfg)
            except MaskReject as exc:
                reject = Reject(j, exc.reason, exc.detail, n)
                continue
            if n == 0:
                reject = Reject(j, "empty_after_template", "the template rendered no tokens", 0)
            elif n > limit and cfg.overlong == "drop":
                reject = Reject(j, "too_long", f"{n} tokens > max_seq_len {limit}", n)
            else:
                cut = n > limit
                input_ids, labels = input_ids[:limit], labels[:limit]
                if not (labels != IGNORE_INDEX).any():
                    why = "truncation cut every assistant token" if cut else NO_MASK
                    reject = Reject(j, "no_loss_tokens", why, n)
                else:
                    seqs.append((TokenizedSeq(ids[j], input_ids, labels), cut))
        if reject is not None:
            out.rejects.append(reject)
            continue
        out.truncated += any(cut for _, cut in seqs)
        out.seqs.extend(s for s, _ in seqs)
    out.rejects.sort(key=lambda r: r.index)
    lost = [r for r in out.rejects if r.reason in TEMPLATE_REASONS or r.detail == NO_MASK]
    if (cfg.train_on == "assistant" and templated and not out.seqs and len(lost) == templated
            and len(lost) > cfg.max_template_reject_share * len(messages)):
        reasons = Counter(r.reason for r in lost)
        raise EmptyMasksError(f"tokenize: the chat template gives no loss token to any of the {templated} records "
                              f"of a batch {dict(reasons)}; first ({ids[lost[0].index]!r}): {lost[0].detail}. "
                              "See them with `peftpipe masks`.")
    return out


# --- worker processes (num_proc > 1): each loads the tokenizer once ---
_WORKER_TOK = None
_WORKER_ARGS: tuple | None = None


def init_worker(tokenizer_dir: str, revision: str | None, trust_remote_code: bool, template: str | None) -> None:
    """Load this worker process's tokenizer (a process pool's initializer, or a task runner's shard task:
    a second call with the same arguments keeps the one already loaded)."""
    global _WORKER_TOK, _WORKER_ARGS
    args = (tokenizer_dir, revision, trust_remote_code, template)
    if args == _WORKER_ARGS:
        return
    # Parallelism comes from the processes; Rust threads inside each would only fight over the same cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tasks.tokenize.tokenizer import load_tokenizer

    _WORKER_TOK, _WORKER_ARGS = load_tokenizer(tokenizer_dir, revision, trust_remote_code, template), args


def worker_tokenizer():
    """The tokenizer ``init_worker`` loaded in this process."""
    return _WORKER_TOK


def encode_in_worker(ids: list[str], messages: list, cfg: TokenizeConfig) -> EncodedBatch:
    return encode_records(_WORKER_TOK, ids, messages, cfg)

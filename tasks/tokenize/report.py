"""What the chat template did to the data, per template: behaviours seen, records rejected for them, and the
limit on that share (``tokenize.max_template_reject_share``) with a message that names the template's
behaviour and the config key to change.
"""
from __future__ import annotations

import logging
from collections import Counter

log = logging.getLogger(__name__)

# Behaviours that keep the record; counted so that nothing a template moves or drops goes unseen.
BEHAVIOURS = {
    "system_dropped": "drops the system message (kept under tokenize.on_dropped_content=keep)",
    "user_dropped": "drops a user message (kept under tokenize.on_dropped_content=keep)",
    "system_moved": "moves the system message out of message order (e.g. into a user turn)",
    "user_moved": "moves a user message out of message order",
    "assistant_moved": "moves an assistant message out of message order",
    "system_repeated": "renders the system message more than once",
    "user_repeated": "renders a user message more than once",
    "history_reasoning_dropped": "drops the reasoning of earlier assistant turns, as at inference "
                                 "(tokenize.reasoning=all trains every turn's reasoning)",
    "reasoning_turns_split": "trains each assistant turn as its own sequence to keep its reasoning "
                             "(tokenize.reasoning=all)",
    "final_reasoning_after_generation_prompt": "drops every turn's reasoning; the final reply's reasoning is "
                                               "trained after the template's generation prompt",
    "no_end_of_turn_after_last_reply": "emits no end-of-turn token after the last reply, so the model does not "
                                       "learn to stop there",
}

# Rejects caused by the template: what it does, and the config key that changes the outcome.
# The model's own template wins over tokenize.chat_template (used only when a tokenizer has none), so a
# template problem is changed through the data, the tokenizer, or by accepting the loss.
OTHER_TEMPLATE = "a tokenizer whose chat template does not (tokenize.chat_template applies only to tokenizers without one)"
TEMPLATE_REJECTS = {
    "template_error": ("raises an error while rendering the record (Gemma 1/2's, for one, on a system message)",
                       "the data (e.g. no system messages for that template), or " + OTHER_TEMPLATE),
    "template_dropped_content": ("drops the text of a message",
                                 "tokenize.on_dropped_content=keep (train without the dropped text)"),
    "template_repeats_content": ("renders a reply more than once, so no single span is the reply", OTHER_TEMPLATE),
    "template_rewrites_content": ("changes its markup around a reply depending on the reply's text",
                                  OTHER_TEMPLATE),
    "template_drops_reasoning": ("drops the final reply's reasoning, and its generation prompt does not "
                                 "continue the conversation", "tokenize.reasoning=strip"),
    "mask_mismatch": ("gives masks whose loss tokens are not exactly the replies (verification failed)",
                      OTHER_TEMPLATE),
}


class TemplateRejectError(ValueError):
    """More records than ``tokenize.max_template_reject_share`` allows were rejected for template reasons."""


def template_report(name: str, digest: str, n_in: int, dropped: Counter, behaviours: Counter,
                    first_detail: dict[str, str]) -> dict:
    """The ledger's ``template`` entry: records per behaviour, per template reject reason, and their share."""
    rejected = {r: dropped[r] for r in TEMPLATE_REJECTS if dropped.get(r)}
    total = sum(rejected.values())
    return {
        "template": name,
        "template_sha256": digest,
        "records": n_in,
        "behaviours": {k: v for k, v in sorted(behaviours.items()) if v},
        "rejected": rejected,
        "rejected_share": round(total / n_in, 4) if n_in else 0.0,
        "first_detail": {r: first_detail[r] for r in rejected if r in first_detail},
    }


def describe(report: dict) -> list[str]:
    """One line per behaviour and template reject, for the log and ``peftpipe masks``."""
    lines = [f"{n} records: the template {BEHAVIOURS.get(k, k)}" for k, n in report["behaviours"].items()]
    for reason, n in report["rejected"].items():
        what, key = TEMPLATE_REJECTS[reason]
        first = report["first_detail"].get(reason, "")
        lines.append(f"{n} records rejected ({reason}): the template {what}; first: {first}; change: {key}")
    return lines


def check_template_share(report: dict, limit: float) -> None:
    """Log what the template did; raise TemplateRejectError when its rejects exceed ``limit`` of the records."""
    for line in describe(report):
        log.warning("tokenize: chat template %r: %s", report["template"], line)
    share = report["rejected_share"]
    if share <= limit:
        return
    worst = max(report["rejected"], key=report["rejected"].get)
    what, key = TEMPLATE_REJECTS[worst]
    raise TemplateRejectError(
        f"tokenize: {sum(report['rejected'].values())} of {report['records']} records ({share:.1%}) were rejected "
        f"for what the chat template of {report['template']!r} does, more than "
        f"tokenize.max_template_reject_share={limit}. Mostly {worst} ({report['rejected'][worst]}): the template "
        f"{what} (first: {report['first_detail'].get(worst, '')}). To change it: {key}; or raise "
        f"tokenize.max_template_reject_share. See every case with `peftpipe masks` and in rejects/.")

"""An LLM judge on an OpenAI-compatible chat endpoint: one request per answer, a 1..scale rating back.

Off by default (``evaluate.judge.enabled``): it sends prompts, references and answers to the endpoint. The
request is the plain ``POST {base_url}/chat/completions`` that vLLM, llama.cpp's server, TGI and hosted APIs
all accept, at temperature 0. The rating is read from the reply's ``Score: N`` line (or its only number in
range); a reply with none, or a failed request, gives NaN for that item and is counted, not guessed.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field

from schemas.evaluate import JudgeConfig

SYSTEM = ("You grade answers to tasks against a reference answer. Judge only whether the answer is correct "
          "and complete with respect to the reference; ignore style. Reply with one line: 'Score: N', where N "
          "is an integer from 1 (wrong) to {scale} (fully correct).")
USER = "Task:\n{prompt}\n\nReference answer:\n{reference}\n\nAnswer to grade:\n{answer}"
_SCORE_LINE = re.compile(r"score\s*[:=]\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)(?![\d.])")


@dataclass
class JudgeResult:
    scores: list[float]  # per item in 0..1, NaN where there is no rating
    failures: Counter = field(default_factory=Counter)  # reason -> items without a rating


def prompt_text(prompt: list[dict]) -> str:
    """A conversation as plain text for the judge: 'role: content' per turn."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def build_request(cfg: JudgeConfig, prompt: list[dict], reference: str, answer: str) -> dict:
    """The chat-completions body for one answer."""
    return {"model": cfg.model, "temperature": 0, "max_tokens": cfg.max_tokens,
            "messages": [{"role": "system", "content": SYSTEM.format(scale=cfg.scale)},
                         {"role": "user", "content": USER.format(prompt=prompt_text(prompt), reference=reference,
                                                                 answer=answer)}]}


def parse_rating(text: str, scale: int) -> float | None:
    """The judge's 1..scale rating from its reply: a 'Score: N' line wins, else the reply's only number in
    range; None when there is none, it is out of range, or several numbers make it ambiguous."""
    found = _SCORE_LINE.findall(text or "")
    candidates = found[-1:] if found else _NUMBER.findall(text or "")
    values = [float(x) for x in candidates]
    in_range = [v for v in values if 1 <= v <= scale]
    if len(in_range) != 1 or (found and not in_range):
        return None
    return in_range[0]


def to_score(rating: float, scale: int) -> float:
    """A 1..scale rating as 0..1."""
    return (rating - 1) / (scale - 1)


def headers(cfg: JudgeConfig) -> dict[str, str]:
    out = {"Content-Type": "application/json"}
    token = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
    if token:
        out["Authorization"] = f"Bearer {token}"
    return out


def reply_text(body: dict) -> str:
    """The first choice's message content of a chat-completions response."""
    choices = body.get("choices") or []
    if not choices:
        raise ValueError("response has no choices")
    return str((choices[0].get("message") or {}).get("content") or "")


def judge_answers(cfg: JudgeConfig, prompts: list[list[dict]], references: list[str], answers: list[str]
                  ) -> JudgeResult:
    """Rate each answer (at most ``cfg.max_items``; the rest are NaN, counted as 'over_max_items')."""
    import httpx

    result = JudgeResult([])
    url = cfg.base_url.rstrip("/") + "/chat/completions"
    with httpx.Client(timeout=cfg.timeout_s, headers=headers(cfg)) as client:
        for i, (prompt, reference, answer) in enumerate(zip(prompts, references, answers, strict=True)):
            if i >= cfg.max_items:
                result.scores.append(math.nan)
                result.failures["over_max_items"] += 1
                continue
            try:
                response = client.post(url, content=json.dumps(build_request(cfg, prompt, reference, answer)))
                response.raise_for_status()
                rating = parse_rating(reply_text(response.json()), cfg.scale)
            except (httpx.HTTPError, ValueError) as exc:
                result.scores.append(math.nan)
                result.failures[f"request_failed:{type(exc).__name__}"] += 1
                continue
            if rating is None:
                result.scores.append(math.nan)
                result.failures["no_rating_in_reply"] += 1
            else:
                result.scores.append(to_score(rating, cfg.scale))
    return result

"""PII: find emails, phone numbers, IP addresses and secret keys; redact them in kept text, or drop the record.

Patterns favour precision over recall: a phone number needs 9-15 digits and a separator or a leading '+', an
IPv6 address must parse, a key must look like a known token format or follow ``key=``/``token:``. What is
found is counted by kind either way.
"""
from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable

import numpy as np

from schemas.filters import PiiParams
from tasks.filters.base import FilterBatch, FilterResult, register

PLACEHOLDER = {"email": "[EMAIL]", "phone": "[PHONE]", "ip": "[IP_ADDRESS]", "key": "[KEY]"}

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][\w.+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# Phone and IPv4 patterns start with a character class (no lookbehind), which lets the regex engine skip ahead
# quickly; what may not come before a match is checked afterwards in Python (``_starts_clean``).
_PHONE = re.compile(r"[+(\d][\d ().-]{7,20}\d(?![\w.]\d|\w)")
_IPV4 = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?!\w|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_IPV6_HINT = re.compile(r"[0-9A-Fa-f]:[0-9A-Fa-f]|::")
_KEYS = re.compile("|".join([
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",                      # AWS access key id
    r"\bgh[pousr]_[A-Za-z0-9]{30,}\b",                     # GitHub token
    r"\bgithub_pat_[A-Za-z0-9_]{30,}\b",
    r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}\b",           # OpenAI / Anthropic style secret key
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b",                  # Slack
    r"\bAIza[0-9A-Za-z_-]{35}\b",                          # Google API key
    r"\beyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\b",  # JWT
]))
# Every key format above starts with one of these literals; checking them with ``in`` first skips the costly
# alternation for the vast majority of texts that contain none.
_KEY_HINTS = ("-----BEGIN", "AKIA", "ASIA", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "sk-", "xox",
              "AIza", "eyJ")
_ASSIGNED_HINTS = ("key", "secret", "token", "passw")
# ``api_key = "..."``: only the value is secret, so only the value is replaced.
_ASSIGNED = re.compile(r"(?i)\b((?:api[_-]?key|secret(?:[_-]key)?|access[_-]?token|auth[_-]?token|password|passwd)"
                       r"\b[\"']?\s*[:=]\s*[\"']?)([A-Za-z0-9_\-/+.=]{12,})")


def _starts_clean(m: re.Match[str], before: str) -> bool:
    """No character of ``before`` (nor a word character) right before the match."""
    i = m.start()
    if i == 0:
        return True
    prev = m.string[i - 1]
    return not (prev.isalnum() or prev == "_" or prev in before)


def _ipv4_ok(m: re.Match[str]) -> bool:
    return _starts_clean(m, ".") and all(int(part) <= 255 and (part == "0" or not part.startswith("0"))
                                         for part in m.group(0).split("."))


def _phone_ok(m: re.Match[str]) -> bool:
    if not _starts_clean(m, "+."):
        return False
    s = m.group(0)
    """9-15 digits in 1-5 groups, one of them 3+ digits; space-only grouping also needs a 4-digit group or a
    '+', so runs of numbers in arithmetic ("23 24 27 37 45", "100 200 300") do not read as phone numbers."""
    groups = re.findall(r"\d+", s)
    digits = sum(len(g) for g in groups)
    if not 9 <= digits <= 15 or len(groups) > 5 or max(len(g) for g in groups) < 3:
        return False
    if s.startswith("+") or "(" in s:
        return True
    if len(groups) == 1:  # a bare digit run is more often a number than a phone number
        return False
    if not any(c in s for c in ".-"):
        return max(len(g) for g in groups) >= 4
    return True


def _ipv6_ok(m: re.Match[str]) -> bool:
    s = m.group(0)
    if s.count(":") < 2 or not any(c.isalnum() for c in s):
        return False
    try:
        ipaddress.IPv6Address(s)
        return True
    except ValueError:
        return False


def _sub(rx: re.Pattern[str], text: str, token: str, ok: Callable[[re.Match[str]], bool] | None = None
         ) -> tuple[str, int]:
    count = 0

    def repl(m: re.Match[str]) -> str:
        nonlocal count
        if ok is not None and not ok(m):
            return m.group(0)
        count += 1
        return token
    return rx.sub(repl, text), count


def redact(text: str, kinds: list[str] | tuple[str, ...] = ("email", "phone", "ip", "key")) -> tuple[str, Counter]:
    """Replace each PII span with a placeholder; returns the new text and counts by kind."""
    counts: Counter = Counter()
    # Keys first: a token can contain digit runs that would otherwise read as phone numbers.
    if "key" in kinds:
        n = count = 0
        if any(h in text for h in _KEY_HINTS):
            text, n = _sub(_KEYS, text, PLACEHOLDER["key"])
        lower = text.lower()
        if any(h in lower for h in _ASSIGNED_HINTS):
            def keep_name(m: re.Match[str]) -> str:
                nonlocal count
                count += 1
                return m.group(1) + PLACEHOLDER["key"]
            text = _ASSIGNED.sub(keep_name, text)
        counts["key"] += n + count
    if "email" in kinds and "@" in text:
        text, counts["email"] = _sub(_EMAIL, text, PLACEHOLDER["email"])
    if "ip" in kinds:
        n4 = n6 = 0
        if text.count(".") >= 3:
            text, n4 = _sub(_IPV4, text, PLACEHOLDER["ip"], _ipv4_ok)
        if ":" in text and _IPV6_HINT.search(text):
            text, n6 = _sub(_IPV6, text, PLACEHOLDER["ip"], _ipv6_ok)
        counts["ip"] += n4 + n6
    if "phone" in kinds:
        text, counts["phone"] = _sub(_PHONE, text, PLACEHOLDER["phone"], _phone_ok)
    return text, +counts


@register("pii")
def pii(batch: FilterBatch, p: PiiParams) -> FilterResult:
    """Redact PII in place (rows kept, redactions counted by kind) or drop records that contain any."""
    keep = np.ones(batch.n, dtype=bool)
    reasons: list[str | None] = [None] * batch.n
    details: list[str | None] = [None] * batch.n
    replace: dict[int, list[dict[str, str]]] = {}
    stats: Counter = Counter()
    roles = set(p.roles)
    for i, msgs in enumerate(batch.messages()):
        found: Counter = Counter()
        new = []
        for role, content in msgs:
            if role in roles:
                content, c = redact(content, p.kinds)
                found += c
            new.append({"role": role, "content": content})
        if not found:
            continue
        if p.mode == "drop":
            keep[i] = False
            reasons[i] = f"pii:{found.most_common(1)[0][0]}"
            details[i] = ", ".join(f"{k}={v}" for k, v in sorted(found.items()))
            stats.update({f"pii_found:{k}": v for k, v in found.items()})
        else:
            replace[i] = new
            stats.update({f"pii_redacted:{k}": v for k, v in found.items()})
            stats["pii_records_redacted"] += 1
    return FilterResult(keep, reasons, details, replace=replace, stats=stats)

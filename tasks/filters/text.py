"""Text-quality filters on responses (and prompts where asked): length, emptiness, Gopher repetition and
symbol rules, refusal and boilerplate patterns, language.

The measuring functions (``repetition_reason``, ``symbol_reason``) take one string and are tested on their own;
the registered filters loop them over a batch.
"""
from __future__ import annotations

import functools
import re
from collections import Counter
from typing import Any

import numpy as np

from schemas.filters import (
    EmptyOrTruncatedParams,
    LanguageParams,
    LengthParams,
    PatternParams,
    RepetitionParams,
    SymbolRatioParams,
)
from tasks.filters.base import FilterBatch, FilterResult, register

_PARA_SPLIT = re.compile(r"\n{2,}")
_LINE_SPLIT = re.compile(r"\n+")
_BULLETS = ("•", "●", "○", "▪", "-", "*", "‣", "–")
_FINAL_PUNCT = tuple(".!?)]}\"'`:;»”’。！？")
# Counting with C-level regexes instead of per-character Python loops: these rules run on every response.
_NO_ALNUM_WORD = re.compile(r"(?<!\S)[^\w\s]+(?!\S)")  # a whitespace word of symbols only
_SYMBOL_CHAR = re.compile(r"[^\w\s]")                 # not a letter, digit, underscore or space


def _prefixed(field: str, reason: str) -> str:
    # Response reasons stay short ("too_short"); prompt/all reasons say which text they judged.
    return reason if field == "response" else f"{field}_{reason}"


@register("response_length")
def response_length(batch: FilterBatch, p: LengthParams) -> FilterResult:
    """Length bounds in characters and whitespace-separated words."""
    texts = batch.text(p.field)
    keep = np.ones(batch.n, dtype=bool)
    reasons: list[str | None] = [None] * batch.n
    details: list[str | None] = [None] * batch.n
    for i, t in enumerate(texts):
        chars = len(t)
        bad = None
        if chars < p.min_chars:
            bad = ("too_short", f"chars={chars}<{p.min_chars}")
        elif p.max_chars is not None and chars > p.max_chars:
            bad = ("too_long", f"chars={chars}>{p.max_chars}")
        elif p.min_words or p.max_words is not None:
            words = len(t.split())
            if words < p.min_words:
                bad = ("too_short", f"words={words}<{p.min_words}")
            elif p.max_words is not None and words > p.max_words:
                bad = ("too_long", f"words={words}>{p.max_words}")
        if bad:
            keep[i], reasons[i], details[i] = False, _prefixed(p.field, bad[0]), bad[1]
    return FilterResult(keep, reasons, details)


def truncation_reason(messages: list[tuple[str, str]], p: EmptyOrTruncatedParams) -> tuple[str, str] | None:
    """Why a conversation has no usable answer, or None: no reply, an empty reply, or a reply cut short."""
    replies = [c for r, c in messages if r == "assistant"]
    if not replies:
        return "no_response", "no assistant message"
    if any(not c.strip() for c in replies):
        return "empty_response", "an assistant message is blank"
    if messages[-1][0] != "assistant":
        return "truncated", f"ends on a {messages[-1][0]} turn"
    last = replies[-1].rstrip()
    if p.unclosed_code_fence and sum(r.count("```") for r in replies) % 2:
        return "truncated", "unclosed code fence"
    if p.trailing_ellipsis and (last.endswith("...") or last.endswith("…")):
        return "truncated", "ends with an ellipsis"
    if p.require_final_punctuation and not last.endswith(_FINAL_PUNCT):
        return "truncated", f"ends with {last[-12:]!r}"
    return None


@register("empty_or_truncated")
def empty_or_truncated(batch: FilterBatch, p: EmptyOrTruncatedParams) -> FilterResult:
    found = [truncation_reason(m, p) for m in batch.messages()]
    keep = np.array([f is None for f in found], dtype=bool)
    return FilterResult(keep, [f and f[0] for f in found], [f and f[1] for f in found])


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(number of items seen before, characters in them) — Gopher's duplicate line/paragraph measure."""
    seen: set[str] = set()
    n_dup = chars = 0
    for item in items:
        if item in seen:
            n_dup += 1
            chars += len(item)
        else:
            seen.add(item)
    return n_dup, chars


def _dup_ngram_chars(words: list[str], n: int) -> int:
    """Characters inside n-grams that occurred earlier, skipping past each repeat so text is not counted twice."""
    seen: set[tuple[str, ...]] = set()
    chars, i = 0, 0
    while i <= len(words) - n:
        gram = tuple(words[i:i + n])
        if gram in seen:
            chars += sum(len(w) for w in gram)
            i += n
        else:
            seen.add(gram)
            i += 1
    return chars


def repetition_reason(text: str, p: RepetitionParams) -> tuple[str, str] | None:
    """The first Gopher repetition rule the text breaks, as (reason, measured value), or None."""
    words = text.split()
    if len(words) < p.min_words or not text:
        return None
    total = len(text)
    paras = [x for x in _PARA_SPLIT.split(text.strip()) if x.strip()]
    if len(paras) > 1:
        n_dup, chars = _duplicates(paras)
        if n_dup / len(paras) > p.max_dup_para_frac:
            return "dup_para_frac", f"{n_dup / len(paras):.3g}>{p.max_dup_para_frac}"
        if chars / total > p.max_dup_para_char_frac:
            return "dup_para_char_frac", f"{chars / total:.3g}>{p.max_dup_para_char_frac}"
    lines = [x for x in _LINE_SPLIT.split(text) if x.strip()]
    if len(lines) > 1:
        n_dup, chars = _duplicates(lines)
        if n_dup / len(lines) > p.max_dup_line_frac:
            return "dup_line_frac", f"{n_dup / len(lines):.3g}>{p.max_dup_line_frac}"
        if chars / total > p.max_dup_line_char_frac:
            return "dup_line_char_frac", f"{chars / total:.3g}>{p.max_dup_line_char_frac}"
    if p.alnum_words_only and _NO_ALNUM_WORD.search(text):
        symbol_words = set(_NO_ALNUM_WORD.findall(text))
        words = [w for w in words if w not in symbol_words]
    # A repeated longer n-gram contains a repeated bigram, so text without one is done (the common, cheap case).
    bigrams = Counter(zip(words, words[1:], strict=False))
    if not bigrams or (p.top_ngram_min_count >= 2 and bigrams.most_common(1)[0][1] < 2):
        return None
    for n, limit in sorted((int(k), v) for k, v in p.top_ngram_max_frac.items()):
        grams = bigrams if n == 2 else Counter(zip(*(words[i:] for i in range(n)), strict=False))
        if not grams:
            continue
        gram, count = grams.most_common(1)[0]
        if count < p.top_ngram_min_count:  # seen once is not repetition (Gopher's rule assumes long documents)
            continue
        frac = (sum(len(w) for w in gram) + n - 1) * count / total
        if frac > limit:
            return f"top_{n}_gram", f"{frac:.3g}>{limit}"
    dup_limits = sorted((int(k), v) for k, v in p.dup_ngram_max_frac.items())
    if dup_limits:
        n = dup_limits[0][0]
        if len(set(zip(*(words[i:] for i in range(n)), strict=False))) == len(words) - n + 1:
            return None  # no n-gram of the smallest size repeats, so no longer one does either
    for n, limit in dup_limits:
        if len(words) < 2 * n:
            break
        frac = _dup_ngram_chars(words, n) / total
        if frac == 0:
            break  # no repeated n-gram means no repeated longer one either
        if frac > limit:
            return f"dup_{n}_gram", f"{frac:.3g}>{limit}"
    return None


@register("repetition")
def repetition(batch: FilterBatch, p: RepetitionParams) -> FilterResult:
    """Gopher repetition rules: duplicate lines/paragraphs, top n-gram share, duplicated n-gram share."""
    found = [repetition_reason(t, p) for t in batch.text(p.field)]
    keep = np.array([f is None for f in found], dtype=bool)
    return FilterResult(keep, [f and _prefixed(p.field, f[0]) for f in found], [f and f[1] for f in found])


def symbol_reason(text: str, p: SymbolRatioParams) -> tuple[str, str] | None:
    """The first symbol/alphabetic rule the text breaks, as (reason, measured value), or None."""
    words = text.split()
    if len(words) < max(p.min_words, 1):
        return None
    n_words = len(words)
    symbols = text.count("#") + text.count("...") + text.count("…")
    if symbols / n_words > p.max_symbol_word_ratio:
        return "symbol_ratio", f"{symbols / n_words:.3g}>{p.max_symbol_word_ratio}"
    lines = [x for x in text.splitlines() if x.strip()]
    if lines:
        bullets = sum(x.lstrip().startswith(_BULLETS) for x in lines) / len(lines)
        if bullets > p.max_bullet_line_frac:
            return "bullet_lines", f"{bullets:.3g}>{p.max_bullet_line_frac}"
        ellipsis = sum(x.rstrip().endswith(("...", "…")) for x in lines) / len(lines)
        if ellipsis > p.max_ellipsis_line_frac:
            return "ellipsis_lines", f"{ellipsis:.3g}>{p.max_ellipsis_line_frac}"
    if p.min_alpha_word_frac > 0:
        alpha = sum(any(c.isalpha() for c in w) for w in words) / n_words
        if alpha < p.min_alpha_word_frac:
            return "low_alpha_words", f"{alpha:.3g}<{p.min_alpha_word_frac}"
    alnum = 1.0 - len(_NO_ALNUM_WORD.findall(text)) / n_words
    if alnum < p.min_alnum_word_frac:
        return "low_alnum_words", f"{alnum:.3g}<{p.min_alnum_word_frac}"
    non_alnum = len(_SYMBOL_CHAR.findall(text)) / sum(map(len, words))
    if non_alnum > p.max_non_alnum_char_frac:
        return "non_alnum_chars", f"{non_alnum:.3g}>{p.max_non_alnum_char_frac}"
    return None


@register("symbol_ratio")
def symbol_ratio(batch: FilterBatch, p: SymbolRatioParams) -> FilterResult:
    found = [symbol_reason(t, p) for t in batch.text(p.field)]
    keep = np.array([f is None for f in found], dtype=bool)
    return FilterResult(keep, [f and _prefixed(p.field, f[0]) for f in found], [f and f[1] for f in found])


@functools.lru_cache(maxsize=32)
def _compiled(patterns: tuple[str, ...]) -> tuple[re.Pattern[str], bool] | None:
    """One alternation of the patterns, and whether it may run case-sensitively on lower-cased text.

    Patterns without upper-case characters (no \\S, \\W, \\D escapes or capitals) match lower-cased text exactly as
    they would match the original with IGNORECASE, and the case-sensitive search is faster."""
    if not patterns:
        return None
    joined = "|".join(f"(?:{x})" for x in patterns)
    if joined == joined.lower():
        return re.compile(joined), True
    return re.compile(joined, re.IGNORECASE), False


@register("patterns")
def patterns(batch: FilterBatch, p: PatternParams) -> FilterResult:
    """Refusals ("As an AI language model...") and web boilerplate ("lorem ipsum"), by regex."""
    refusal, boiler = _compiled(tuple(p.refusal_patterns)), _compiled(tuple(p.boilerplate_patterns))
    keep = np.ones(batch.n, dtype=bool)
    reasons: list[str | None] = [None] * batch.n
    details: list[str | None] = [None] * batch.n
    for i, t in enumerate(batch.text(p.field)):
        lower = t.lower()
        for reason, compiled in (("refusal", refusal), ("boilerplate", boiler)):
            if compiled is None:
                continue
            rx, on_lower = compiled
            # str.lower keeps positions for almost all text; the detail quotes the original where it can.
            m = rx.search(lower if on_lower else t)
            if m:
                quoted = t[m.start():m.end()] if on_lower and len(lower) == len(t) else m.group(0)
                keep[i], reasons[i], details[i] = False, _prefixed(p.field, reason), f"matched {quoted!r}"
                break
    return FilterResult(keep, reasons, details)


@functools.lru_cache(maxsize=1)
def _language_identifier() -> Any:
    try:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier
    except ImportError:
        raise ImportError("the 'language' filter needs py3langid, which ships its model (works offline): "
                          "pip install 'peftpipe[lang]' (or: pip install py3langid)") from None
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


@register("language")
def language(batch: FilterBatch, p: LanguageParams) -> FilterResult:
    """Drop texts that another language wins with at least ``min_confidence`` (py3langid, offline model)."""
    ident = _language_identifier()
    allowed = set(p.languages)
    keep = np.ones(batch.n, dtype=bool)
    details: list[str | None] = [None] * batch.n
    for i, t in enumerate(batch.text(p.field)):
        if len(t) < p.min_chars:
            continue
        lang, prob = ident.classify(t)
        if lang not in allowed and prob >= p.min_confidence:
            keep[i], details[i] = False, f"lang={lang} p={prob:.2f}"
    return FilterResult(keep, _prefixed(p.field, "wrong_language"), details)

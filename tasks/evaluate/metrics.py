"""Task metrics of generated answers against references, per item and aggregated overall and per task family.

* ``exact_match``: the answer equals the reference after trimming surrounding whitespace.
* ``normalized_exact_match``: equal after SQuAD's normalisation (lower case, no punctuation, no articles
  a/an/the, single spaces) — the definition of the official SQuAD v1.1 evaluation script.
* ``contains_answer``: the normalised reference occurs in the normalised answer as whole words.
* ``token_f1``: SQuAD's bag-of-tokens F1 between the normalised answer and reference.
* ``rouge_l``: ROUGE-L F-measure from Google's ``rouge-score`` (longest common subsequence of tokens).

The SQuAD functions are a few lines of the published definition: Hugging Face ``evaluate`` ships them, but it
loads each metric's code from the hub at run time, which this pipeline never reaches.
"""
from __future__ import annotations

import functools
import math
import re
import string
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lower case, remove punctuation and articles, collapse whitespace."""
    text = (text or "").lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float((prediction or "").strip() == (reference or "").strip())


def normalized_exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def contains_answer(prediction: str, reference: str) -> float:
    """1 when the normalised reference is a run of whole words of the normalised answer (an empty reference
    is contained only in an empty answer)."""
    ref, pred = normalize_answer(reference), normalize_answer(prediction)
    if not ref:
        return float(not pred)
    return float(f" {ref} " in f" {pred} ")


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD's F1 over normalised tokens; two empty strings agree (1.0), one empty string scores 0."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
    try:
        from rouge_score import rouge_scorer
    except ImportError as exc:  # a core dependency; the message says which package provides it
        raise ImportError("the rouge_l metric needs rouge-score: pip install rouge-score") from exc
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure; like token_f1, two empty strings agree and one empty string scores 0."""
    if not (reference or "").strip() or not (prediction or "").strip():
        return float(not (reference or "").strip() and not (prediction or "").strip())
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)


METRIC_FUNCTIONS = {"exact_match": exact_match, "normalized_exact_match": normalized_exact_match,
                    "contains_answer": contains_answer, "token_f1": token_f1, "rouge_l": rouge_l}


def score_item(prediction: str, reference: str, metrics: Sequence[str]) -> dict[str, float]:
    """Every requested metric of one answer."""
    unknown = [m for m in metrics if m not in METRIC_FUNCTIONS]
    if unknown:
        raise KeyError(f"unknown task metrics {unknown}; known: {sorted(METRIC_FUNCTIONS)}")
    return {m: METRIC_FUNCTIONS[m](prediction, reference) for m in metrics}


def aggregate(scores: Iterable[dict[str, float]], families: Iterable[str | None]) -> dict[str, dict[str, float]]:
    """Means of per-item scores: ``{"": overall, family: that family's}`` plus ``n`` (items) in each.

    Items without a family count only overall. Non-finite item scores (a judge that gave no rating) are left
    out of their metric's mean, and ``n_<metric>`` says how many were counted when that differs from ``n``.
    """
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    items: dict[str, int] = defaultdict(int)
    for score, family in zip(scores, families, strict=True):
        for group in ("", family) if family else ("",):
            items[group] += 1
            for name, value in score.items():
                if math.isfinite(value):
                    sums[group][name] += value
                    counts[group][name] += 1
                else:
                    counts[group].setdefault(name, 0)
    out: dict[str, dict[str, float]] = {}
    for group, n in items.items():
        row: dict[str, float] = {"n": float(n)}
        for name, c in counts[group].items():
            row[name] = sums[group][name] / c if c else float("nan")
            if c != n:
                row[f"n_{name}"] = float(c)
        out[group] = row
    return out

"""Pairs and labels from annotations: the pure decisions of the preference stage, one prompt group at a time.

A group holds the responses to one prompt. For DPO every two rated responses of a group are a *candidate*
pair, ordered so that chosen has the higher aggregate rating, and checked in this order:

1. ``tie``: equal aggregates (always dropped: there is nothing to prefer);
2. ``low_margin``: the aggregate difference is below ``min_margin``;
3. ``no_shared_annotators`` / ``annotators_disagree``: the share of annotators who rate chosen strictly above
   rejected is below ``min_agreement`` (see ``agreement``);
4. ``over_max_pairs``: it qualified, but the group already has ``max_pairs_per_prompt`` better pairs.

A response in no kept pair is dropped with the reason of the candidate pair of its that got furthest down that
list (a response that tied once and lost on margin once is ``low_margin``), so the ledger says how close it
came. A group with fewer than two rated responses drops its response as ``single_response``; a response
nobody rated is ``no_rating``. Responses that came as a given pair (ingest's chosen/rejected presets put
``preference`` and ``pair_id`` in meta) pair only with their partner; without ratings on both sides the pair
is taken as given (basis ``explicit``), with ratings it is checked like any other.

For KTO each rated response is desirable (aggregate >= ``desirable_min_rating``), undesirable (<=
``undesirable_max_rating``) or ``ambiguous_rating``; then the share of its annotators whose own rating sits on
the same side of that threshold must reach ``min_agreement``.
"""
from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass, field

from schemas.preference import PreferenceConfig

# Candidate-pair reasons in check order: a response's reason is the furthest one among its candidates.
PAIR_REASONS = ("tie", "low_margin", "no_shared_annotators", "annotators_disagree", "over_max_pairs")
TIE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Response:
    """One record as the pairing sees it: who rated it how, and any label it came with."""

    id: str
    ratings: dict[str, float]  # annotator -> rating (an annotator's repeated ratings already averaged)
    explicit: str | None = None  # "chosen" / "rejected" when the source gave the preference
    pair_key: str | None = None  # which given pair it belongs to

    @property
    def rated(self) -> bool:
        return bool(self.ratings)


@dataclass(frozen=True)
class Candidate:
    chosen: Response
    rejected: Response
    margin: float | None
    agreement: float | None
    n_annotators: int
    basis: str  # shared | cross | explicit
    reason: str | None = None  # None: kept


@dataclass
class GroupResult:
    kept: list[Candidate] = field(default_factory=list)
    dropped_pairs: list[Candidate] = field(default_factory=list)
    response_reasons: dict[str, str] = field(default_factory=dict)  # id -> reason, for responses in no pair
    prompt_reason: str | None = None  # None when the group made at least one pair


def aggregate(ratings: dict[str, float], how: str) -> float:
    values = list(ratings.values())
    return statistics.fmean(values) if how == "mean" else float(statistics.median(values))


def collect_ratings(annotations: list[dict] | None) -> dict[str, float]:
    """annotator -> rating from a record's annotations; null ratings are skipped, an anonymous annotation gets
    an id of its own (it can never be 'shared'), repeated ratings by one annotator are averaged."""
    sums: dict[str, list[float]] = {}
    for i, a in enumerate(annotations or []):
        if not a or a.get("rating") is None:
            continue
        who = a.get("annotator_id") or f"\x00anonymous-{i}"
        sums.setdefault(who, []).append(float(a["rating"]))
    return {who: statistics.fmean(v) for who, v in sums.items()}


def ordering_agreement(chosen: Response, rejected: Response, mode: str) -> tuple[float | None, int, str]:
    """(share of annotators rating chosen strictly above rejected, how many judgements, basis)."""
    shared = sorted(set(chosen.ratings) & set(rejected.ratings))
    if shared and mode in ("auto", "shared"):
        wins = sum(chosen.ratings[a] > rejected.ratings[a] for a in shared)
        return wins / len(shared), len(shared), "shared"
    if mode == "shared":
        return None, 0, "shared"
    # No annotator saw both: the chance that one of chosen's ratings beats one of rejected's.
    combos = [(c, r) for c in chosen.ratings.values() for r in rejected.ratings.values()]
    return sum(c > r for c, r in combos) / len(combos), len(combos), "cross"


def judge(a: Response, b: Response, cfg: PreferenceConfig) -> Candidate:
    """The candidate pair of two rated responses, chosen first, with its reason (None: it qualifies)."""
    agg_a, agg_b = aggregate(a.ratings, cfg.aggregate), aggregate(b.ratings, cfg.aggregate)
    chosen, rejected = (a, b) if (agg_a, b.id) >= (agg_b, a.id) else (b, a)  # ids break ties reproducibly
    margin = abs(agg_a - agg_b)
    agreement, n, basis = ordering_agreement(chosen, rejected, cfg.agreement)
    if margin <= TIE_TOLERANCE:
        reason = "tie"
    elif margin < cfg.min_margin - TIE_TOLERANCE:
        reason = "low_margin"
    elif agreement is None:
        reason = "no_shared_annotators"
    elif agreement < cfg.min_agreement - TIE_TOLERANCE:
        reason = "annotators_disagree"
    else:
        reason = None
    return Candidate(chosen, rejected, margin, agreement, n, basis, reason)


def explicit_candidates(responses: list[Response], cfg: PreferenceConfig) -> tuple[list[Candidate], list[Response]]:
    """Given pairs (by pair key), and the given responses whose partner is missing."""
    by_key: dict[str, dict[str, list[Response]]] = {}
    for r in responses:
        by_key.setdefault(r.pair_key or r.id, {}).setdefault(r.explicit or "", []).append(r)
    out, orphans = [], []
    for sides in by_key.values():
        chosen, rejected = sides.get("chosen", []), sides.get("rejected", [])
        for c, r in zip(chosen, rejected):
            if c.rated and r.rated:
                cand = judge(c, r, cfg)
                if cand.chosen is not c:  # keep the given orientation
                    # Ratings that reverse the given order contradict the source: not a pair to trust.
                    reason = cand.reason if cand.reason == "tie" else "annotators_disagree"
                    agreement, n, basis = ordering_agreement(c, r, cfg.agreement)
                    cand = Candidate(c, r, -cand.margin, agreement, n, basis, reason)
                out.append(cand)
            else:
                out.append(Candidate(c, r, None, None, 0, "explicit"))
        n = min(len(chosen), len(rejected))
        orphans += chosen[n:] + rejected[n:] + [x for k, v in sides.items() if k not in ("chosen", "rejected")
                                                 for x in v]
    return out, orphans


def _rank(c: Candidate) -> tuple:
    # Largest margin first (a given pair without ratings ranks first: the source vouched for it), then agreement.
    margin = float("inf") if c.margin is None else c.margin
    agreement = 1.0 if c.agreement is None else c.agreement
    return (-margin, -agreement, c.chosen.id, c.rejected.id)


def pair_group(responses: list[Response], cfg: PreferenceConfig) -> GroupResult:
    """Kept and dropped pairs of one group, and the reason of every response that is in no kept pair."""
    res = GroupResult()
    given = [r for r in responses if r.explicit in ("chosen", "rejected")]
    free = [r for r in responses if r.explicit not in ("chosen", "rejected")]
    unrated = [r for r in free if not r.rated]
    rated = [r for r in free if r.rated]
    for r in unrated:
        res.response_reasons[r.id] = "no_rating"
    candidates, orphans = explicit_candidates(given, cfg)
    for r in orphans:
        res.response_reasons[r.id] = "unpaired_explicit"
    if len(rated) == 1:
        res.response_reasons[rated[0].id] = "single_response"
    candidates += [judge(a, b, cfg) for a, b in itertools.combinations(sorted(rated, key=lambda r: r.id), 2)]

    qualifying = sorted((c for c in candidates if c.reason is None), key=_rank)
    cap = cfg.max_pairs_per_prompt if cfg.max_pairs_per_prompt is not None else len(qualifying)
    res.kept = qualifying[:cap]
    res.dropped_pairs = [c for c in candidates if c.reason is not None]
    res.dropped_pairs += [Candidate(c.chosen, c.rejected, c.margin, c.agreement, c.n_annotators, c.basis,
                                    "over_max_pairs") for c in qualifying[cap:]]

    in_pair = {r.id for c in res.kept for r in (c.chosen, c.rejected)}
    furthest: dict[str, int] = {}
    for c in res.dropped_pairs:
        rank = PAIR_REASONS.index(c.reason)
        for r in (c.chosen, c.rejected):
            if r.id not in in_pair:
                furthest[r.id] = max(furthest.get(r.id, -1), rank)
    for rid, rank in furthest.items():
        res.response_reasons[rid] = PAIR_REASONS[rank]
    if not res.kept:
        if candidates:
            res.prompt_reason = PAIR_REASONS[max(PAIR_REASONS.index(c.reason) for c in res.dropped_pairs)]
        elif rated or orphans:
            res.prompt_reason = "single_response" if rated else "unpaired_explicit"
        else:
            res.prompt_reason = "no_rating"
    return res


@dataclass(frozen=True)
class Label:
    response: Response
    desirable: bool
    rating: float | None
    agreement: float | None
    n_annotators: int


def label_response(r: Response, cfg: PreferenceConfig) -> Label | str:
    """KTO: the response's label, or the reason it gets none."""
    if not r.rated:
        if r.explicit in ("chosen", "rejected"):
            return Label(r, r.explicit == "chosen", None, None, 0)
        return "no_rating"
    agg = aggregate(r.ratings, cfg.aggregate)
    if agg >= cfg.desirable_min_rating:
        desirable, side = True, [v >= cfg.desirable_min_rating for v in r.ratings.values()]
    elif agg <= cfg.undesirable_max_rating:
        desirable, side = False, [v <= cfg.undesirable_max_rating for v in r.ratings.values()]
    else:
        return "ambiguous_rating"
    agreement = sum(side) / len(side)
    if agreement < cfg.min_agreement - TIE_TOLERANCE:
        return "annotators_disagree"
    return Label(r, desirable, agg, agreement, len(side))

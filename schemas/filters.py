"""Config of the annotation-quality and text-quality filters.

The chain is an ordered list of ``{name, params}``. Each filter's parameters are described by a pydantic model
in ``FILTER_PARAMS`` below, so a misspelt name or parameter fails when the config is loaded, before any work
starts, and the defaults are filled in (and therefore part of the stage's cache key).
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from schemas.base import StrictModel

# A named text of the record, as defined once in schemas.record.TEXT_ROLES (prompt = user turns).
TextField = Literal["response", "prompt", "all"]
Aggregate = Literal["mean", "median"]


class MinAnnotatorsParams(StrictModel):
    min_count: int = Field(2, ge=1, description="Fewest distinct annotators a record needs.")


class FlaggedLabelsParams(StrictModel):
    labels: list[str] = Field(default_factory=lambda: ["spam", "toxic", "pii", "off_topic"],
                              description="Labels that disqualify a record.")
    min_share: float = Field(0.5, gt=0, le=1, description=(
        "A label flags a record when at least this share of its annotators give it; 0.5 = half or more."))


class MinRatingParams(StrictModel):
    threshold: float = Field(3.0, description="Lowest aggregate rating kept (inclusive).")
    aggregate: Aggregate = Field("mean", description="How the annotators' ratings are combined.")
    scale: Literal["raw", "normalized"] = Field("raw", description=(
        "'normalized': the threshold is on 0-1, each record's aggregate mapped through its source's declared "
        "ingest rating_scale (meta.rating_scale), so sources rated 1-5 and 0-100 share one threshold; a record "
        "whose source declares no scale is dropped as 'no_rating_scale'."))


class MaxRatingSpreadParams(StrictModel):
    max_spread: float = Field(2.0, ge=0, description="Largest max-min rating difference kept (inclusive).")


class MinLabelAgreementParams(StrictModel):
    min_share: float = Field(0.5, ge=0, le=1, description=(
        "Lowest share of annotators whose label set equals the most common one (majority-label share)."))
    min_annotators: int = Field(2, ge=2, description="Records with fewer annotators are not judged.")


class LengthParams(StrictModel):
    field: TextField = Field("response", description="Which text is measured.")
    min_chars: int = Field(1, ge=0)
    max_chars: int | None = Field(None, ge=1)
    min_words: int = Field(0, ge=0)
    max_words: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _bounds_ordered(self) -> LengthParams:
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise ValueError("max_chars < min_chars")
        if self.max_words is not None and self.max_words < self.min_words:
            raise ValueError("max_words < min_words")
        return self


class EmptyOrTruncatedParams(StrictModel):
    unclosed_code_fence: bool = Field(True, description="An odd number of ``` fences means a cut response.")
    trailing_ellipsis: bool = Field(False, description="A response ending in '...' counts as truncated.")
    require_final_punctuation: bool = Field(False, description=(
        "Responses must end in . ! ? ) ] } \" ' ` or a closing fence; off by default (lists and code often don't)."))


class RepetitionParams(StrictModel):
    """Gopher repetition rules (Rae et al. 2021, table A1); thresholds are upper bounds."""

    field: TextField = Field("response")
    max_dup_line_frac: float = Field(0.30, ge=0, le=1)
    max_dup_para_frac: float = Field(0.30, ge=0, le=1)
    max_dup_line_char_frac: float = Field(0.20, ge=0, le=1)
    max_dup_para_char_frac: float = Field(0.20, ge=0, le=1)
    top_ngram_max_frac: dict[int, float] = Field(default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16}, description=(
        "n -> largest share of characters in the most frequent repeated n-gram."))
    dup_ngram_max_frac: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}, description=(
            "n -> largest share of characters inside n-grams that occur more than once."))
    top_ngram_min_count: int = Field(2, ge=1, description=(
        "A top n-gram counts only if it occurs this often; Gopher (and datatrove) use 1, which on a short "
        "reply makes one unrepeated bigram 'dominate' the text."))
    min_words: int = Field(20, ge=0, description=(
        "Texts shorter than this are not judged: a few repeated words in a short reply are not degenerate."))
    alnum_words_only: bool = Field(True, description=(
        "N-gram rules count only words with a letter or digit, so repeated operators in worked arithmetic "
        "('x 0.75 =') do not read as degenerate repetition; Gopher counts every word."))


class SymbolRatioParams(StrictModel):
    field: TextField = Field("response")
    max_symbol_word_ratio: float = Field(0.1, ge=0, description="Gopher: ('#' + '...') per word.")
    max_bullet_line_frac: float = Field(1.0, ge=0, le=1, description=(
        "Share of lines starting with a bullet; Gopher uses 0.9 on web text, but a chat answer may be a list."))
    max_ellipsis_line_frac: float = Field(0.3, ge=0, le=1, description="Gopher: share of lines ending in '...'.")
    min_alpha_word_frac: float = Field(0.0, ge=0, le=1, description=(
        "Share of words with a letter; Gopher uses 0.8 on web text, but arithmetic answers ('400 + 9 = 409.') "
        "have none, so it is off by default and the alphanumeric rule below guards against junk instead."))
    min_alnum_word_frac: float = Field(0.5, ge=0, le=1, description="Share of words with a letter or a digit.")
    max_non_alnum_char_frac: float = Field(0.5, ge=0, le=1, description="Share of non-space chars that are not alphanumeric.")
    min_words: int = Field(5, ge=0, description="Texts shorter than this are not judged.")


DEFAULT_REFUSALS = [
    r"\bas an ai(?: language)? model\b",
    r"\bi(?:['’]m| am) (?:sorry|afraid),? but i (?:can(?:no|['’])t|am (?:not able|unable)|won['’]t)\b",
    r"\bi (?:can(?:no|['’])t|am unable to|won['’]t) (?:help|assist|comply|provide) (?:you )?with (?:that|this)\b",
]
DEFAULT_BOILERPLATE = [
    r"\blorem ipsum\b",
    r"\bclick here to (?:subscribe|download|learn more)\b",
    r"\ball rights reserved\b",
    r"\b(?:accept|use) (?:all )?cookies\b",
    r"\bjavascript is (?:disabled|required)\b",
]


class PatternParams(StrictModel):
    field: TextField = Field("response")
    refusal_patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_REFUSALS),
                                        description="Case-insensitive regexes; a hit drops with reason 'refusal'.")
    boilerplate_patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_BOILERPLATE),
                                            description="Case-insensitive regexes; reason 'boilerplate'.")

    @field_validator("refusal_patterns", "boilerplate_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        import re
        for p in patterns:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"bad regex {p!r}: {exc}") from None
        return patterns


class LanguageParams(StrictModel):
    field: TextField = Field("response")
    languages: list[str] = Field(default_factory=lambda: ["en"], description="ISO 639-1 codes kept.")
    min_confidence: float = Field(0.5, ge=0, le=1, description=(
        "A record is dropped only when another language wins with at least this probability."))
    min_chars: int = Field(20, ge=0, description="Shorter texts are not judged (too little evidence).")


class DecontamParams(StrictModel):
    sources: dict[str, str] = Field(default_factory=dict, description=(
        "Eval/benchmark name -> path of a .jsonl (messages/prompt/response/text fields), .parquet or .txt file."))
    ngram: int = Field(13, ge=1, description="Word n-gram size (13 as in GPT-3's decontamination).")
    field: TextField = Field("all")
    min_overlap: float = Field(0.0, ge=0, le=1, description=(
        "Drop when the share of the record's n-grams found in an eval source exceeds this; 0 = any shared n-gram."))


class PiiParams(StrictModel):
    mode: Literal["redact", "drop"] = Field("redact", description="Redact in place (counted) or drop the record.")
    kinds: list[Literal["email", "phone", "ip", "key"]] = Field(
        default_factory=lambda: ["email", "phone", "ip", "key"])
    roles: list[Literal["system", "user", "assistant"]] = Field(
        default_factory=lambda: ["system", "user", "assistant"], description="Whose messages are scanned.")


# The one table of filter names -> parameter model; tasks.filters.chain maps the same names to functions.
FILTER_PARAMS: dict[str, type[StrictModel]] = {
    "min_annotators": MinAnnotatorsParams,
    "flagged_labels": FlaggedLabelsParams,
    "min_rating": MinRatingParams,
    "max_rating_spread": MaxRatingSpreadParams,
    "min_label_agreement": MinLabelAgreementParams,
    "response_length": LengthParams,
    "empty_or_truncated": EmptyOrTruncatedParams,
    "repetition": RepetitionParams,
    "symbol_ratio": SymbolRatioParams,
    "patterns": PatternParams,
    "language": LanguageParams,
    "decontaminate": DecontamParams,
    "pii": PiiParams,
}


class FilterSpec(StrictModel):
    name: str = Field(description="Registered filter name (see FILTER_PARAMS and tasks.filters).")
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the filter.")

    @model_validator(mode="after")
    def _known_and_valid(self) -> FilterSpec:
        model = FILTER_PARAMS.get(self.name)
        if model is None:
            raise ValueError(f"unknown filter {self.name!r}; known: {', '.join(sorted(FILTER_PARAMS))}")
        # Normalise to the full, validated parameter set so defaults are explicit and hashed into the cache key.
        full = model.model_validate(self.params).model_dump(mode="json")
        if full != self.params:
            object.__setattr__(self, "params", full)
        return self

    def parsed(self) -> StrictModel:
        return FILTER_PARAMS[self.name].model_validate(self.params)


def _default_filters() -> list[FilterSpec]:
    return [
        FilterSpec(name="min_annotators", params={"min_count": 2}),
        FilterSpec(name="flagged_labels", params={"labels": ["spam", "toxic", "pii", "off_topic"], "min_share": 0.5}),
        FilterSpec(name="min_rating", params={"threshold": 3.0, "aggregate": "mean"}),
        FilterSpec(name="max_rating_spread", params={"max_spread": 2.0}),
        FilterSpec(name="min_label_agreement", params={"min_share": 0.5}),
        FilterSpec(name="empty_or_truncated", params={}),
        FilterSpec(name="response_length", params={"min_chars": 10, "max_chars": 20_000}),
        FilterSpec(name="repetition", params={}),
        FilterSpec(name="symbol_ratio", params={}),
        FilterSpec(name="patterns", params={}),
        FilterSpec(name="pii", params={"mode": "redact"}),
    ]


class ReliabilityConfig(StrictModel):
    """Annotator reliability: each annotator's ratings against the mean of the other annotators of the same items."""

    enabled: bool = Field(True, description="Measure and report each annotator's agreement with the others.")
    min_items: int = Field(5, ge=1, description="Annotators with fewer shared items are not judged.")
    min_correlation: float = Field(0.2, ge=-1, le=1, description=(
        "Pearson r with the leave-one-out consensus below which an annotator is unreliable."))
    max_mean_abs_diff: float = Field(2.0, ge=0, description=(
        "Mean |rating - others' mean| above which unreliable (catches a constant rater, whose r is undefined)."))
    exclude_unreliable: bool = Field(False, description=(
        "Leave unreliable annotators' votes out before the annotation filters aggregate (records are unchanged)."))


class FilterConfig(StrictModel):
    SPEED_ONLY: ClassVar[tuple[str, ...]] = ("batch_size", "workers")  # see StrictModel.SPEED_ONLY
    filters: list[FilterSpec] = Field(default_factory=_default_filters,
                                      description="Ordered filter chain; the first filter that rejects wins.")
    dry_run: bool = Field(False, description="Report what would be dropped without dropping it.")
    reliability: ReliabilityConfig = Field(default_factory=ReliabilityConfig)
    examples_per_reason: int = Field(3, ge=0, le=100, description="Rejected examples shown per reason in the report.")
    batch_size: int = Field(10_000, ge=1, description="Rows per batch read from the input shards.")
    workers: int = Field(1, ge=1, description=(
        "Processes filtering input shards in parallel (spawned; worth it from ~100k records). 1 = in process."))


class SplitConfig(StrictModel):
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="Share of records held out for evaluation.")
    seed: int = Field(0, description="Salt of the id hash that assigns records to splits.")

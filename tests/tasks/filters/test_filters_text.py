"""Text-quality filters: length, empty/truncated, Gopher repetition and symbol rules, patterns, language."""
from __future__ import annotations

import pyarrow as pa
import pytest

from schemas.filters import EmptyOrTruncatedParams, FilterSpec, RepetitionParams, SymbolRatioParams
from schemas.record import RECORD_SCHEMA
from tasks.filters import FilterBatch, build_chain
from tasks.filters.text import repetition_reason, symbol_reason, truncation_reason


def batch_of(*responses, prompt="Tell me something."):
    rows = [{"id": f"r{i}", "source": "s", "meta": "{}", "annotations": [],
             "messages": [{"role": "user", "content": prompt}] + (
                 [] if r is None else [{"role": "assistant", "content": r}])} for i, r in enumerate(responses)]
    return FilterBatch(pa.Table.from_pylist(rows, RECORD_SCHEMA))


def reasons(name, batch, **params):
    (_, fn), = build_chain([FilterSpec(name=name, params=params)])
    res = fn(batch)
    return [None if k else res.reason(i) for i, k in enumerate(res.keep)], res


def test_length_bounds_in_chars_are_inclusive():
    got, res = reasons("response_length", batch_of("x" * 9, "x" * 10, "x" * 20, "x" * 21), min_chars=10, max_chars=20)
    assert got == ["too_short", None, None, "too_long"]
    assert res.detail(0) == "chars=9<10" and res.detail(3) == "chars=21>20"


def test_length_bounds_in_words_and_on_prompts():
    got, _ = reasons("response_length", batch_of("one two", "one two three", "a b c d e"),
                     min_chars=0, min_words=3, max_words=4)
    assert got == ["too_short", None, "too_long"]
    got, _ = reasons("response_length", batch_of("fine answer", prompt="?"), field="prompt", min_chars=2)
    assert got == ["prompt_too_short"]


def test_empty_and_truncated():
    p = EmptyOrTruncatedParams()
    assert truncation_reason([("user", "q")], p)[0] == "no_response"
    assert truncation_reason([("user", "q"), ("assistant", "  \n")], p)[0] == "empty_response"
    assert truncation_reason([("user", "q"), ("assistant", "a"), ("user", "more?")], p)[0] == "truncated"
    assert truncation_reason([("user", "q"), ("assistant", "Here:\n```python\nx = 1")], p)[1] == "unclosed code fence"
    assert truncation_reason([("user", "q"), ("assistant", "Here:\n```python\nx = 1\n```")], p) is None
    assert truncation_reason([("user", "q"), ("assistant", "and then...")], p) is None  # off by default
    strict = EmptyOrTruncatedParams(trailing_ellipsis=True, require_final_punctuation=True)
    assert truncation_reason([("user", "q"), ("assistant", "and then...")], strict)[0] == "truncated"
    assert truncation_reason([("user", "q"), ("assistant", "it stops mid")], strict)[0] == "truncated"
    assert truncation_reason([("user", "q"), ("assistant", "It ends well.")], strict) is None
    got, _ = reasons("empty_or_truncated", batch_of(None, "", "Fine."))
    assert got == ["no_response", "empty_response", None]


WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
         "upsilon phi chi psi omega").split()


def test_repetition_duplicate_lines():
    # only the line rules: the n-gram rules would see the repeated lines too
    p = RepetitionParams(max_dup_line_char_frac=1.0, top_ngram_max_frac={}, dup_ngram_max_frac={})
    distinct = [f"w{i}a w{i}b w{i}c w{i}d" for i in range(10)]
    # 10 lines, 3 of them repeats: dup line fraction 0.3 -> kept (the bound is inclusive)...
    assert repetition_reason("\n".join(distinct[:7] + distinct[:3]), p) is None
    # ... 4 repeats in 10 lines = 0.4 -> dropped
    assert repetition_reason("\n".join(distinct[:6] + distinct[:4]), p) == ("dup_line_frac", "0.4>0.3")
    # by characters: 3 repeated lines of 10 hold ~30% of the characters > 0.2
    assert repetition_reason("\n".join(distinct[:7] + distinct[:3]), RepetitionParams(
        top_ngram_max_frac={}, dup_ngram_max_frac={}))[0] == "dup_line_char_frac"
    paras = "\n\n".join(distinct[:3] + distinct[:2])
    assert repetition_reason(paras, p)[0] == "dup_para_frac"


def test_repetition_top_ngram_and_duplicated_ngrams():
    p = RepetitionParams()
    varied = " ".join(WORDS)
    assert repetition_reason(varied, p) is None
    # one bigram repeated many times dominates the characters
    assert repetition_reason(varied + " " + "big cat " * 12, p)[0] == "top_2_gram"
    # a 12-word passage repeated: duplicated 5..10-grams cover much of the text
    passage = " ".join(WORDS[:12])
    rep = repetition_reason(varied + " " + passage + " " + passage, p.model_copy(update={"top_ngram_max_frac": {}}))
    assert rep[0] == "dup_5_gram"
    # short texts are not judged at all
    assert repetition_reason("big cat " * 5, p) is None


def test_repetition_ignores_operators_in_worked_arithmetic():
    lines = [f"- item{i}: {i + 2} g × 0.75 = {(i + 2) * 0.75} g" for i in range(8)]
    text = "To go from 4 to 3 people, multiply every amount by 3 / 4.\n" + "\n".join(lines)
    assert repetition_reason(text, RepetitionParams()) is None
    assert repetition_reason(text, RepetitionParams(alnum_words_only=False)) is not None


def test_symbol_rules():
    p = SymbolRatioParams()
    assert symbol_reason("400 + 9 = 409.", p) is None                          # arithmetic is fine
    assert symbol_reason("# # # # # # hello world again friend", p)[0] == "symbol_ratio"
    assert symbol_reason("a ... b ... c ... d ... e", p)[0] == "symbol_ratio"
    assert symbol_reason("-- ** == !! ?? hello", p)[0] == "low_alnum_words"      # 1 of 6 words has a letter
    assert symbol_reason("ab<<>>{{}} cd<<>>{{}} ef<<>>{{}} gh<<>>{{}} ij<<>>", p)[0] == "non_alnum_chars"
    gopher = p.model_copy(update={"min_alpha_word_frac": 0.8})
    assert symbol_reason("400 + 9 = 409.", gopher)[0] == "low_alpha_words"
    assert symbol_reason("few words", p) is None                               # under min_words


def test_patterns_refusal_and_boilerplate():
    got, res = reasons("patterns", batch_of("As an AI language model, I cannot browse.",
                                            "I’m sorry, but I can’t help with that.",
                                            "Lorem ipsum dolor sit amet.",
                                            "The model of an AI system is a function."))
    assert got == ["refusal", "refusal", "boilerplate", None]
    assert "As an AI language model" in res.detail(0)


def test_bad_regex_fails_at_config_time():
    with pytest.raises(ValueError, match="bad regex"):
        FilterSpec(name="patterns", params={"refusal_patterns": ["(unclosed"]})


def test_language_filter_offline():
    pytest.importorskip("py3langid")
    got, res = reasons("language", batch_of(
        "The weather is lovely today and we are going for a long walk in the park.",
        "Das Wetter ist heute herrlich und wir machen einen langen Spaziergang im Park.",
        "Kurz."), languages=["en"], min_confidence=0.5, min_chars=20)
    assert got == [None, "wrong_language", None]   # the last one is too short to judge
    assert res.detail(1).startswith("lang=de")


def test_gopher_as_published_judges_short_texts_by_unrepeated_ngrams():
    gopher = RepetitionParams(top_ngram_min_count=1, min_words=0, alnum_words_only=False)
    # one bigram is 11 of 11 characters: Gopher's top-2-gram share is 1.0 although nothing repeats
    assert repetition_reason("hello world", gopher) == ("top_2_gram", "1>0.2")
    assert repetition_reason("hello world", RepetitionParams(min_words=0)) is None


def test_patterns_with_capitals_still_match_any_case():
    got, res = reasons("patterns", batch_of("We ACCEPT NO RETURNS.", "we accept no returns"),
                       refusal_patterns=[r"\bACCEPT\s+no\b"], boilerplate_patterns=[])
    assert got == ["refusal", "refusal"]
    assert res.detail(0) == "matched 'ACCEPT NO'"


def test_symbol_thresholds_are_inclusive():
    p = SymbolRatioParams(min_words=1)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    assert symbol_reason(" ".join(words[:9] + ["#kappa"]), p) is None                     # 1 '#' / 10 words = 0.1
    assert symbol_reason(" ".join(words[:8] + ["#iota", "#kappa"]), p)[0] == "symbol_ratio"  # 0.2
    assert symbol_reason("alpha beta -- **", p) is None                                     # 2 of 4 words: 0.5
    assert symbol_reason("alpha -- ** ==", p) == ("low_alnum_words", "0.25<0.5")
    ellipsis = SymbolRatioParams(min_words=1, max_symbol_word_ratio=10)
    assert symbol_reason("one two\nthree four\nfive six\nseven eight...", ellipsis) is None  # 1 of 4 lines
    assert symbol_reason("one two\nthree four\nfive six...", ellipsis)[0] == "ellipsis_lines"  # 1 of 3 > 0.3

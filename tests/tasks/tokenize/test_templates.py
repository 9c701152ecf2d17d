"""Assistant-only masks under the real chat templates of eleven models (tests/tasks/tokenize/templates).

The oracle is independent of the sentinel renders the encoder uses: each reply must start where the
template's own generation prompt for the conversation up to it ends (incremental prefixes), and its loss
tokens must decode to the reply as the template renders it (trimmed where the template trims) followed by the
template's end-of-turn token. Positions are compared, not only decoded text.
"""
from __future__ import annotations

import numpy as np
import pytest
from families import BY_NAME, FAMILIES, family_tokenizer

from schemas.tokenize import IGNORE_INDEX, TokenizeConfig
from tasks.tokenize import MaskReject, encode_chat, encode_chat_sequences
from tasks.tokenize.chat import encode_records
from tasks.tokenize.spans import common_prefix, probe, render

NAMES = [f.name for f in FAMILIES]


def chat(*turns: tuple[str, str]) -> list[dict]:
    return [{"role": r, "content": c} for r, c in turns]


def loss_runs(tok, ids: np.ndarray, labels: np.ndarray) -> list[tuple[int, int]]:
    """(first token, end token) of each run of loss tokens."""
    on = np.concatenate([[False], labels != IGNORE_INDEX, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(on))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def expect_masks(name: str, conv: list[dict], cfg: TokenizeConfig | None = None, kind: str = "bpe") -> None:
    """The encoder's labels against the oracle: one loss run per assistant turn, at the right place."""
    fam, tok = BY_NAME[name], family_tokenizer(name, kind)
    ids, labels = encode_chat(tok, conv, cfg or TokenizeConfig())
    text = render(tok, [conv])[0]
    enc = tok.backend_tokenizer.encode(text, add_special_tokens=False)
    assert enc.ids == ids.tolist()  # the sequence is the template's rendering, untouched
    offsets = np.asarray(enc.offsets)
    replies = [i for i, m in enumerate(conv) if m["role"] == "assistant"]
    runs = loss_runs(tok, ids, labels)
    assert len(runs) == len(replies), (name, tok.decode(ids[labels != IGNORE_INDEX]))
    for (a, b), i in zip(runs, replies, strict=True):
        prompt = render(tok, [conv[:i]], add_generation_prompt=True)[0]
        content = conv[i]["content"]
        reply = content.strip() if fam.trims else content
        start = common_prefix(prompt, text)  # where the generation prompt ends, the reply begins
        last = i == len(conv) - 1
        eot = fam.eot if (not last or fam.final_eot) else ""
        reply = (fam.final_think if last else "") + reply  # Qwen3's empty think block: the model writes it
        assert offsets[a][0] == start, (name, i, text[start:start + 20], text[offsets[a][0]:offsets[a][0] + 20])
        if kind == "bpe":  # Metaspace decoders rewrite spaces; the positions below hold for both
            assert tok.decode(ids[a:b].tolist()) == reply + eot, name
        assert text[offsets[a][0]:offsets[b - 1][1]] == reply + eot


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
@pytest.mark.parametrize("name", NAMES)
def test_multi_turn(name, kind):
    expect_masks(name, kind=kind, conv=chat(("user", "What is LoRA?"), ("assistant", "A low-rank adapter."),
                            ("user", "And QLoRA?"), ("assistant", "LoRA on 4-bit weights."),
                            ("user", "Thanks"), ("assistant", "You are welcome")))


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
@pytest.mark.parametrize("name", NAMES)
def test_replies_equal_to_words_of_the_markup(name, kind):
    # A one-letter answer, a role word, a piece of a special token's text: all occur in the markup first.
    words = ["A", "B", "assistant", "user", "model", "system", "end", *BY_NAME[name].markup_words]
    for word in dict.fromkeys(words):
        if not word.strip():
            continue  # whitespace-only replies carry nothing to train on and are rejected before rendering
        expect_masks(name, kind=kind, conv=chat(("user", f"Pick one: {word} or not"), ("assistant", word),
                                                ("user", word), ("assistant", word)))


@pytest.mark.parametrize("name", NAMES)
def test_replies_that_repeat_user_text(name):
    expect_masks(name, chat(("user", "Say: the model learns"), ("assistant", "the model learns"),
                            ("user", "yes"), ("assistant", "yes"), ("user", "no no no"), ("assistant", "no")))


@pytest.mark.parametrize("name", NAMES)
def test_unicode_and_whitespace(name):
    expect_masks(name, chat(("user", "ünïcode 日本語? "), ("assistant", " 🙂 مرحبا\u200d 日本語です\n"),
                            ("user", "\n🙂"), ("assistant", "e\u0301 👩‍👩‍👧")))


@pytest.mark.parametrize("name", NAMES)
def test_system_prompt(name):
    fam, tok = BY_NAME[name], family_tokenizer(name)
    conv = chat(("system", "You are terse. Answer A or B."), ("user", "Pick A or B"), ("assistant", "A"),
                ("user", "And now?"), ("assistant", "B"))
    if fam.system == "kept":
        expect_masks(name, conv)
        return
    with pytest.raises(MaskReject) as err:
        encode_chat(tok, conv)
    if fam.system == "raises":  # Gemma 1/2: 'System role not supported'
        assert err.value.reason == "template_error" and "System role not supported" in err.value.detail
    else:  # Mistral Nemo renders the system prompt only before a final user turn: dropped here
        assert err.value.reason == "template_dropped_content" and "system" in err.value.detail
        seen: set[str] = set()
        (ids, labels), = encode_chat_sequences(tok, conv, TokenizeConfig(on_dropped_content="keep"), seen)
        assert seen == {"system_dropped"}
        assert tok.decode(ids[labels != IGNORE_INDEX].tolist()) == f"A{fam.eot}B{fam.eot}"


THINK = chat(("user", "2+2?"), ("assistant", "<think>\nadd two and two\n</think>\n\nIt is 4."),
             ("user", "3+3?"), ("assistant", "<think>\nthree twice\n</think>\n\nIt is 6."))


def decoded_runs(tok, ids, labels) -> list[str]:
    return [tok.decode(ids[a:b].tolist()) for a, b in loss_runs(tok, ids, labels)]


@pytest.mark.parametrize("name", NAMES)
def test_reasoning_traces_stay_trainable(name):
    fam, tok = BY_NAME[name], family_tokenizer(name)
    eot = fam.eot
    last_eot = eot if fam.final_eot else ""
    seen: set[str] = set()
    (ids, labels), = encode_chat_sequences(tok, THINK, TokenizeConfig(reasoning="last"), seen)
    runs = decoded_runs(tok, ids, labels)
    assert ("no_end_of_turn_after_last_reply" in seen) == (not fam.final_eot)
    seen.discard("no_end_of_turn_after_last_reply")
    text = render(tok, [[{"role": m["role"], "content": m["content"]} for m in THINK]])[0]
    if fam.reasoning == "none":  # the trace is text to these templates: trained as written, every turn
        assert runs == [THINK[1]["content"] + eot, THINK[3]["content"] + last_eot]
        assert seen == set()
    elif fam.reasoning == "field":  # Qwen3: the final turn renders its reasoning; history drops it
        assert runs == ["It is 4." + eot, "<think>\nthree twice\n</think>\n\nIt is 6." + eot]
        assert seen == {"history_reasoning_dropped"}
    else:  # DeepSeek-R1 drops every trace; the final one trains after the generation prompt's "<think>\n"
        assert runs == ["It is 4." + eot, "three twice\n</think>\n\nIt is 6." + eot]
        assert seen == {"history_reasoning_dropped", "final_reasoning_after_generation_prompt"}
        prompt = render(tok, [THINK[:3]], add_generation_prompt=True)[0]
        assert prompt.endswith("<think>\n") and tok.decode(ids.tolist()).startswith(prompt)
        assert "three twice" not in text  # the template itself would have lost it
    if fam.reasoning != "none":
        # 'all': each turn is the final one of its own sequence, so every trace trains
        seqs = encode_chat_sequences(tok, THINK, TokenizeConfig(reasoning="all"))
        assert len(seqs) == 2
        traces = [decoded_runs(tok, i, lab) for i, lab in seqs]
        assert [len(t) for t in traces] == [1, 1]
        assert "add two and two" in traces[0][0] and "It is 4." in traces[0][0]
        assert "three twice" in traces[1][0] and "It is 6." in traces[1][0]
    strip = decoded_runs(tok, *encode_chat(tok, THINK, TokenizeConfig(reasoning="strip")))
    assert strip == ["It is 4." + eot, fam.final_think + "It is 6." + last_eot]


def test_reasoning_field_is_read_where_the_template_reads_it():
    tok = family_tokenizer("qwen3")
    assert probe(tok).reasoning_field
    conv = chat(("user", "2+2?"), ("assistant", "It is 4."))
    conv[1]["reasoning_content"] = "add two and two"
    ids, labels = encode_chat(tok, conv)
    assert decoded_runs(tok, ids, labels) == ["<think>\nadd two and two\n</think>\n\nIt is 4.<|im_end|>"]


def test_think_tags_are_not_control_token_rejects():
    # <think> is an added token of Qwen3's and R1's tokenizers: the tags are layout, text inside is checked.
    for name in ("qwen3", "deepseek_r1"):
        tok = family_tokenizer(name)
        enc = encode_records(tok, ["ok", "bad"], [THINK, chat(("user", "hi"), ("assistant", "<think>"))],
                             TokenizeConfig())
        assert [s.record_id for s in enc.seqs] == ["ok"]
        assert [(r.index, r.reason) for r in enc.rejects] == [(1, "control_token_in_content")]


def test_weight_zero_turns_carry_no_loss():
    tok = family_tokenizer("llama3")
    conv = chat(("user", "q1"), ("assistant", "bad answer"), ("user", "q2"), ("assistant", "good answer"))
    conv[1]["weight"] = 0
    ids, labels = encode_chat(tok, conv)
    assert decoded_runs(tok, ids, labels) == ["good answer<|eot_id|>"]
    conv[3]["weight"] = 0
    with pytest.raises(MaskReject, match="no_trainable_turn"):
        encode_chat(tok, conv)


def test_end_of_turn_comes_from_the_template():
    assert probe(family_tokenizer("chatml")).end_of_turn == ("<|im_end|>",)
    assert not probe(family_tokenizer("chatml")).final_end_of_turn  # vLLM's example ends the last reply bare
    for name in NAMES:
        assert probe(family_tokenizer(name)).end_of_turn == (BY_NAME[name].eot,), name

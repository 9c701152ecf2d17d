"""PII: what is found and redacted, what is left alone, and the drop mode."""
from __future__ import annotations

import pyarrow as pa
import pytest

from schemas.filters import FilterSpec
from schemas.record import RECORD_SCHEMA
from tasks.filters import FilterBatch, build_chain
from tasks.filters.pii import redact


@pytest.mark.parametrize("text, expected, kind", [
    ("write to jane.doe+news@mail.example.co.uk today", "write to [EMAIL] today", "email"),
    ("call +1 415-555-0100 now", "call [PHONE] now", "phone"),
    ("or (415) 555-0100", "or [PHONE]", "phone"),
    ("UK: 020 7946 0958", "UK: [PHONE]", "phone"),
    ("host 192.168.1.10 is up", "host [IP_ADDRESS] is up", "ip"),
    ("v6 2001:db8::1 up", "v6 [IP_ADDRESS] up", "ip"),
    ("AWS AKIAIOSFODNN7EXAMPLE", "AWS [KEY]", "key"),
    ("token ghp_" + "a1B2" * 9, "token [KEY]", "key"),
    ("export OPENAI=sk-proj-abcdefghijklmnopqrstuvwx", "export OPENAI=[KEY]", "key"),
    ('api_key = "abcd1234efgh5678ijkl"', 'api_key = "[KEY]"', "key"),
])
def test_redacts_each_kind(text, expected, kind):
    out, counts = redact(text)
    assert out == expected
    assert counts == {kind: 1}


@pytest.mark.parametrize("text", [
    "scores 23 24 24 27 37 45 and 100 200 300 400",  # runs of numbers are not phone numbers
    "11754 ÷ 18 equals 653, and 4155550100 is a number",
    "meet at 12:30:45 on 2021-05-12, version 1.2.3",
    "not an ip: 10.0.0.256, not an email: a@b",
    "the key idea = simplicity",
])
def test_leaves_lookalikes_alone(text):
    assert redact(text) == (text, {})


def test_only_configured_kinds_are_touched():
    out, counts = redact("mail a@example.com, ip 10.1.2.3", kinds=["ip"])
    assert out == "mail a@example.com, ip [IP_ADDRESS]" and counts == {"ip": 1}


def _batch():
    rows = [{"id": f"r{i}", "source": "s", "meta": "{}", "annotations": [],
             "messages": [{"role": "user", "content": u}, {"role": "assistant", "content": a}]}
            for i, (u, a) in enumerate([("my mail is x@example.org", "Noted: x@example.org, 10.0.0.1"),
                                        ("hello", "hi there")])]
    return FilterBatch(pa.Table.from_pylist(rows, RECORD_SCHEMA))


def test_redact_mode_keeps_rows_and_counts():
    (_, fn), = build_chain([FilterSpec(name="pii", params={"mode": "redact"})])
    res = fn(_batch())
    assert res.keep.tolist() == [True, True]
    assert res.replace[0][1]["content"] == "Noted: [EMAIL], [IP_ADDRESS]"
    assert res.replace[0][0]["content"] == "my mail is [EMAIL]"
    assert 1 not in res.replace
    assert res.stats == {"pii_redacted:email": 2, "pii_redacted:ip": 1, "pii_records_redacted": 1}


def test_drop_mode_and_roles():
    (_, fn), = build_chain([FilterSpec(name="pii", params={"mode": "drop", "roles": ["assistant"]})])
    res = fn(_batch())
    assert res.keep.tolist() == [False, True]
    assert res.reason(0) == "pii:email" and res.detail(0) == "email=1, ip=1"  # the user turn was not scanned
    assert not res.replace

"""The one definition of a record's named texts, as every stage reads it."""
from __future__ import annotations

import pyarrow as pa

from schemas.record import MESSAGE, TURN_SEPARATOR
from tasks.core.records import record_text
from tasks.filters.base import FilterBatch

MESSAGES = pa.array([
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"},
     {"role": "assistant", "content": None}],
    [],
], pa.list_(MESSAGE))


def test_each_named_text_takes_its_roles_in_order():
    sep = TURN_SEPARATOR
    assert record_text(MESSAGES, "prompt").to_pylist() == [f"2+2?{sep}and 3+3?", ""]
    assert record_text(MESSAGES, "response").to_pylist() == [f"4{sep}", ""]
    assert record_text(MESSAGES, "prompt_response").to_pylist() == [f"2+2?{sep}4{sep}and 3+3?{sep}", ""]
    assert record_text(MESSAGES, "all").to_pylist() == [f"Be brief.{sep}2+2?{sep}4{sep}and 3+3?{sep}", ""]


def test_filters_read_the_same_prompt_as_dedup():
    table = pa.table({"messages": MESSAGES})
    batch = FilterBatch(table)
    for which in ("prompt", "response", "all"):
        assert batch.text(which) == record_text(MESSAGES, which).to_pylist()
    assert "Be brief." not in batch.text("prompt")[0], "a system prompt is not part of the prompt"

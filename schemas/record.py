"""The one record shape every stage reads and writes, as an Arrow schema.

A record is one chat example:
- ``id``: stable across runs and machines (derived from the source name and the raw row, see tasks.ingest.stage);
- ``source``: the name of the configured source it came from;
- ``messages``: ``[{role, content, weight}]`` with roles system / user / assistant; ``weight`` is null unless
  the source gave one (a finite number >= 0, set by ingest from the ShareGPT/axolotl per-message
  ``weight``): ``0`` means no loss on this turn; null or a positive weight leaves the turn to the
  tokenizer's ``train_on`` policy (the masks are built in ``tasks.tokenize``);
- ``annotations``: one entry per annotator: ``{annotator_id, rating, labels}`` (rating may be null);
- ``meta``: a JSON object serialised as a string, so arbitrary per-source fields survive Parquet.
"""
from __future__ import annotations

import pyarrow as pa

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string()), ("weight", pa.float64())])
ANNOTATION = pa.struct([
    ("annotator_id", pa.string()),
    ("rating", pa.float64()),
    ("labels", pa.list_(pa.string())),
])

RECORD_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("source", pa.string()),
    ("messages", pa.list_(MESSAGE)),
    ("annotations", pa.list_(ANNOTATION)),
    ("meta", pa.string()),
])

ROLES = ("system", "user", "assistant")

# The named texts of a record, one definition for every stage (dedup's ``text``, the filters' ``field``, the
# sweep's leak check): the contents of these roles' turns, in order, joined by TURN_SEPARATOR.
# "prompt" is what the user asked (user turns); a system prompt is the operator's setting, usually the same
# boilerplate across records, so it counts only in "all".
TEXT_ROLES: dict[str, tuple[str, ...]] = {
    "prompt": ("user",),
    "response": ("assistant",),
    "prompt_response": ("user", "assistant"),
    "all": ROLES,
}
TURN_SEPARATOR = "\n\n"

# Columns added to every rejected row, beside the record's own columns.
REJECT_FIELDS = [
    ("reject_stage", pa.string()),
    ("reject_reason", pa.string()),
    ("reject_detail", pa.string()),
]
REJECT_SCHEMA = pa.schema(list(RECORD_SCHEMA) + [pa.field(n, t) for n, t in REJECT_FIELDS])

# Ingest cannot always build a record from a bad row, so its quarantine keeps the raw text instead.
QUARANTINE_SCHEMA = pa.schema([
    ("source", pa.string()),
    ("location", pa.string()),  # "path:line" for text formats, "path#row" for tabular ones
    ("reject_reason", pa.string()),
    ("reject_detail", pa.string()),
    ("raw", pa.string()),  # the offending row, truncated
])

"""The named texts of records (``schemas.record.TEXT_ROLES``), extracted from whole Arrow batches at once."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.record import TEXT_ROLES, TURN_SEPARATOR


def record_text(messages: pa.Array | pa.ChunkedArray, which: str) -> pa.Array:
    """Per record, the contents of the turns that make up text ``which``, joined by TURN_SEPARATOR ("" if none)."""
    if isinstance(messages, pa.ChunkedArray):
        messages = messages.combine_chunks()
    roles = TEXT_ROLES[which]
    n = len(messages)
    flat = pc.list_flatten(messages)
    parents = pc.list_parent_indices(messages).to_numpy()
    keep = pc.is_in(flat.field("role"), value_set=pa.array(roles)).to_numpy(zero_copy_only=False)
    contents = pc.fill_null(flat.field("content").filter(pa.array(keep)), "")
    counts = np.bincount(parents[keep], minlength=n) if n else np.zeros(0, np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), contents), TURN_SEPARATOR)
    return pc.fill_null(joined, "")

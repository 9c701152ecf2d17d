"""A shard worker's result file is rebuilt only from the result types it may hold; a payload is refused."""
import os
import pickle
from collections import Counter

import numpy as np
import pytest

from tasks.core.handoff import read_handoff, write_handoff
from tasks.tokenize.chat import EncodedBatch


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_an_encoded_batch_round_trips(tmp_path):
    enc = EncodedBatch(truncated=2, behaviours=Counter({"drops_traces": 3}))
    write_handoff({"enc": enc, "ids": np.arange(4, dtype=np.int32)}, tmp_path / "h.pkl")
    back = read_handoff(tmp_path / "h.pkl")
    assert back["enc"] == enc and back["ids"].tolist() == [0, 1, 2, 3]


def test_a_swapped_file_with_a_callable_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "h.pkl").write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(pickle.UnpicklingError, match=r"shard handoff names \S*system, which is not allowed"):
        read_handoff(tmp_path / "h.pkl")
    assert not (tmp_path / "pwned").exists()

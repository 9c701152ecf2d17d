"""Results a shard worker hands to its parent through a file (the worker may run in another process or on a
Ray worker), pickled, and read back by an unpickler restricted to the result types named here (the Python
docs' "restricting globals"): the file sits in a stage's scratch directory, and whoever could swap it must not
get code run by the parent. Anything outside the allowlist is refused with UnpicklingError. The restricted
unpickler is shared: tasks.train.checkpoint reads DCP's metadata files through it with its own allowlist.
"""
from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from pathlib import Path

# (module, name) the handoffs may contain: our result dataclasses and the containers inside them.
ALLOWED = {
    ("tasks.ingest.convert", "PartResult"),
    ("tasks.tokenize.chat", "EncodedBatch"), ("tasks.tokenize.packing", "TokenizedSeq"), ("tasks.tokenize.chat", "Reject"),
    ("collections", "Counter"), ("collections", "OrderedDict"),
    ("array", "array"), ("array", "_array_reconstructor"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "bytearray"),
    # numpy arrays of token ids: rebuilt from their raw buffer and dtype, never through a callable of the file's
    *((f"numpy.{core}.{mod}", name) for core in ("_core", "core")
      for mod, name in (("numeric", "_frombuffer"), ("multiarray", "_reconstruct"), ("multiarray", "scalar"))),
    ("numpy", "dtype"), ("numpy", "ndarray"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Plain pickle that rebuilds only the globals ``allow(module, name)`` accepts (the Python docs'
    "restricting globals"); anything else, such as a callable smuggled into a swapped file, is refused with
    UnpicklingError naming it. ``what`` says in that message what was being read."""

    def __init__(self, file, allow: Callable[[str, str], bool], what: str):
        super().__init__(file)
        self.allow, self.what = allow, what

    def find_class(self, module: str, name: str):
        if self.allow(module, name):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{self.what} names {module}.{name}, which is not allowed")


def write_handoff(obj: object, path: Path) -> None:
    """Pickle ``obj`` to ``path`` (written whole: a temp file renamed)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
    partial.replace(path)


def read_handoff(path: Path) -> object:
    """The object a worker wrote with ``write_handoff``; only ALLOWED types are rebuilt."""
    allowed = RestrictedUnpickler(io.BytesIO(Path(path).read_bytes()), lambda *g: g in ALLOWED, "shard handoff")
    return allowed.load()

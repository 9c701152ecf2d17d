"""A test-only pause point, so the fault suite can stop a run at a named place on any machine.

The kill tests used to wait for a file to appear and then sleep a planned delay; on an idle machine the stage
had finished by then, so whether a kill landed inside its stage depended on the machine's speed. Instead each
stage calls ``pause_point(NAME)`` right after it has written some of its data. The call does nothing unless
the environment variable ``PEFTPIPE_TEST_PAUSE`` names that point: a user's run never sets it, so its only
cost is one environment lookup. When it is named, the process writes a JSON note to
``PEFTPIPE_TEST_PAUSE_FILE`` (the point, the pid, and what the caller passed, e.g. its temporary directory)
and then blocks until the test kills it, or for at most ``PEFTPIPE_TEST_PAUSE_MAX_S`` seconds (an hour),
after which it exits: a test that died without killing it leaves no process behind for ever.
"""
from __future__ import annotations

import json
import os
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

PAUSE_ENV = "PEFTPIPE_TEST_PAUSE"  # "NAME", or "NAME#N": the N-th time this process reaches NAME
PAUSE_FILE_ENV = "PEFTPIPE_TEST_PAUSE_FILE"
_reached: Counter[str] = Counter()


def pause_point(name: str, **detail: Any) -> None:
    """Block for ever here if ``$PEFTPIPE_TEST_PAUSE`` names this point (test only); otherwise return at once."""
    wanted = os.environ.get(PAUSE_ENV)
    if not wanted:
        return
    point, _, nth = wanted.partition("#")
    if point != name:
        return
    _reached[name] += 1
    if _reached[name] != int(nth or 1):
        return
    note = Path(os.environ[PAUSE_FILE_ENV])
    tmp = note.with_name(f".{note.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"point": name, "hit": _reached[name], "pid": os.getpid(),
                               **{k: str(v) for k, v in detail.items()}}))
    os.replace(tmp, note)  # the test sees the whole note or none of it
    threading.Event().wait(float(os.environ.get("PEFTPIPE_TEST_PAUSE_MAX_S", "3600")))  # the test kills us here
    print(f"peftpipe: test pause point {name} was never released; exiting", file=sys.stderr, flush=True)
    os._exit(75)  # nothing after the point runs, not even cleanup

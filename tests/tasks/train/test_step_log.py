"""The background step logger: the loop never waits for the writer, steps are written in order, close() waits
for all of them, and a writer's error reaches the loop."""
from __future__ import annotations

import threading

import pytest

from tasks.train.step_log import BackgroundLog


def test_steps_are_queued_without_waiting_and_written_in_order_by_close():
    release, written = threading.Event(), []

    def slow_writer(metrics, step):
        release.wait()  # a stalled tracking server
        written.append((step, metrics["train_loss"]))

    log = BackgroundLog(slow_writer)
    for step in range(1, 6):
        log({"train_loss": float(step)}, step)  # returns although the writer is stalled
    assert written == []
    release.set()
    log.close()
    assert written == [(s, float(s)) for s in range(1, 6)]


def test_a_writer_error_is_raised_in_the_loop_and_on_close():
    failed = threading.Event()

    def broken(metrics, step):
        failed.set()
        raise ConnectionError("tracking server lost")

    log = BackgroundLog(broken)
    log({"train_loss": 1.0}, 1)
    failed.wait()
    with pytest.raises(ConnectionError):
        log.close()
    with pytest.raises(ConnectionError):
        log({"train_loss": 2.0}, 2)  # the next step stops the run

"""The background step logger: the loop never waits for the writer, steps are written in order and in
batches (every step queued while the writer was busy goes in its next write), close() waits for all of them,
and a writer's error reaches the loop."""
from __future__ import annotations

import threading

import pytest

from tasks.train.step_log import BackgroundLog


def test_steps_queued_while_the_writer_is_busy_go_in_one_write_in_order():
    entered, release, writes = threading.Event(), threading.Event(), []

    def slow_writer(steps):
        entered.set()
        release.wait()  # a stalled tracking server
        writes.append([(step, metrics["train_loss"]) for metrics, step in steps])

    log = BackgroundLog(slow_writer)
    log({"train_loss": 1.0}, 1)
    entered.wait()  # the writer holds step 1 and is stalled
    for step in range(2, 6):
        log({"train_loss": float(step)}, step)  # returns although the writer is stalled
    assert writes == []
    release.set()
    log.close()
    assert writes == [[(1, 1.0)], [(s, float(s)) for s in range(2, 6)]]


def test_a_writer_error_is_raised_in_the_loop_and_on_close():
    failed = threading.Event()

    def broken(steps):
        failed.set()
        raise ConnectionError("tracking server lost")

    log = BackgroundLog(broken)
    log({"train_loss": 1.0}, 1)
    failed.wait()
    with pytest.raises(ConnectionError):
        log.close()
    with pytest.raises(ConnectionError):
        log({"train_loss": 2.0}, 2)  # the next step stops the run


def test_steps_queued_before_close_are_all_written():
    writes = []
    log = BackgroundLog(writes.append)
    for step in range(1, 201):
        log({"train_loss": 0.5}, step)
    log.close()
    assert [step for batch in writes for _, step in batch] == list(range(1, 201))


def test_flush_writes_every_queued_step_now_not_at_the_end_of_the_window():
    writes = []
    log = BackgroundLog(writes.append, every_s=3600)  # the window alone would hold them for an hour
    for step in (1, 2, 3):
        log({"train_loss": 0.5}, step)
    log.flush()  # what the loop does after a checkpoint
    assert [step for batch in writes for _, step in batch] == [1, 2, 3]
    log({"train_loss": 0.5}, 4)
    log.close()
    assert [step for batch in writes for _, step in batch] == [1, 2, 3, 4]

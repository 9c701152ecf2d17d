"""Per-step metrics written off the training loop: a thread does the I/O (MLflow, the Prefect progress artifact).

A step of a large model takes about half a second; one MLflow ``log_batch`` plus one artifact update over the
API take tens of milliseconds, more on a loaded server, and the loop waited for both every step
(bench/train/pipeline_overhead.py measures it). ``BackgroundLog`` queues each step's metrics and returns at
once; the thread writes them in order, every step queued since its last write in one go (one MLflow request,
one artifact update), so fast steps or a slow server never build up a backlog of requests. An error in the
writer is raised on the next call from the loop and on ``close``, so a lost tracking server still stops the
run (exit 5), one step later instead of at once.

``step_logger`` is how every training entry point (the SFT and DPO/KTO train tasks, rank 0 under torchrun) gets
its logger.
"""
from __future__ import annotations

import contextvars
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

MetricsFn = Callable[[dict[str, float], int], None]
Steps = list[tuple[dict[str, float], int]]
StepsFn = Callable[[Steps], None]
# At most one write a second: each MLflow request and artifact update costs the loop CPU and GIL time (tens of
# ms of Python on a small box), which matters when steps are short; a step still shows in the UI within 1 s.
WRITE_EVERY_S = 1.0


class BackgroundLog:
    """A MetricsFn that queues; ``write(steps)`` runs in a thread, on every step queued since its last call.
    ``flush()`` waits until every step queued so far is written (the loop calls it after each checkpoint, so a
    run killed later has its metrics in MLflow up to the step it resumes from); ``close()`` does the same and
    stops the thread. Both re-raise the writer's error."""

    def __init__(self, write: StepsFn, every_s: float = WRITE_EVERY_S):
        self._write, self._every_s = write, every_s
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        # The copied context carries Prefect's run and settings context (the API URL of a temporary server).
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._drain,),
                                        name="peftpipe-step-log", daemon=True)
        self._thread.start()

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((dict(metrics), step))

    def _drain(self) -> None:
        closed = False
        while not closed:
            # Wait for one item, then gather steps for every_s, or until a flush or close asks for them now.
            pending = [self._queue.get()]
            deadline = time.monotonic() + self._every_s
            while isinstance(pending[-1], tuple) and (left := deadline - time.monotonic()) > 0:
                try:
                    pending.append(self._queue.get(timeout=left))
                except queue.Empty:
                    break
            marker = None if isinstance(pending[-1], tuple) else pending.pop()
            if pending and self._error is None:
                try:
                    self._write(pending)
                except BaseException as exc:  # handed to the training loop, which raises it
                    self._error = exc
            if isinstance(marker, threading.Event):  # flush(): everything before it is written
                marker.set()
            closed = marker is _CLOSE

    def flush(self) -> None:
        done = threading.Event()
        self._queue.put(done)
        done.wait()
        if self._error is not None:
            raise self._error

    def close(self, reraise: bool = True) -> None:
        self._queue.put(_CLOSE)
        self._thread.join()
        if reraise and self._error is not None:
            raise self._error


_CLOSE = object()  # the queue item that stops the writer


def flush_log(log: MetricsFn) -> None:
    """Wait until every step given to ``log`` is written, where it writes in the background."""
    if isinstance(log, BackgroundLog):
        log.flush()


def with_progress_artifact(write: StepsFn | None, max_steps: int) -> StepsFn | None:
    """Chain a Prefect progress artifact (percent of steps done, updated once per write) onto the step writer,
    inside a Prefect run."""
    from tasks.track.artifacts import in_run

    if not in_run():
        return write
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    artifact = create_progress_artifact(0.0, key="training-progress", description="Optimizer steps done")

    def write_and_report(steps: Steps) -> None:
        if write is not None:
            write(steps)
        done = [step for metrics, step in steps if "train_loss" in metrics]
        if done:
            update_progress_artifact(artifact, min(100.0, 100.0 * done[-1] / max_steps))
    return write_and_report


@contextmanager
def step_logger(run_id: str | None, max_steps: int) -> Iterator[MetricsFn | None]:
    """The per-step logger of one training run: the metrics into MLflow run ``run_id`` and, inside a Prefect run,
    the progress artifact, written by a ``BackgroundLog``; None when there is neither. On leaving, every queued
    step is written; a writer's error is raised, unless training itself failed (that error is the one told)."""
    from tasks.track.runs import log_steps_fn

    write = with_progress_artifact(log_steps_fn(run_id) if run_id else None, max_steps)
    if write is None:
        yield None
        return
    log = BackgroundLog(write)
    try:
        yield log
    except BaseException:
        log.close(reraise=False)
        raise
    log.close()

"""Per-step metrics written off the training loop: a thread does the I/O (MLflow, the Prefect progress artifact).

A step of a large model takes about half a second; one MLflow ``log_batch`` plus one artifact update over the API
take tens of milliseconds, more on a loaded server, and the loop waited for both every step
(bench/train/pipeline_overhead.py measures it). ``BackgroundLog`` queues each step's metrics and returns at
once; the thread writes them in order. An error in the writer is raised on the next call from the loop and on
``close``, so a lost tracking server still stops the run (exit 5), one step later instead of at once.
"""
from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable

MetricsFn = Callable[[dict[str, float], int], None]


class BackgroundLog:
    """Wraps a metrics logger; ``close()`` waits until every queued step is written (and re-raises its error)."""

    def __init__(self, log: MetricsFn):
        self._log = log
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
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._log(*item)
                except BaseException as exc:  # handed to the training loop, which raises it
                    self._error = exc

    def close(self, reraise: bool = True) -> None:
        self._queue.put(None)
        self._thread.join()
        if reraise and self._error is not None:
            raise self._error

"""Dynamic batching: merge concurrent calls of one model component into one onnxruntime call.

A Batcher owns a bounded queue and one worker thread. Callers `submit` rows (N, ...) and get a Future;
the worker takes queued requests until `max_batch_size` rows are gathered or `max_queue_delay` has
passed since the oldest one arrived, whichever comes first (Triton's dynamic batcher; LitServe's
`batch_timeout`), runs them as one call and splits the outputs back by row counts. A request whose
Future was cancelled before its batch started is dropped from the batch. No grpc import here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from server.errors import ResourceExhausted

log = logging.getLogger(__name__)

# One call: (inputs, each (N, ...)) -> outputs, each (N, ...) (outputs may be None, e.g. an AE's logvar).
RunFunction = Callable[[Sequence[np.ndarray | None]], Sequence[np.ndarray | None]]
# Called once per executed batch: (rows, inference seconds, queue wait seconds of each request).
BatchObserver = Callable[[int, float, list[float]], None]


@dataclass(frozen=True)
class BatchingConfig:
    """How one model component batches; `enabled=False` runs each request on its own."""

    enabled: bool = True
    max_batch_size: int = 64  # rows per onnxruntime call; a larger request runs alone, unsplit
    # How long the oldest request may wait for company. 0 (Triton's default too) never holds a request
    # back: batches form from what queues while the model is busy, so a lone caller pays no delay.
    max_queue_delay_ms: float = 0.0
    max_queue_rows: int = 4096  # rows waiting; beyond this, RESOURCE_EXHAUSTED at once

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {self.max_batch_size}")
        if self.max_queue_delay_ms < 0:
            raise ValueError(f"max_queue_delay_ms must be 0 or more, got {self.max_queue_delay_ms}")
        if self.max_queue_rows < 1:
            raise ValueError(f"max_queue_rows must be at least 1, got {self.max_queue_rows}")


@dataclass
class _Pending:
    inputs: Sequence[np.ndarray | None]
    rows: int
    future: Future
    enqueued: float


class Batcher:
    """A bounded queue plus a worker thread for one (model version, component)."""

    def __init__(
        self,
        name: str,
        run: RunFunction,
        config: BatchingConfig,
        observe: BatchObserver | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._run = run
        self._observe = observe or (lambda rows, seconds, waits: None)
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._worker.start()

    @property
    def queued_rows(self) -> int:
        with self._cond:
            return self._queued_rows

    def submit(self, inputs: Sequence[np.ndarray | None]) -> Future:
        """Queue one request's inputs (all with the same row count N); its Future gets its outputs."""
        rows = len(inputs[0])  # type: ignore[arg-type]
        future: Future = Future()
        with self._cond:
            if self._closed:
                # Unloaded while this request was on its way: run it alone rather than fail it.
                closed = True
            else:
                closed = False
                limit = self.config.max_queue_rows
                if self._queued_rows + rows > limit and self._queue:
                    raise ResourceExhausted(
                        f"{self.name}: queue is full ({self._queued_rows} rows waiting, limit "
                        f"{limit}); retry later or raise --max-queue-rows"
                    )
                self._queue.append(_Pending(inputs, rows, future, time.perf_counter()))
                self._queued_rows += rows
                self._cond.notify()
        if closed:
            self._execute([_Pending(inputs, rows, future, time.perf_counter())])
        return future

    def close(self) -> None:
        """Stop taking requests; the worker finishes what is queued, then exits."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def join(self, timeout: float | None = None) -> None:
        self._worker.join(timeout)

    def _take_batch(self) -> list[_Pending] | None:
        """Block until a batch is ready: full, or the oldest request has waited long enough."""
        delay = self.config.max_queue_delay_ms / 1000.0
        with self._cond:
            while True:
                while self._queue and self._queue[0].future.cancelled():
                    self._queued_rows -= self._queue.popleft().rows
                if not self._queue:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                deadline = self._queue[0].enqueued + delay
                remaining = deadline - time.perf_counter()
                if (
                    self._queued_rows >= self.config.max_batch_size
                    or remaining <= 0
                    or self._closed
                ):
                    break
                self._cond.wait(remaining)
            batch: list[_Pending] = []
            rows = 0
            while self._queue:
                head = self._queue[0]
                if batch and rows + head.rows > self.config.max_batch_size:
                    break
                self._queue.popleft()
                self._queued_rows -= head.rows
                # set_running_or_notify_cancel drops requests whose caller gave up (cancel or deadline).
                if head.future.set_running_or_notify_cancel():
                    batch.append(head)
                    rows += head.rows
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if batch:
                self._execute(batch, already_running=True)

    def _execute(self, batch: list[_Pending], already_running: bool = False) -> None:
        if not already_running and not batch[0].future.set_running_or_notify_cancel():
            return
        started = time.perf_counter()
        waits = [started - p.enqueued for p in batch]
        try:
            if len(batch) == 1:
                outputs = self._run(batch[0].inputs)
            else:
                merged = [
                    None
                    if batch[0].inputs[i] is None
                    else np.concatenate([p.inputs[i] for p in batch])
                    for i in range(len(batch[0].inputs))
                ]
                outputs = self._run(merged)
        except BaseException as exc:  # the callers see the failure; the worker lives on
            for p in batch:
                p.future.set_exception(exc)
            return
        rows = sum(p.rows for p in batch)
        self._observe(rows, time.perf_counter() - started, waits)
        offset = 0
        for p in batch:
            p.future.set_result(
                [None if o is None else o[offset : offset + p.rows] for o in outputs]
            )
            offset += p.rows

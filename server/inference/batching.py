"""Dynamic batching on the event loop: merge concurrent calls of one model component into one call.

A Batcher belongs to one (model version, component) and one asyncio event loop. Callers `await
submit(inputs)` with rows (N, ...); the batcher gathers queued requests until `max_batch_size` rows
are waiting or the oldest has waited `max_queue_delay_ms`, whichever comes first (Triton's dynamic
batcher; LitServe's `batch_timeout`), runs them as one call and splits the outputs back by row counts.

With no queue delay (the default) a batch starts on the next turn of the event loop, after every
handler that is ready in this turn has queued its rows, so calls that arrive while the model is busy
ride together in the next batch. A caller that finds the batcher idle and the loop with nothing else
to run (no other call could join it) runs at once, inside its own `await submit(...)`: no future, no
extra loop turn (on the loop's thread and without a queue delay only: a delay asks lone callers to
wait for company).

The run function is the onnxruntime session's own `run` with the feeds built here (`session_runner`),
so a model call goes from the data plane into this module and onnxruntime and nowhere else. Batches
are recorded by appending to a `BatchLog` (server/metrics.py folds them in at its next flush).

Where the call runs: `offload=None` runs it on the loop thread (a CPU model call of a fraction of a
millisecond costs less than handing it to a thread and back); an Executor runs it there while the loop
goes on serving (a GPU, or long calls), one batch at a time per component. A request whose caller was
cancelled before its batch started is dropped from the batch. No grpc import here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from server.errors import QueueFull

log = logging.getLogger(__name__)

# One call: (inputs, each (N, ...)) -> outputs, each (N, ...) (outputs may be None, e.g. an AE's logvar).
RunFunction = Callable[[Sequence[np.ndarray | None]], Sequence[np.ndarray | None]]
# Called once per executed batch with (rows, inference seconds, queue wait seconds of each request);
# a BatchLog's `records.append`, so recording costs one list append.
BatchObserver = Callable[[tuple[int, float, list[float]]], None]
# Called with the rows waiting whenever that changes (tests; the metrics read `queued_rows` instead).
QueueObserver = Callable[[int], None]
Outputs = list[np.ndarray | None]
# An onnxruntime InferenceSession.run (or what stands for it): (output names or None, feeds) -> outputs.
SessionRun = Callable[[None, dict[str, np.ndarray]], Sequence[np.ndarray]]


def session_runner(run: SessionRun, input_names: Sequence[str]) -> RunFunction:
    """A RunFunction over a session: inputs in the graph's input order -> the graph's outputs."""
    names = tuple(input_names)
    if len(names) == 1:
        (only,) = names
        return lambda inputs: run(None, {only: inputs[0]})  # type: ignore[dict-item]
    return lambda inputs: run(None, dict(zip(names, inputs, strict=True)))  # type: ignore[arg-type]


@dataclass(frozen=True)
class BatchingConfig:
    """How one model component batches; `enabled=False` runs each request on its own."""

    enabled: bool = True
    max_batch_size: int = 64  # rows per onnxruntime call; a larger request runs alone, unsplit
    # How long the oldest request may wait for company. 0 (Triton's default too) never holds a request
    # back: batches form from what queues while the model is busy, so a lone caller pays no delay.
    max_queue_delay_ms: float = 0.0
    max_queue_rows: int = 4096  # rows waiting; beyond this, RESOURCE_EXHAUSTED at once
    # While the event loop still has other work ready (calls being accepted and parsed), a batch
    # waits for those calls' rows, up to this long from its oldest request; an idle loop starts it
    # at once. Measured: BENCHMARKS.md, Server ("settling").
    max_settle_ms: float = 2.0

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {self.max_batch_size}")
        if self.max_queue_delay_ms < 0:
            raise ValueError(f"max_queue_delay_ms must be 0 or more, got {self.max_queue_delay_ms}")
        if self.max_queue_rows < 1:
            raise ValueError(f"max_queue_rows must be at least 1, got {self.max_queue_rows}")
        if self.max_settle_ms < 0:
            raise ValueError(f"max_settle_ms must be 0 or more, got {self.max_settle_ms}")


@dataclass
class _Pending:
    inputs: Sequence[np.ndarray | None]
    rows: int
    future: asyncio.Future[Outputs]
    enqueued: float


def split_outputs(outputs: Sequence[np.ndarray | None], rows: Sequence[int]) -> list[Outputs]:
    """Cut each output of a merged call back into the row counts of the requests that formed it."""
    parts: list[Outputs] = []
    offset = 0
    for n in rows:
        parts.append([None if o is None else o[offset : offset + n] for o in outputs])
        offset += n
    return parts


def merge_inputs(batch: Sequence[Sequence[np.ndarray | None]]) -> list[np.ndarray | None]:
    """Concatenate the requests' inputs row-wise, input by input (None stays None)."""
    if len(batch) == 1:
        return list(batch[0])
    return [
        None if batch[0][i] is None else np.concatenate([inputs[i] for inputs in batch])
        for i in range(len(batch[0]))
    ]


async def run_model(
    run: RunFunction, inputs: Sequence[np.ndarray | None], offload: Executor | None
) -> Sequence[np.ndarray | None]:
    """One model call on its own: on the loop's thread (offload None) or in `offload`."""
    if offload is None:
        return run(inputs)
    return await asyncio.get_running_loop().run_in_executor(offload, run, inputs)


class Unbatched:
    """One model component without batching: each request runs alone, with the Batcher's interface."""

    def __init__(
        self,
        run: RunFunction,
        observe: BatchObserver | None = None,
        offload: Executor | None = None,
    ) -> None:
        self._run = run
        self._observe = observe or (lambda record: None)
        self._offload = offload
        self.queued_rows = 0

    async def submit(self, inputs: Sequence[np.ndarray | None]) -> Outputs:
        started = time.perf_counter()
        outputs = list(await run_model(self._run, inputs, self._offload))
        self._observe((len(inputs[0]), time.perf_counter() - started, [0.0]))  # type: ignore[arg-type]
        return outputs

    def close(self) -> None:
        """Nothing queues here."""


class Batcher:
    """A bounded queue of one model component's requests, batched on the running event loop."""

    def __init__(
        self,
        name: str,
        run: RunFunction,
        config: BatchingConfig,
        observe: BatchObserver | None = None,
        offload: Executor | None = None,
        observe_queue: QueueObserver | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._run = run
        self._observe = observe or (lambda record: None)
        self._observe_queue = observe_queue
        self._settle_seconds = config.max_settle_ms / 1000.0
        self._offload = offload
        # A lone caller may run at once: on the loop's thread, with no queue delay asked for.
        self._inline = offload is None and config.max_queue_delay_ms <= 0
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._busy = False  # a batch is scheduled or running; it schedules the next one when done
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    async def submit(self, inputs: Sequence[np.ndarray | None]) -> Outputs:
        """Queue one request's inputs (all with the same row count N) and wait for its outputs."""
        rows = len(inputs[0])  # type: ignore[arg-type]
        if self._closed:
            # Unloaded while this request was on its way: run it alone rather than fail it.
            return list(await run_model(self._run, inputs, self._offload))
        limit = self.config.max_queue_rows
        if self._queue and self._queued_rows + rows > limit:
            raise QueueFull(
                f"{self.name}: queue is full ({self._queued_rows} rows waiting, limit {limit}); "
                "retry later or raise --max-queue-rows"
            )
        loop = asyncio.get_running_loop()
        if self._inline and not self._busy and not self._queue and not getattr(loop, "_ready", 1):
            # Idle, and nothing else ready on the loop (CPython's asyncio; elsewhere never taken):
            # no other request can join this one, so run it now, without a future or a loop turn.
            started = time.perf_counter()
            outputs = list(self._run(inputs))
            self._observe((rows, time.perf_counter() - started, [0.0]))
            return outputs
        future: asyncio.Future[Outputs] = loop.create_future()
        self._queue.append(_Pending(inputs, rows, future, time.perf_counter()))
        self._queued_rows += rows
        if not self._busy:
            self._schedule(loop)
        # If the caller is cancelled here, `future` is cancelled too and its batch skips it.
        return await future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        """Arrange the next batch: on the next loop turn, or when the oldest request's delay is up."""
        if self._observe_queue is not None:
            self._observe_queue(self._queued_rows)
        delay = self.config.max_queue_delay_ms / 1000.0
        if delay <= 0 or self._queued_rows >= self.config.max_batch_size or self._closed:
            self._busy = True
            loop.call_soon(self._start_when_settled, loop)
            return
        if self._timer is None:
            wait = self._queue[0].enqueued + delay - time.perf_counter()
            self._timer = loop.call_later(max(wait, 0.0), self._on_timer)

    def _start_when_settled(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the batch once the loop has nothing else ready to run: the handlers of calls that
        are arriving get to queue their rows first. grpc.aio accepts one new call per loop turn, so
        starting on the very next turn would merge almost nothing under load. Bounded by
        max_settle_ms from the oldest request, the batch being full, or a closing batcher."""
        others_ready = len(getattr(loop, "_ready", ()))  # CPython's asyncio; absent elsewhere: 0
        if (
            others_ready
            and self._queue
            and self._queued_rows < self.config.max_batch_size
            and not self._closed
            and time.perf_counter() - self._queue[0].enqueued < self._settle_seconds
        ):
            loop.call_soon(self._start_when_settled, loop)
            return
        self._start()

    def _on_timer(self) -> None:
        self._timer = None
        if not self._busy:
            self._busy = True
            self._start()

    def _take(self) -> list[_Pending]:
        """Up to max_batch_size rows from the head of the queue; cancelled requests are dropped."""
        batch: list[_Pending] = []
        rows = 0
        while self._queue:
            head = self._queue[0]
            if batch and rows + head.rows > self.config.max_batch_size:
                break
            self._queue.popleft()
            self._queued_rows -= head.rows
            if not head.future.done():  # done here means cancelled: its caller has gone
                batch.append(head)
                rows += head.rows
        if self._observe_queue is not None:
            self._observe_queue(self._queued_rows)
        return batch

    def _start(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch = self._take()
        if not batch:
            self._finished()
            return
        started = time.perf_counter()
        waits = [started - p.enqueued for p in batch]
        merged = merge_inputs([p.inputs for p in batch])
        if self._offload is None:
            try:
                outputs = self._run(merged)
            except BaseException as exc:  # the callers see the failure; the batcher lives on
                self._deliver(batch, None, exc, started, waits)
            else:
                self._deliver(batch, outputs, None, started, waits)
            return
        loop = asyncio.get_running_loop()
        running = loop.run_in_executor(self._offload, self._run, merged)

        def done(task: asyncio.Future[Sequence[np.ndarray | None]]) -> None:
            exc = task.exception()
            self._deliver(batch, None if exc else task.result(), exc, started, waits)

        running.add_done_callback(done)

    def _deliver(
        self,
        batch: list[_Pending],
        outputs: Sequence[np.ndarray | None] | None,
        exc: BaseException | None,
        started: float,
        waits: list[float],
    ) -> None:
        if exc is not None or outputs is None:
            failure = exc or RuntimeError(f"{self.name}: the model returned nothing")
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(failure)
        else:
            rows = [p.rows for p in batch]
            self._observe((sum(rows), time.perf_counter() - started, waits))
            for p, part in zip(batch, split_outputs(outputs, rows), strict=True):
                if not p.future.done():
                    p.future.set_result(part)
        self._finished()

    def _finished(self) -> None:
        self._busy = False
        if self._queue:
            self._schedule(asyncio.get_running_loop())

    def close(self) -> None:
        """Stop taking requests into the queue; what is queued still runs, late callers run alone."""
        self._closed = True
        if self._queue and not self._busy:
            self._schedule(asyncio.get_running_loop())

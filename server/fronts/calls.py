"""The per-call wrapper every gRPC servicer of a process shares: request id, drain refusal, in-flight
tracking, model lookup, metrics, and ServiceError -> status code.

`CallRunner.unary` builds a method's handler once, when the servicer is made; each call then runs that
handler and the servicer's work method, with no closure or partial built per call. A call's metrics
are one tuple appended to `Metrics.request_log`, folded into Prometheus by `flush` (see
server/metrics.py): every FLUSH_SECONDS while calls keep coming, at each scrape of the process's own
/metrics (`flush_for_scrape`), and with several processes as soon as no call is in flight.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from server.errors import InvalidArgument, ServiceError, Unavailable
from server.fronts.grpc.registration import Undecodable
from server.inference.served_model import ServedModel
from server.inference.store import ModelStore
from server.logging_setup import request_id
from server.metrics import FLUSH_SECONDS, LOG_LIMIT, Metrics

log = logging.getLogger(__name__)
Response = TypeVar("Response")
# Finds the model version a call is for; raises NotFound or InvalidArgument for a bad name or version.
Resolve = Callable[[], ServedModel]
# A servicer's work for one call: (model or None, request, context) -> the response.
Work = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]
Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
_STATUS = {code.name: code for code in grpc.StatusCode}
# What a call is told while the process drains (every front, gRPC and HTTP, says the same).
DRAINING = "server is shutting down; retry against another replica"


class CallTracker:
    """The calls this process is handling, so a drain can wait until every accepted call is done."""

    def __init__(self) -> None:
        self.active = 0
        self.last_started = 0.0  # time.monotonic() of the latest call's start
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.active += 1
        self.last_started = time.monotonic()
        self._idle.clear()

    def leave(self) -> None:
        self.active -= 1
        if self.active == 0:
            self._idle.set()

    async def idle(self) -> None:
        await self._idle.wait()

    async def quiet(self, seconds: float, deadline: float) -> None:
        """Wait until no call has started for `seconds` and none is running, or until `deadline`
        (time.monotonic()). Calls the transport had already received when the drain began reach a
        handler within milliseconds and are answered (UNAVAILABLE once refusing) instead of being
        cancelled by the transport's shutdown."""
        while time.monotonic() < deadline:
            since = time.monotonic() - self.last_started
            if self.active == 0 and since >= seconds:
                return
            if self.active:
                try:
                    await asyncio.wait_for(self.idle(), deadline - time.monotonic())
                except TimeoutError:
                    return
            else:
                await asyncio.sleep(min(seconds - since, deadline - time.monotonic()))


class CallRunner:
    """Runs one RPC of any servicer: vae.v1 and the Open Inference Protocol share one per process, so
    the drain refuses and waits for the calls of both alike."""

    def __init__(self, metrics: Metrics, store: ModelStore | None = None) -> None:
        self.metrics = metrics
        self.store = store  # for `unary(..., lookup=True)`: requests with a vae.v1 ModelRef
        self.draining = False  # set by the drain: new calls get UNAVAILABLE
        self.tracker = CallTracker()
        # Request ids for calls that bring none: a per-process random prefix and a counter (unique
        # without the cost of a uuid4 per call).
        self._id_prefix = os.urandom(4).hex()
        self._ids = itertools.count(1)
        self._flush_due: asyncio.TimerHandle | asyncio.Handle | None = None
        # The supervisor reads the processes' files, which no scrape of ours precedes: fold at idle.
        self._flush_when_idle = metrics.multiprocess
        self._loop: asyncio.AbstractEventLoop | None = None
        metrics.before_collect = self.flush_for_scrape

    def _request_id(self, context: grpc.aio.ServicerContext) -> str:
        for key, value in context.invocation_metadata() or ():
            if key == "x-request-id" and value:
                return str(value)
        return f"{self._id_prefix}{next(self._ids):08x}"

    def _begin(self, context: grpc.aio.ServicerContext) -> str:
        """A gRPC call's request id: the caller's x-request-id or a new one, set for the call's log
        lines (this task's context only) and sent back in the trailing metadata."""
        rid = self._request_id(context)
        request_id.set(rid)
        context.set_trailing_metadata((("x-request-id", rid),))
        return rid

    # --- metrics --------------------------------------------------------------------------------

    def flush(self) -> None:
        """Fold the calls recorded so far into the metrics (event loop's thread)."""
        if self._flush_due is not None:
            self._flush_due.cancel()
        self._flush_due = None
        self.metrics.flush(self.tracker.active)

    def flush_for_scrape(self) -> None:
        """Before a scrape (the metrics server's thread): fold on the loop, waiting up to a second."""
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return
        try:
            if asyncio.get_running_loop() is loop:
                self.flush()
                return
        except RuntimeError:
            pass  # no loop in this thread: the usual case, the metrics server's thread
        done = threading.Event()

        def fold() -> None:
            self.flush()
            done.set()

        try:
            loop.call_soon_threadsafe(fold)
        except RuntimeError:  # the loop closed meanwhile
            return
        done.wait(1.0)

    def _flush_later(self) -> None:
        """A call started and no flush is due: fold within FLUSH_SECONDS, so the metrics (the
        in-flight gauge too) follow a server that stays busy."""
        self._loop = loop = asyncio.get_running_loop()
        self._flush_due = loop.call_later(FLUSH_SECONDS, self.flush)

    def _record(self, rpc: str, model: str, code: str, started: float) -> None:
        records = self.metrics.request_log
        records.append((rpc, model, code, time.perf_counter() - started))
        # A long backlog, or idle with several processes: fold now, so that a scrape of the
        # supervisor after the last answer sees every call.
        if len(records) >= LOG_LIMIT or (self._flush_when_idle and self.tracker.active == 0):
            if self._flush_due is not None:
                self._flush_due.cancel()
            self._flush_due = asyncio.get_running_loop().call_soon(self.flush)

    # --- every call, of every front --------------------------------------------------------------

    def enter(self) -> float:
        """A call begins (a gRPC call here, or a call of another front, e.g. HTTP): tracked for the
        drain, its metrics folded within FLUSH_SECONDS; returns its start time for `leave`."""
        self.tracker.enter()
        if self._flush_due is None:
            self._flush_later()
        return time.perf_counter()

    def leave(self, rpc: str, model: str, code: str, started: float) -> None:
        """The call that `enter` began ended with status `code` (a grpc.StatusCode name)."""
        self.tracker.leave()
        self._record(rpc, model, code, started)

    # --- calls ----------------------------------------------------------------------------------

    def unary(self, rpc: str, work: Work, lookup: bool) -> Handler:
        """The handler of one RPC: request id, drain refusal, the model of `request.model` (a vae.v1
        ModelRef) when `lookup`, metrics and error mapping around `work(model, request, context)`.
        Also serves server-streaming methods, whose work writes to the context and returns None."""
        if lookup and self.store is None:
            raise ValueError(f"{rpc}: looking up models needs the CallRunner's store")
        store: ModelStore = self.store  # type: ignore[assignment]  # only read when lookup

        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            rid = self._begin(context)
            model_name, code = "", "OK"
            started = self.enter()
            try:
                if self.draining:
                    raise Unavailable(DRAINING)
                if type(request) is Undecodable:
                    raise InvalidArgument(request.describe())
                model = None
                if lookup:
                    ref = request.model
                    model = store.table.get((ref.name, ref.version))
                    if model is None:  # not loaded: get() raises the error that says why
                        model = store.get(ref.name, ref.version)
                    model_name = model.metadata.name
                return await work(model, request, context)
            except BaseException as exc:
                code = _code_of(exc, context)
                await _answer_failure(rpc, context, exc, code, rid)
                raise
            finally:
                self.leave(rpc, model_name, code, started)

        handle.__name__ = rpc
        return handle

    async def run(
        self,
        rpc: str,
        context: grpc.aio.ServicerContext,
        resolve: Resolve | None,
        work: Callable[[ServedModel | None], Awaitable[Response]],
    ) -> Response:
        """One RPC whose model is found by `resolve` (None for calls about no model); what `unary`
        does, for servicers whose requests name the model otherwise (the Open Inference Protocol)."""
        rid = self._begin(context)
        model_name, code = "", "OK"
        started = self.enter()
        try:
            if self.draining:
                raise Unavailable(DRAINING)
            model = None
            if resolve is not None:
                model = resolve()
                model_name = model.metadata.name
            return await work(model)
        except BaseException as exc:
            code = _code_of(exc, context)
            await _answer_failure(rpc, context, exc, code, rid)
            raise
        finally:
            self.leave(rpc, model_name, code, started)


def _is_abort(exc: BaseException) -> bool:
    """grpc.aio's context.abort() raises an internal AbortError; let it through untouched."""
    return type(exc).__name__ == "AbortError"


def _code_of(exc: BaseException, context: grpc.aio.ServicerContext) -> str:
    """The status a failed call ends with, as the metrics label it."""
    if isinstance(exc, ServiceError):
        return exc.code
    if isinstance(exc, asyncio.CancelledError):
        remaining = context.time_remaining()
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    if _is_abort(exc) or not isinstance(exc, Exception):
        return "OK"  # the work aborted the call itself, or the process is exiting
    return "INTERNAL"


async def _answer_failure(
    rpc: str, context: grpc.aio.ServicerContext, exc: BaseException, code: str, rid: str
) -> None:
    """Send a refusal's status and message (abort raises), or INTERNAL for an unexpected error."""
    if isinstance(exc, ServiceError):
        log.info("%s refused (%s): %s", rpc, exc.code, exc.message)
        await context.abort(_STATUS[exc.code], exc.message)
    elif code == "INTERNAL":
        log.exception("%s failed", rpc, exc_info=exc)
        await context.abort(
            grpc.StatusCode.INTERNAL, f"{rpc} failed inside the server; see its log ({rid})"
        )

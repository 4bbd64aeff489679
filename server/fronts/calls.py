"""The per-call wrapper every gRPC servicer of a process shares: request id, drain refusal, in-flight
tracking, metrics, and ServiceError -> status code."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from server.errors import ServiceError, Unavailable
from server.inference.served_model import ServedModel
from server.logging_setup import request_id
from server.metrics import Metrics

log = logging.getLogger(__name__)
Response = TypeVar("Response")
# Finds the model version a call is for; raises NotFound or InvalidArgument for a bad name or version.
Resolve = Callable[[], ServedModel]
_STATUS = {code.name: code for code in grpc.StatusCode}
# What a call is told while the process drains (every front says the same).
DRAINING_MESSAGE = "server is shutting down; retry against another replica"


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

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.draining = False  # set by the drain: new calls get UNAVAILABLE
        self.tracker = CallTracker()
        # Request ids for calls that bring none: a per-process random prefix and a counter (unique
        # without the cost of a uuid4 per call).
        self._id_prefix = os.urandom(4).hex()
        self._ids = itertools.count(1)

    def _request_id(self, context: grpc.aio.ServicerContext) -> str:
        for key, value in context.invocation_metadata() or ():
            if key == "x-request-id" and value:
                return str(value)
        return f"{self._id_prefix}{next(self._ids):08x}"

    async def run(
        self,
        rpc: str,
        context: grpc.aio.ServicerContext,
        resolve: Resolve | None,
        work: Callable[[ServedModel | None], Awaitable[Response]],
    ) -> Response:
        """One RPC: request id, model lookup (`resolve`, None for calls about no model), metrics
        labelled `rpc` and the model's name, and errors to status codes."""
        rid = self._request_id(context)
        request_id.set(rid)  # this task's context only: every log line of the call carries it
        context.set_trailing_metadata((("x-request-id", rid),))
        model_name, code = "", "OK"
        self.tracker.enter()
        timer = self.metrics.start_request()
        try:
            if self.draining:
                raise Unavailable(DRAINING_MESSAGE)
            model = None
            if resolve is not None:
                model = resolve()
                model_name = model.metadata.name
            return await work(model)
        except ServiceError as exc:
            code = exc.code
            log.info("%s refused (%s): %s", rpc, exc.code, exc.message)
            await context.abort(_STATUS[exc.code], exc.message)
            raise  # not reached: abort raises
        except asyncio.CancelledError:
            remaining = context.time_remaining()
            code = "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
            raise
        except Exception as exc:
            if _is_abort(exc):
                raise
            code = "INTERNAL"
            log.exception("%s failed", rpc)
            await context.abort(
                grpc.StatusCode.INTERNAL, f"{rpc} failed inside the server; see its log ({rid})"
            )
            raise
        finally:
            self.tracker.leave()
            self.metrics.finish_request(timer, rpc, model_name, code)


def _is_abort(exc: BaseException) -> bool:
    """grpc.aio's context.abort() raises an internal AbortError; let it through untouched."""
    return type(exc).__name__ == "AbortError"

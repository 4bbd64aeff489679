"""The per-call wrapper of the HTTP routes, with the gRPC CallRunner's semantics: the same drain
refusal and in-flight tracking (one CallTracker per process), the same metrics with an `rpc` label
per route, the same error text, and ServiceError codes as HTTP statuses with a JSON body."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Awaitable, Callable

from server.errors import DeadlineExceeded, InvalidArgument, QueueFull, ServiceError, Unavailable
from server.fronts.calls import DRAINING, CallRunner
from server.fronts.http.exchange import (
    STATUS_OF_CODE,
    HttpRequest,
    HttpResponse,
    error_response,
)
from server.logging_setup import request_id

log = logging.getLogger(__name__)
Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]
# A client's deadline for one call, in milliseconds (HTTP has none of its own; gRPC's is
# grpc-timeout). Past it the call ends with 504.
TIMEOUT_HEADER = "x-vae-timeout-ms"


def status_of(exc: ServiceError) -> int:
    if isinstance(exc, QueueFull):
        return STATUS_OF_CODE["QUEUE_FULL"]
    return STATUS_OF_CODE.get(exc.code, 500)


def _timeout_seconds(request: HttpRequest) -> float | None:
    text = request.headers.get(TIMEOUT_HEADER)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise InvalidArgument(
            f"header X-Vae-Timeout-Ms must be a positive number of milliseconds, got {text!r}"
        )
    return value / 1000.0


class HttpCalls:
    """Runs one HTTP route call through the process's CallRunner state (drain, tracker, metrics)."""

    def __init__(self, calls: CallRunner) -> None:
        self.calls = calls
        self._id_prefix = os.urandom(4).hex()
        self._ids = itertools.count(1)

    async def run(
        self, rpc: str, request: HttpRequest, handler: Handler, refuse_when_draining: bool = True
    ) -> HttpResponse:
        """One call of route `rpc`: request id, drain refusal (not for health routes, which must
        answer while the process drains), deadline, metrics labelled `rpc` and the model the
        handler named (request.model), errors to JSON with their status."""
        rid = request.headers.get("x-request-id") or f"{self._id_prefix}{next(self._ids):08x}"
        request_id.set(rid)
        code = "OK"
        started = self.calls.enter()
        try:
            if refuse_when_draining and self.calls.draining:
                raise Unavailable(DRAINING)
            timeout = _timeout_seconds(request)
            if timeout is None:
                response = await handler(request)
            else:
                try:
                    async with asyncio.timeout(timeout):
                        response = await handler(request)
                except TimeoutError:
                    raise DeadlineExceeded(
                        f"{rpc}: the deadline of {timeout * 1000:g} ms (X-Vae-Timeout-Ms) passed "
                        "before the answer was ready; allow more time or ask for less"
                    ) from None
        except ServiceError as exc:
            code = exc.code
            log.info("%s refused (%s): %s", rpc, exc.code, exc.message)
            response = error_response(status_of(exc), exc.message)
        except asyncio.CancelledError:
            code = "CANCELLED"  # the client went away
            raise
        except Exception:
            code = "INTERNAL"
            log.exception("%s failed", rpc)
            response = error_response(500, f"{rpc} failed inside the server; see its log ({rid})")
        finally:
            self.calls.leave(rpc, request.model, code, started)
        response.headers["X-Request-Id"] = rid
        return response

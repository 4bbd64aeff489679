"""grpc.health.v1 for one serving process that answers for every process of its vae-serve.

With `--processes N` the processes share the gRPC port, so a health check reaches whichever one the
kernel picks. Each process therefore reports SERVING only when every process is: their states live in
one small shared array (`ProcessStates`, made by the supervisor before it starts them), and a process
folds the others' states into its own answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

# Values a process writes into its slot of the shared array.
STARTING, UP, DRAINING = 0, 1, 2
WATCH_POLL_SECONDS = 0.25  # how often a Watch looks at the other processes' states


class ProcessStates:
    """One byte per serving process (STARTING, UP or DRAINING) in memory shared between them.

    `array` is a multiprocessing.Array of bytes (typecode 'b'); `index` is this process's slot.
    """

    def __init__(self, array: Any, index: int) -> None:
        self.array = array
        self.index = index

    def set(self, state: int) -> None:
        self.array[self.index] = state

    def all_up(self) -> bool:
        return all(state == UP for state in self.array[:])


class HealthServicer(health_pb2_grpc.HealthServicer):
    """Check and Watch over a map of service name -> status, combined with the other processes."""

    def __init__(self, states: ProcessStates | None = None) -> None:
        self.states = states
        self._status: dict[str, int] = {"": NOT_SERVING}
        self._changed = asyncio.Condition()

    def status(self, service: str) -> int | None:
        """What a check of `service` answers now; None for a service this server does not know."""
        local = self._status.get(service)
        if local == SERVING and self.states is not None and not self.states.all_up():
            return NOT_SERVING  # another process is starting, restarting or draining
        return local

    async def set_many(self, services: Iterable[str], status: int) -> None:
        """Set these services' status (on the event loop) and wake their watchers."""
        for service in services:
            self._status[service] = status
        async with self._changed:
            self._changed.notify_all()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ):
        status = self.status(request.service)
        if status is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"unknown service {request.service!r}; ask for '' (the whole server), "
                "'vae.v1.VaeService' or 'vae.v1.VaeService/<model>'",
            )
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ):
        """Send the status now and again whenever it changes, here or in another process."""
        last = None
        while True:
            status = self.status(request.service)
            if status is None:
                status = SERVICE_UNKNOWN
            if status != last:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), WATCH_POLL_SECONDS)

"""Readiness shared by every front: each process's state (STARTING, UP, DRAINING) in memory shared
between the processes of one vae-serve, and this process's status per service name.

With `--processes N` the processes share the ports, so a readiness check reaches whichever one the
kernel picks. Each process therefore reports SERVING only when every process is: their states live in
one small shared array (`ProcessStates`, made by the supervisor before it starts them), and a process
folds the others' states into its own answer. The gRPC health service and the HTTP health routes both
read `Readiness`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from grpc_health.v1 import health_pb2

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

# The service names readiness is kept for: the whole server (""), the API, and one per model.
API_SERVICE = "vae.v1.VaeService"


def model_service(model: str) -> str:
    """The service name that reports one model's readiness (grpc.health.v1 and the v2 ready routes)."""
    return f"{API_SERVICE}/{model}"


# Values a process writes into its slot of the shared array.
STARTING, UP, DRAINING = 0, 1, 2


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


class Readiness:
    """Service name -> status (grpc.health.v1's values), combined with the other processes' states.

    "" is the whole server, `vae.v1.VaeService` the API, `vae.v1.VaeService/<model>` one model.
    """

    def __init__(self, states: ProcessStates | None = None) -> None:
        self.states = states
        self._status: dict[str, int] = {"": NOT_SERVING}
        self.changed = asyncio.Condition()  # notified (on the event loop) after every change

    def status(self, service: str) -> int | None:
        """What a check of `service` answers now; None for a service this server does not know."""
        local = self._status.get(service)
        if local == SERVING and self.states is not None and not self.states.all_up():
            return NOT_SERVING  # another process is starting, restarting or draining
        return local

    def serving(self, service: str) -> bool:
        return self.status(service) == SERVING

    async def set_many(self, services: Iterable[str], status: int) -> None:
        """Set these services' status (on the event loop) and wake whoever watches them."""
        for service in services:
            self._status[service] = status
        async with self.changed:
            self.changed.notify_all()

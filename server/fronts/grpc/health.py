"""grpc.health.v1 for one serving process, answering for every process of its vae-serve from the
shared `Readiness` (server/fronts/readiness.py)."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.fronts.readiness import SERVICE_UNKNOWN, Readiness

WATCH_POLL_SECONDS = 0.25  # how often a Watch looks at the other processes' states


class HealthServicer(health_pb2_grpc.HealthServicer):
    """Check and Watch over the process's Readiness."""

    def __init__(self, readiness: Readiness) -> None:
        self.readiness = readiness

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ):
        status = self.readiness.status(request.service)
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
            status = self.readiness.status(request.service)
            if status is None:
                status = SERVICE_UNKNOWN
            if status != last:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            changed = self.readiness.changed
            async with changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), WATCH_POLL_SECONDS)

"""The HTTP front of one serving process: its routes (v2 REST, image routes, /openapi.json, the
explorer), the router, and the aiohttp server that parses HTTP on the process's event loop.

aiohttp's low-level server was measured faster than uvicorn with httptools on these routes
(BENCHMARKS.md, HTTP front); HTTP parsing is aiohttp's (llhttp), never ours.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable, Mapping

from aiohttp import web, web_request

from server.dataplane.plane import DataPlane
from server.fronts.calls import CallRunner
from server.fronts.http import explorer, images, openapi
from server.fronts.http.calls import HttpCalls
from server.fronts.http.exchange import (
    HttpRequest,
    HttpResponse,
    PayloadTooLarge,
    ReadBody,
    error_response,
)
from server.fronts.http.routes import Route, Router
from server.fronts.http.v2_rest import V2Rest
from server.inference.store import ModelStore

log = logging.getLogger(__name__)


def build_routes(
    store: ModelStore,
    plane: DataPlane,
    server_ready: Callable[[], bool],
    model_ready: Callable[[str], bool],
) -> list[Route]:
    """Every route of the front, /openapi.json describing them all."""
    routes = V2Rest(store, plane, server_ready, model_ready).routes()
    routes += images.ImageRoutes(store, plane).routes()
    routes += explorer.routes()
    routes.append(openapi.route(routes))
    return routes


class HttpFront:
    """Routes a parsed request to its handler through the per-call wrapper."""

    def __init__(self, routes: list[Route], calls: CallRunner) -> None:
        self.router = Router(routes)
        self.calls = HttpCalls(calls)

    @property
    def draining(self) -> bool:
        return self.calls.calls.draining

    async def dispatch(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        read_body: ReadBody,
    ) -> HttpResponse:
        found = self.router.match(method, path)
        if isinstance(found, str):
            if found == "not found":
                return error_response(
                    404, f"no route {path!r}; see /openapi.json for the routes this server has"
                )
            return error_response(405, f"{path} takes {found}, not {method}")
        route = found.route
        request = HttpRequest(method, path, query, headers, read_body, found.params)
        if not route.counted:
            return await route.handler(request)
        rpc = f"http.{route.rpc}"
        return await self.calls.run(rpc, request, route.handler, not route.health)


def body_reader(request: web_request.BaseRequest) -> ReadBody:
    """Reads the body of an aiohttp request, refusing one over `limit` bytes (413) before reading
    more than the limit."""

    async def read(limit: int) -> bytes:
        length = request.content_length
        if length is not None:
            if length > limit:
                raise PayloadTooLarge(_too_large(length, limit))
            return await request.content.readexactly(length) if length else b""
        chunks, total = [], 0
        while chunk := await request.content.readany():
            total += len(chunk)
            if total > limit:
                raise PayloadTooLarge(_too_large(total, limit, "over"))
            chunks.append(chunk)
        return b"".join(chunks)

    return read


def _too_large(size: int, limit: int, how: str = "") -> str:
    return (
        f"the request body is {how + ' ' if how else ''}{size} bytes, over this server's limit of "
        f"{limit} (--max-message-bytes); send less in one request"
    )


class AiohttpServer:
    """The front on aiohttp's low-level server, listening on the running event loop."""

    def __init__(self, front: HttpFront) -> None:
        self.front = front
        self._server = web.Server(self._handle, access_log=None)
        self._listener: asyncio.Server | None = None
        self.port = 0

    async def _handle(self, request: web_request.BaseRequest) -> web.StreamResponse:
        path = request.raw_path.partition("?")[0]
        answer = await self.front.dispatch(
            request.method, path, request.query, request.headers, body_reader(request)
        )
        answer.headers["Content-Type"] = answer.content_type
        response = web.Response(status=answer.status, body=answer.body, headers=answer.headers)
        if self.front.draining:
            response.force_close()  # the client reconnects, to another replica
        return response

    async def start(
        self, host: str, port: int, tls: ssl.SSLContext | None, shared_port: bool
    ) -> int:
        """Listen on host:port (SO_REUSEPORT when the processes of one vae-serve share it)."""
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            self._server,
            host=host,
            port=port,
            ssl=tls,
            reuse_port=shared_port,
            family=socket.AF_INET6 if ":" in host else socket.AF_INET,
            backlog=1024,
        )
        self.port = self._listener.sockets[0].getsockname()[1]
        return self.port

    async def stop(self, timeout: float) -> None:
        """Stop listening, then let the requests being answered finish within `timeout`."""
        if self._listener is None:
            return
        self._listener.close()
        await self._server.shutdown(timeout)
        await self._listener.wait_closed()
        self._listener = None

"""The HTTP front of one serving process: its routes (v2 REST, image routes, /openapi.json, the
explorer), the router, and uvicorn (httptools) serving them as ASGI on the process's event loop.

uvicorn with httptools was measured faster than aiohttp's low-level server on these routes for one
client (BENCHMARKS.md, HTTP front); HTTP parsing is httptools' (llhttp), never ours.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import ssl
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

import uvicorn

from server.dataplane.plane import DataPlane
from server.errors import Cancelled
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


def body_reader(headers: Mapping[str, str], receive: Any) -> ReadBody:
    """Reads an ASGI request's body, refusing one over `limit` bytes (413): at once when its
    Content-Length says so, else as soon as the chunks received pass the limit."""

    async def read(limit: int) -> bytes:
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(_too_large(int(declared), limit))
        chunks, total, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                raise Cancelled("the client closed the connection before sending the whole body")
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                raise PayloadTooLarge(_too_large(total, limit, "over"))
            chunks.append(chunk)
            more = message.get("more_body", False)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    return read


def _too_large(size: int, limit: int, how: str = "") -> str:
    return (
        f"the request body is {how + ' ' if how else ''}{size} bytes, over this server's limit of "
        f"{limit} (--max-message-bytes); send less in one request"
    )


def asgi_app(front: HttpFront) -> Any:
    """The front as an ASGI 3 application: uvicorn (httptools) parses HTTP, the router routes."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return  # no lifespan or websockets here
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
        path = scope.get("raw_path") or scope["path"].encode()
        answer = await front.dispatch(
            scope["method"], path.decode("latin-1"), query, headers, body_reader(headers, receive)
        )
        out = [(b"content-type", answer.content_type.encode())]
        out += [(k.lower().encode(), v.encode("latin-1")) for k, v in answer.headers.items()]
        if front.draining:
            out.append((b"connection", b"close"))  # the client reconnects, to another replica
        await send({"type": "http.response.start", "status": answer.status, "headers": out})
        await send({"type": "http.response.body", "body": answer.body})

    return app


class UvicornServer:
    """The front on uvicorn with httptools, served on the running event loop."""

    def __init__(self, front: HttpFront) -> None:
        self.front = front
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.listening: socket.socket | None = None
        self.port = 0

    async def start(
        self, host: str, port: int, tls: ssl.SSLContext | None, shared_port: bool
    ) -> int:
        """Listen on host:port (SO_REUSEPORT when the processes of one vae-serve share it)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets that say TCP (accepted
        # ones inherit it); without it each answer's second write waits for a delayed ACK (~40 ms).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host.strip("[]"), port))
            sock.listen(1024)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        config = uvicorn.Config(
            asgi_app(self.front),
            http="httptools",
            ws="none",
            lifespan="off",
            interface="asgi3",
            log_config=None,
            log_level="warning",
            access_log=False,
            server_header=False,
            backlog=1024,
        )
        config.load()
        config.ssl = tls  # the context made from --tls-cert/--tls-key/--tls-client-ca
        self._server = uvicorn.Server(config)
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise OSError(f"the HTTP server on {host}:{port} stopped while starting")
            await asyncio.sleep(0.005)
        self.listening = sock
        self.port = sock.getsockname()[1]
        return self.port

    async def stop(self, timeout: float) -> None:
        """Stop listening, then let the requests being answered finish within `timeout`."""
        if self._server is None or self._task is None:
            return
        self._server.config.timeout_graceful_shutdown = max(1, math.ceil(timeout))
        self._server.should_exit = True
        await self._task
        self._server = self._task = None

"""Registers servicers on a grpc.aio server so a request that does not parse is INVALID_ARGUMENT.

The generated `add_*_to_server` functions parse requests with the message's FromString; when it
raises, grpc.aio answers UNKNOWN "Unexpected DecodeError" before any of our code runs. Here each
method's parser returns an `Undecodable` instead of raising, and the call is refused with
INVALID_ARGUMENT naming the method and the message it takes: by the servicer's own handler when it
checks (vae.v1's handlers, built by CallRunner.unary, which also count the refusal), else by a guard
around the handler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc


@dataclass(frozen=True)
class Undecodable:
    """What a method's parser returns for bytes that are not its request message."""

    method: str  # /package.Service/Method
    message: str  # the request message's full name
    error: str

    def describe(self) -> str:
        return (
            f"{self.method}: the request is not a valid {self.message} message ({self.error}); "
            f"send a {self.message}"
        )


class _Capture:
    """Stands in for a server while a generated add_*_to_server registers its handlers."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """The generated code registers both ways; the named handlers are enough."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.service, self.handlers = service, handlers


def _parser(parse: Callable[[bytes], Any], method: str) -> Callable[[bytes], Any]:
    message = parse.__self__.DESCRIPTOR.full_name  # type: ignore[attr-defined]

    def checked(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as exc:  # protobuf's DecodeError, or what a broken message raises
            return Undecodable(method, message, str(exc) or type(exc).__name__)

    return checked


def _guarded(behaviour: Callable[..., Any], streaming: bool) -> Callable[..., Any]:
    if streaming:

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.describe())
            async for item in behaviour(request, context):
                yield item

        return stream

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.describe())
        return await behaviour(request, context)

    return unary


def add_servicer(
    add_to_server: Callable[[Any, Any], None],
    servicer: Any,
    server: grpc.aio.Server,
    checks_undecodable: bool = False,
) -> None:
    """Register `servicer` with `add_to_server` (a generated add_*_to_server) on `server`, with
    parsers that never raise; `checks_undecodable`: its handlers refuse an Undecodable themselves."""
    capture = _Capture()
    add_to_server(servicer, capture)
    handlers = {}
    for name, handler in capture.handlers.items():
        if handler.request_streaming:  # none of ours: register as generated
            handlers[name] = handler
            continue
        changes: dict[str, Any] = {
            "request_deserializer": _parser(
                handler.request_deserializer, f"/{capture.service}/{name}"
            )
        }
        if not checks_undecodable:
            if handler.response_streaming:
                changes["unary_stream"] = _guarded(handler.unary_stream, streaming=True)
            else:
                changes["unary_unary"] = _guarded(handler.unary_unary, streaming=False)
        handlers[name] = handler._replace(**changes)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(capture.service, handlers),)
    )
    server.add_registered_method_handlers(capture.service, handlers)

"""/openapi.json: an OpenAPI 3.1 document built from the route table, so every route is in it."""

from __future__ import annotations

import json
import re
from typing import Any

from server.fronts.http.exchange import JSON, HttpRequest, HttpResponse
from server.fronts.http.routes import Body, Route
from server.fronts.v2_models import server_version

_PARAMETER = re.compile(r"\{(\w+)\}")
_ERROR = {
    "description": "an error: 400 bad input, 404 unknown model or version, 413 over a limit, "
    "429 queue full, 503 draining (with Retry-After), 504 past X-Vae-Timeout-Ms",
    "content": {
        JSON: {
            "schema": {
                "type": "object",
                "properties": {"error": {"type": "string"}},
                "required": ["error"],
            }
        }
    },
}


def _content(body: Body) -> dict[str, Any]:
    return {kind: {"schema": schema} for kind, schema in body.content.items()}


def document(routes: list[Route]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    used: set[str] = set()
    for route in routes:
        operation_id = route.rpc
        if "{version}" in route.pattern:
            operation_id += "Version"
        while operation_id in used:
            operation_id += "_"
        used.add(operation_id)
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PARAMETER.findall(route.pattern)
        ]
        parameters += [
            {"name": name, "in": "query", "schema": {"type": kind}, "description": text}
            for name, kind, text in route.query
        ]
        responses: dict[str, Any] = {
            str(status): {"description": body.description or "OK", "content": _content(body)}
            for status, body in route.responses.items()
        } or {"200": {"description": "OK"}}
        if route.counted:
            responses["default"] = _ERROR
        operation: dict[str, Any] = {
            "operationId": operation_id,
            "summary": route.summary,
            "responses": responses,
        }
        if parameters:
            operation["parameters"] = parameters
        if route.request is not None:
            operation["requestBody"] = {
                "description": route.request.description or route.summary,
                "content": _content(route.request),
            }
        paths.setdefault(route.pattern, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "vae-serve HTTP API",
            "version": server_version(),
            "description": "The Open Inference Protocol (KServe v2 REST, with Triton's binary "
            "tensor extension), image routes and the latent-space explorer of vae-serve.",
        },
        "paths": paths,
    }


def route(routes: list[Route]) -> Route:
    """GET /openapi.json, describing `routes` as they are at its first call; the caller appends
    this route to the list, so the document describes it too."""
    cached: list[bytes] = []

    async def handler(request: HttpRequest) -> HttpResponse:
        if not cached:
            cached.append(json.dumps(document(routes)).encode())
        return HttpResponse(200, cached[0], JSON)

    return Route(
        "GET",
        "/openapi.json",
        "OpenAPI",
        handler,
        "This document",
        responses={200: Body({JSON: {"type": "object"}})},
    )

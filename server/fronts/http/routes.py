"""The route table of the HTTP front and its router: each route is a method, a path pattern with
`{parameters}`, the `rpc` name its metrics carry, a handler, and what /openapi.json says of it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote

from server.fronts.http.calls import Handler

_PARAMETER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Body:
    """A request or response body as /openapi.json describes it: content type -> JSON Schema."""

    content: dict[str, dict] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class Route:
    method: str  # GET, POST
    pattern: str  # e.g. /v2/models/{model}/infer
    rpc: str  # the metrics' `rpc` label and the OpenAPI operationId
    handler: Handler
    summary: str
    query: tuple[tuple[str, str, str], ...] = ()  # (name, JSON Schema type, description)
    request: Body | None = None
    responses: dict[int, Body] = field(default_factory=dict)
    counted: bool = True  # False: static files, not calls (no metrics, no drain refusal)
    health: bool = False  # answered while draining (probes must see the truth, not 503)


@dataclass(frozen=True)
class Match:
    route: Route
    params: dict[str, str]


class Router:
    """Finds the route of a method and path; path parameters are one segment each, percent-decoded."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = list(routes)
        self._compiled = [
            (re.compile("^" + _PARAMETER.sub(r"(?P<\1>[^/]+)", route.pattern) + "$"), route)
            for route in self.routes
        ]

    def match(self, method: str, path: str) -> Match | str:
        """The matching route, or the reason there is none: 'not found' or the allowed methods."""
        allowed = []
        for regex, route in self._compiled:
            found = regex.match(path)
            if found is None:
                continue
            if route.method == method or (method == "HEAD" and route.method == "GET"):
                params = {key: unquote(value) for key, value in found.groupdict().items()}
                return Match(route, params)
            allowed.append(route.method)
        return ", ".join(sorted(set(allowed))) if allowed else "not found"

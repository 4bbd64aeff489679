"""The latent-space explorer's static files (server/fronts/http/static/, shipped in the package):
`/` is its page, `/static/<file>` the rest. Only the files that ship are served, by exact name."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from server.fronts.http.exchange import HttpRequest, HttpResponse, error_response
from server.fronts.http.routes import Body, Route

STATIC = Path(__file__).resolve().parent / "static"
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


@cache
def _files() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, content type) of every file that ships; read once."""
    return {
        path.name: (path.read_bytes(), TYPES[path.suffix])
        for path in sorted(STATIC.iterdir())
        if path.is_file() and path.suffix in TYPES
    }


def _file(name: str) -> HttpResponse:
    found = _files().get(name)
    if found is None:
        return error_response(404, f"no file {name!r}; the explorer has {', '.join(_files())}")
    body, content_type = found
    # The page and its script change together with the server; revalidate rather than cache.
    return HttpResponse(200, body, content_type, {"Cache-Control": "no-cache"})


async def index(request: HttpRequest) -> HttpResponse:
    return _file("index.html")


async def static(request: HttpRequest) -> HttpResponse:
    return _file(request.params["file"])


def routes() -> list[Route]:
    html = {200: Body({"text/html": {"type": "string"}})}
    files = {200: Body({"*/*": {"type": "string", "format": "binary"}})}
    return [
        Route("GET", "/", "Explorer", index, "The latent-space explorer (a web page)", responses=html, counted=False),
        Route("GET", "/static/{file}", "ExplorerFile", static, "The explorer's script and style", responses=files, counted=False),
    ]  # fmt: skip

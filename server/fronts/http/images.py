"""Image routes a person can curl, under /v1/models: sample a PNG grid, interpolate a PNG strip,
encode an image file, decode latents to PNG, the 2-D manifold, and the models with their metadata.
Each takes query parameters or JSON, calls the data plane, and answers PNG (or JSON on request)."""

from __future__ import annotations

import base64
import io
from statistics import NormalDist
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from server.codecs import grid_png, images_to_png
from server.dataplane import latent_space
from server.dataplane.plane import MAX_SEED, DataPlane, Generated
from server.errors import InvalidArgument
from server.fronts.http import query
from server.fronts.http.exchange import (
    JSON,
    PNG,
    HttpRequest,
    HttpResponse,
    json_object,
    json_response,
    wants_json,
)
from server.fronts.http.routes import Body, Route
from server.inference.served_model import ServedModel
from server.inference.store import ModelStore
from server.preprocessing import prepare_image
from server.repository import PRIOR_STANDARD_NORMAL

MAX_IMAGE_PIXELS = 4096 * 4096  # an uploaded file larger than this is refused before decoding
MAX_MANIFOLD_SIDE = 32
_PNG_BODY = Body({PNG: {"type": "string", "format": "binary"}}, "a PNG image")
_IMAGE_OR_JSON = Body(
    {PNG: {"type": "string", "format": "binary"}, JSON: {"type": "object"}},
    "PNG by default; JSON (latents, images, base64 PNGs) with Accept: application/json",
)
_JSON = Body({JSON: {"type": "object"}})


def model_summary(model: ServedModel, versions: list[int]) -> dict[str, Any]:
    """What /v1/models says of one model version (vae.v1's ModelInfo, in JSON)."""
    meta = model.metadata
    return {
        "name": meta.name,
        "version": meta.version,
        "available_versions": versions,
        "kind": meta.kind,
        "latent_dim": meta.latent_dim,
        "image_shape": list(meta.image_shape),
        "num_classes": meta.num_classes,
        "likelihood": meta.likelihood,
        "dataset": meta.dataset,
        "metrics": meta.metrics,
        "execution_provider": model.provider,
        "checkpoint_sha256": meta.checkpoint_sha256,
        "exported_at": meta.exported_at,
        "priors": list(model.priors),  # as loaded: a refused prior file is left out
        "preprocessing": meta.preprocessing.to_dict(),
    }


def _tensor(array: np.ndarray) -> dict[str, Any]:
    return {"shape": list(array.shape), "data": np.ascontiguousarray(array).ravel()}


class ImageRoutes:
    def __init__(self, store: ModelStore, plane: DataPlane) -> None:
        self.store = store
        self.plane = plane

    def _model(self, request: HttpRequest) -> ServedModel:
        version = query.integer(request.query, "version", 0, low=0)
        model = self.store.get(request.params["model"], version)
        request.model = model.metadata.name
        return model

    def _images(
        self, request: HttpRequest, generated: Generated, columns: int, seed: int | None = None
    ) -> HttpResponse:
        """A PNG grid `columns` wide, or JSON with latents, images and one PNG each (base64)."""
        meta = generated.model.metadata
        headers = {"X-Vae-Model": meta.name, "X-Vae-Version": str(meta.version)}
        if wants_json(request):
            pngs = [base64.b64encode(png).decode() for png in images_to_png(generated.images)]
            body = {
                "model": meta.name,
                "version": meta.version,
                "latents": _tensor(generated.latents),
                "images": _tensor(generated.images),
                "png": pngs,
            }
            if seed is not None:
                body["seed"] = seed
            return json_response(body, headers=headers)
        return HttpResponse(200, grid_png(generated.images, columns), PNG, headers)

    # --- routes ---------------------------------------------------------------------------------

    async def list_models(self, request: HttpRequest) -> HttpResponse:
        models = [
            model_summary(served, self.store.versions(served.metadata.name))
            for served in self.store.all_latest()
        ]
        return json_response({"models": models})

    async def model_info(self, request: HttpRequest) -> HttpResponse:
        model = self._model(request)
        return json_response(model_summary(model, self.store.versions(model.metadata.name)))

    async def sample(self, request: HttpRequest) -> HttpResponse:
        model = self._model(request)
        q = request.query
        count = query.integer(q, "count", 16, low=1)
        generated = await self.plane.sample(
            model,
            count,
            seed=query.optional_integer(q, "seed", 0, MAX_SEED),
            temperature=query.number(q, "temperature", 0.0),
            label=query.optional_integer(q, "label", 0, None),
            prior=q.get("prior") or PRIOR_STANDARD_NORMAL,
        )
        columns = query.integer(q, "columns", int(np.ceil(np.sqrt(count))), low=1)
        response = self._images(request, generated, columns, generated.seed)
        response.headers["X-Vae-Seed"] = str(generated.seed)
        return response

    async def interpolate(self, request: HttpRequest) -> HttpResponse:
        """Between two latents (`start`, `end`: comma-separated numbers) or the first latents of two
        seeds (`start_seed`, `end_seed`: what sample?count=1&seed=S draws)."""
        model = self._model(request)
        q = request.query
        dim = model.metadata.latent_dim
        if "start" in q or "end" in q:
            start, end = query.vector(q, "start", dim), query.vector(q, "end", dim)
        elif "start_seed" in q and "end_seed" in q:
            start, end = (
                latent_space.sample_prior(1, dim, query.integer(q, name, 0, 0, MAX_SEED))[0]
                for name in ("start_seed", "end_seed")
            )
        else:
            raise InvalidArgument(
                "set start and end (latents, comma-separated) or start_seed and end_seed"
            )
        method = query.choice(q, "method", ("linear", "spherical"), "linear")
        steps = query.integer(q, "steps", 8, low=1)
        generated = await self.plane.interpolate(
            model,
            steps,
            spherical=method == "spherical",
            start_latent=start,
            end_latent=end,
            label=query.optional_integer(q, "label", 0, None),
        )
        return self._images(request, generated, steps)

    async def manifold(self, request: HttpRequest) -> HttpResponse:
        """The decoded grid over a 2-D latent space, at the normal quantiles of evenly spaced
        probabilities (Kingma & Welling 2014, figure 4)."""
        model = self._model(request)
        dim = model.metadata.latent_dim
        if dim != 2:
            raise InvalidArgument(
                f"model {model.metadata.name!r} has {dim} latent dimensions; the manifold is drawn "
                "for models with 2"
            )
        side = query.integer(request.query, "side", 15, 2, MAX_MANIFOLD_SIDE)
        quantiles = [NormalDist().inv_cdf(p) for p in np.linspace(0.05, 0.95, side)]
        grid = np.array([(x, -y) for y in quantiles[::-1] for x in quantiles], np.float32)
        labels = []
        label = query.optional_integer(request.query, "label", 0, None)
        if label is not None:
            labels = [label] * len(grid)
        generated = await self.plane.decode(model, grid, labels)
        return self._images(request, generated, side)

    async def encode(self, request: HttpRequest) -> HttpResponse:
        """An image file (PNG or JPEG body, prepared as training prepared its images), or JSON
        {"images": [[[[...]]]] (N, C, H, W) in [0, 1], "labels": [...]}; answers mean and
        log_variance."""
        model = self._model(request)
        body = await request.read_body(self.plane.limits.max_message_bytes)
        content_type = request.headers.get("content-type", "")
        labels: Any = []
        if content_type.startswith(JSON):
            document = json_object(body)
            images = query.array(document.get("images"), "images", 4)
            labels = document.get("labels", [])
            if not isinstance(labels, list) or not all(type(v) is int for v in labels):
                raise InvalidArgument("labels must be a list of integers, one per image")
        else:
            images = self._image_file(model, body)[None]
            label = query.optional_integer(request.query, "label", 0, None)
            labels = [] if label is None else [label]
        encoded = await self.plane.encode(model, images, labels, clamp=False)
        answer: dict[str, Any] = {
            "model": model.metadata.name,
            "version": model.metadata.version,
            "mean": np.ascontiguousarray(encoded.mean),
        }
        if encoded.log_variance is not None:
            answer["log_variance"] = np.ascontiguousarray(encoded.log_variance)
        return json_response(answer)

    def _image_file(self, model: ServedModel, body: bytes) -> np.ndarray:
        """(C, H, W) in [0, 1] from PNG or JPEG bytes, refusing other formats and huge images."""
        try:
            image = Image.open(io.BytesIO(body), formats=("PNG", "JPEG"))
        except (UnidentifiedImageError, OSError):
            raise InvalidArgument(
                "the body is not a PNG or JPEG image; send one with Content-Type image/png, or "
                "JSON images with Content-Type application/json"
            ) from None
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise InvalidArgument(
                f"the image is {width}x{height} pixels, over the limit of {MAX_IMAGE_PIXELS}; "
                "send a smaller image"
            )
        meta = model.metadata
        try:
            return prepare_image(image, meta.preprocessing, tuple(meta.image_shape))
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"the image cannot be decoded: {exc}") from None

    async def decode(self, request: HttpRequest) -> HttpResponse:
        """JSON {"latents": [[...], ...] (N, D), "labels": [...]} -> a PNG grid (or JSON)."""
        model = self._model(request)
        document = json_object(await request.read_body(self.plane.limits.max_message_bytes))
        latents = query.array(document.get("latents"), "latents", 2)
        labels = document.get("labels", [])
        if not isinstance(labels, list) or not all(type(v) is int for v in labels):
            raise InvalidArgument("labels must be a list of integers, one per latent")
        generated = await self.plane.decode(model, latents, labels)
        columns = query.integer(request.query, "columns", int(np.ceil(np.sqrt(len(latents)))), 1)
        return self._images(request, generated, columns)

    def routes(self) -> list[Route]:
        base = "/v1/models/{model}"
        version = ("version", "integer", "model version (default: the highest loaded)")
        label = ("label", "integer", "class, for conditional models")
        columns = ("columns", "integer", "images per row of the PNG grid")
        listed = {200: _JSON}
        images = {200: _IMAGE_OR_JSON}
        return [
            Route("GET", "/v1/models", "ListModels", self.list_models, "Every model (highest version) with its metadata", responses=listed),
            Route("GET", base, "GetModelInfo", self.model_info, "One model version's metadata", query=(version,), responses=listed),
            Route(
                "GET", base + "/sample", "Sample", self.sample, "A PNG grid of samples; the seed used in X-Vae-Seed",
                query=(
                    ("count", "integer", "images (default 16)"),
                    ("seed", "integer", "0..2**63-1; the same seed gives the same images"),
                    ("temperature", "number", "prior spread (default 1)"),
                    ("prior", "string", "standard_normal (default) or a learned prior the model has"),
                    label, columns, version,
                ),
                responses=images,
            ),
            Route(
                "GET", base + "/interpolate", "Interpolate", self.interpolate, "A PNG strip between two latents or two seeds",
                query=(
                    ("start", "string", "first latent, comma-separated numbers"),
                    ("end", "string", "last latent, comma-separated numbers"),
                    ("start_seed", "integer", "or: the latent sample?count=1&seed=start_seed draws"),
                    ("end_seed", "integer", "and the one of end_seed"),
                    ("steps", "integer", "images, both ends included (default 8)"),
                    ("method", "string", "linear (default) or spherical"),
                    label, version,
                ),
                responses=images,
            ),
            Route(
                "GET", base + "/manifold", "Manifold", self.manifold, "The decoded grid over a 2-D latent space",
                query=(("side", "integer", "images per side (default 15)"), label, version),
                responses=images,
            ),
            Route(
                "POST", base + "/encode", "Encode", self.encode, "Mean and log-variance of an image file or JSON images",
                query=(label, version), request=Body({**_PNG_BODY.content, "image/jpeg": {"type": "string", "format": "binary"}, JSON: {"type": "object"}}), responses=listed,
            ),
            Route(
                "POST", base + "/decode", "Decode", self.decode, "A PNG grid decoded from JSON latents",
                query=(columns, version), request=_JSON, responses=images,
            ),
        ]  # fmt: skip

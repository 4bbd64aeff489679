"""The gRPC servicer (grpc.aio): converts protobuf to plain arrays, awaits the data plane, maps errors
to status codes, and counts every call."""

from __future__ import annotations

import functools
from typing import TypeAlias, TypeVar

import grpc
import numpy as np

from server.codecs import images_to_png, set_tensor, set_uint8_tensor, tensor_from_proto
from server.dataplane.plane import DataPlane, Generated
from server.errors import InvalidArgument
from server.fronts.calls import CallRunner
from server.inference.served_model import ServedModel
from server.inference.store import ModelStore
from server.metrics import Metrics
from server.proto_gen.vae.v1 import vae_pb2, vae_pb2_grpc
from server.repository import PRIOR_MIXTURE, PRIOR_STANDARD_NORMAL

Context: TypeAlias = grpc.aio.ServicerContext
ImageResponse = TypeVar(
    "ImageResponse", vae_pb2.DecodeResponse, vae_pb2.SampleResponse, vae_pb2.InterpolateResponse
)

_PNG_FORMATS = frozenset((vae_pb2.IMAGE_FORMAT_PNG, vae_pb2.IMAGE_FORMAT_TENSOR_AND_PNG))
_FLOAT_FORMATS = frozenset(
    (
        vae_pb2.IMAGE_FORMAT_UNSPECIFIED,
        vae_pb2.IMAGE_FORMAT_TENSOR,
        vae_pb2.IMAGE_FORMAT_TENSOR_AND_PNG,
    )
)
# vae.v1.Prior -> the data plane's prior names; unspecified means the standard normal.
_PRIORS: dict[int, str] = {
    vae_pb2.PRIOR_UNSPECIFIED: PRIOR_STANDARD_NORMAL,
    vae_pb2.PRIOR_STANDARD_NORMAL: PRIOR_STANDARD_NORMAL,
    vae_pb2.PRIOR_MIXTURE: PRIOR_MIXTURE,
}
_PRIOR_ENUM_NAMES = {PRIOR_STANDARD_NORMAL: "PRIOR_STANDARD_NORMAL", PRIOR_MIXTURE: "PRIOR_MIXTURE"}


@functools.cache
def _enum_values(enum: object) -> frozenset[int]:
    return frozenset(enum.values())  # type: ignore[attr-defined]


def _check_enum(value: int, enum: object, what: str) -> None:
    if value not in _enum_values(enum):
        names = ", ".join(enum.keys())  # type: ignore[attr-defined]
        raise InvalidArgument(f"{what} {value} is not a known value; allowed: {names}")


def _prior(value: int) -> str:
    """A request's `prior` as the data plane's name; INVALID_ARGUMENT for an unknown value."""
    _check_enum(value, vae_pb2.Prior, "prior")
    return _PRIORS[value]


def model_ref(model: ServedModel) -> vae_pb2.ModelRef:
    return vae_pb2.ModelRef(name=model.metadata.name, version=model.metadata.version)


def model_info(model: ServedModel, versions: list[int]) -> vae_pb2.ModelInfo:
    meta = model.metadata
    return vae_pb2.ModelInfo(
        name=meta.name,
        version=meta.version,
        available_versions=versions,
        kind=meta.kind,
        latent_dim=meta.latent_dim,
        image_shape=list(meta.image_shape),
        num_classes=meta.num_classes,
        likelihood=meta.likelihood,
        dataset=meta.dataset,
        metrics=meta.metrics,
        execution_provider=model.provider,
        checkpoint_sha256=meta.checkpoint_sha256,
        exported_at=meta.exported_at,
        opset=meta.opset,
        priors=[_PRIOR_ENUM_NAMES[p] for p in meta.priors],
        preprocessing=vae_pb2.Preprocessing(**meta.preprocessing.to_dict()),
    )


def fill_images(response: ImageResponse, generated: Generated, image_format: int) -> ImageResponse:
    """Set `model`, and `images` and/or `png` as the format asks, on any of the image responses;
    the RPC has checked `image_format` before any work."""
    response.model.name = generated.model.metadata.name
    response.model.version = generated.model.metadata.version
    if image_format in _FLOAT_FORMATS:
        set_tensor(response.images, generated.images)
    elif image_format == vae_pb2.IMAGE_FORMAT_UINT8:
        set_uint8_tensor(response.images, generated.images)
    if image_format in _PNG_FORMATS:
        response.png.extend(images_to_png(generated.images))
    return response


class VaeServicer(vae_pb2_grpc.VaeServiceServicer):
    """vae.v1.VaeService; `calls` runs every call (shared with the other servicers of the process).

    Each RPC's handler is built once here (CallRunner.unary: request id, drain, model lookup,
    metrics, errors) around the method below that does its work; nothing is built per call."""

    def __init__(
        self,
        store: ModelStore,
        plane: DataPlane,
        metrics: Metrics,
        calls: CallRunner | None = None,
    ) -> None:
        self.store = store
        self.plane = plane
        self.metrics = metrics
        self.calls = calls or CallRunner(metrics, store)
        if self.calls.store is None:
            self.calls.store = store
        self._max_elements = plane.limits.max_message_bytes // 4
        unary = self.calls.unary
        self.Encode = unary("Encode", self._encode, lookup=True)  # type: ignore[method-assign]
        self.Decode = unary("Decode", self._decode, lookup=True)  # type: ignore[method-assign]
        self.Sample = unary("Sample", self._sample, lookup=True)  # type: ignore[method-assign]
        self.SampleStream = unary("SampleStream", self._sample_stream, lookup=True)  # type: ignore[method-assign]
        self.Interpolate = unary("Interpolate", self._interpolate, lookup=True)  # type: ignore[method-assign]
        self.GetModelInfo = unary("GetModelInfo", self._model_info, lookup=True)  # type: ignore[method-assign]
        self.ListModels = unary("ListModels", self._list_models, lookup=False)  # type: ignore[method-assign]

    def _tensor(self, tensor: vae_pb2.Tensor, what: str, allow_uint8: bool = False) -> np.ndarray:
        return tensor_from_proto(tensor, what, self._max_elements, allow_uint8)

    async def _encode(
        self, model: ServedModel, request: vae_pb2.EncodeRequest, context: Context
    ) -> vae_pb2.EncodeResponse:
        images = self._tensor(request.images, "images", allow_uint8=True)
        seed = request.seed if request.HasField("seed") else None
        result = await self.plane.encode(
            model, images, request.labels, request.sample, seed, clamp=request.clamp
        )
        response = vae_pb2.EncodeResponse(model=model_ref(model))
        set_tensor(response.mean, result.mean)
        if result.log_variance is not None:
            set_tensor(response.log_variance, result.log_variance)
        if result.latents is not None:
            set_tensor(response.latents, result.latents)
        return response

    async def _decode(
        self, model: ServedModel, request: vae_pb2.DecodeRequest, context: Context
    ) -> vae_pb2.DecodeResponse:
        _check_enum(request.format, vae_pb2.ImageFormat, "format")
        latents = self._tensor(request.latents, "latents")
        result = await self.plane.decode(model, latents, request.labels)
        return fill_images(vae_pb2.DecodeResponse(), result, request.format)

    async def _sample(
        self, model: ServedModel, request: vae_pb2.SampleRequest, context: Context
    ) -> vae_pb2.SampleResponse:
        _check_enum(request.format, vae_pb2.ImageFormat, "format")
        result = await self.plane.sample(
            model,
            request.count,
            seed=request.seed if request.HasField("seed") else None,
            temperature=request.temperature,
            label=request.label if request.HasField("label") else None,
            prior=_prior(request.prior),
        )
        response = vae_pb2.SampleResponse(seed=result.seed)
        set_tensor(response.latents, result.latents)
        return fill_images(response, result, request.format)

    async def _sample_stream(
        self, model: ServedModel, request: vae_pb2.SampleStreamRequest, context: Context
    ) -> None:
        """Chunks of one seeded draw, each written to the call as soon as it is decoded (the write
        waits while the client is slow to read, so memory stays at a chunk or two); the call counts
        as one request from the first chunk to the last."""
        _check_enum(request.format, vae_pb2.ImageFormat, "format")
        stream = self.plane.sample_stream(
            model,
            request.count,
            chunk_size=request.chunk_size,
            seed=request.seed if request.HasField("seed") else None,
            temperature=request.temperature,
            label=request.label if request.HasField("label") else None,
            prior=_prior(request.prior),
        )
        offset = 0
        async for chunk in stream:
            response = vae_pb2.SampleResponse(seed=chunk.seed, offset=offset)
            set_tensor(response.latents, chunk.latents)
            await context.write(fill_images(response, chunk, request.format))
            offset += len(chunk.images)

    async def _interpolate(
        self, model: ServedModel, request: vae_pb2.InterpolateRequest, context: Context
    ) -> vae_pb2.InterpolateResponse:
        _check_enum(request.method, vae_pb2.InterpolationMethod, "method")
        _check_enum(request.format, vae_pb2.ImageFormat, "format")
        ends: dict[str, np.ndarray] = {}
        which = request.WhichOneof("endpoints")
        if which == "images":
            ends["start_image"] = self._tensor(request.images.start, "images.start", True)
            ends["end_image"] = self._tensor(request.images.end, "images.end", True)
        elif which == "latents":
            ends["start_latent"] = self._tensor(request.latents.start, "latents.start")
            ends["end_latent"] = self._tensor(request.latents.end, "latents.end")
        result = await self.plane.interpolate(
            model,
            request.steps,
            spherical=request.method == vae_pb2.INTERPOLATION_METHOD_SPHERICAL,
            label=request.label if request.HasField("label") else None,
            clamp=request.clamp,
            **ends,
        )
        response = vae_pb2.InterpolateResponse()
        set_tensor(response.latents, result.latents)
        return fill_images(response, result, request.format)

    async def _model_info(
        self, model: ServedModel, request: vae_pb2.GetModelInfoRequest, context: Context
    ) -> vae_pb2.ModelInfo:
        return model_info(model, self.store.versions(model.metadata.name))

    async def _list_models(
        self, model: None, request: vae_pb2.ListModelsRequest, context: Context
    ) -> vae_pb2.ListModelsResponse:
        models = [
            model_info(served, self.store.versions(served.metadata.name))
            for served in self.store.all_latest()
        ]
        return vae_pb2.ListModelsResponse(models=models)

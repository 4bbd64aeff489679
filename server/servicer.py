"""The gRPC servicer: converts protobuf to plain arrays, calls the data plane, maps errors to codes."""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import grpc
import numpy as np

from server.codecs import images_to_png, tensor_from_proto, tensor_to_proto
from server.errors import InvalidArgument, ServiceError, Unavailable
from server.executor import CallScope, ModelExecutor, current_call
from server.logging_setup import request_id
from server.metrics import Metrics
from server.model_store import ModelStore
from server.proto_gen.vae.v1 import vae_pb2, vae_pb2_grpc
from server.repository import PRIOR_MIXTURE, PRIOR_STANDARD_NORMAL
from server.service import DataPlane, Generated

log = logging.getLogger(__name__)
Response = TypeVar("Response")
ImageResponse = TypeVar(
    "ImageResponse", vae_pb2.DecodeResponse, vae_pb2.SampleResponse, vae_pb2.InterpolateResponse
)

_TENSOR_FORMATS = (
    vae_pb2.IMAGE_FORMAT_UNSPECIFIED,
    vae_pb2.IMAGE_FORMAT_TENSOR,
    vae_pb2.IMAGE_FORMAT_TENSOR_AND_PNG,
)
_PNG_FORMATS = (vae_pb2.IMAGE_FORMAT_PNG, vae_pb2.IMAGE_FORMAT_TENSOR_AND_PNG)
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


def model_ref(runtime: ModelExecutor) -> vae_pb2.ModelRef:
    return vae_pb2.ModelRef(name=runtime.metadata.name, version=runtime.metadata.version)


def model_info(runtime: ModelExecutor, versions: list[int]) -> vae_pb2.ModelInfo:
    meta = runtime.metadata
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
        execution_provider=runtime.provider,
        checkpoint_sha256=meta.checkpoint_sha256,
        exported_at=meta.exported_at,
        opset=meta.opset,
        priors=[_PRIOR_ENUM_NAMES[p] for p in meta.priors],
    )


class VaeServicer(vae_pb2_grpc.VaeServiceServicer):
    def __init__(self, store: ModelStore, plane: DataPlane, metrics: Metrics) -> None:
        self.store = store
        self.plane = plane
        self.metrics = metrics
        self.draining = threading.Event()
        self._max_elements = plane.limits.max_message_bytes // 4

    @contextmanager
    def _call(self, rpc: str, context: grpc.ServicerContext) -> Iterator[dict[str, str]]:
        """One RPC's scope: request id, deadline, cancellation, metrics, errors to status codes."""
        incoming = dict(context.invocation_metadata() or ())
        rid = str(incoming.get("x-request-id", "")) or uuid.uuid4().hex[:16]
        remaining = context.time_remaining()
        # grpc reports a huge number, not None, when the client set no deadline.
        has_deadline = remaining is not None and remaining < 10 * 365 * 24 * 3600
        scope = CallScope(time.monotonic() + remaining if has_deadline else None)
        context.add_callback(scope.cancel)  # runs when the RPC ends, cancelled or not
        context.set_trailing_metadata((("x-request-id", rid),))
        scope_token, rid_token = current_call.set(scope), request_id.set(rid)
        try:
            with self.metrics.track_request(rpc) as labels:
                try:
                    if self.draining.is_set():
                        raise Unavailable("server is shutting down; retry against another replica")
                    yield labels
                except ServiceError as exc:
                    labels["code"] = exc.code
                    log.info("%s refused (%s): %s", rpc, exc.code, exc.message)
                    context.abort(getattr(grpc.StatusCode, exc.code), exc.message)
                except Exception:
                    labels["code"] = "INTERNAL"
                    log.exception("%s failed", rpc)
                    context.abort(
                        grpc.StatusCode.INTERNAL, f"{rpc} failed inside the server; see its log"
                    )
        finally:
            current_call.reset(scope_token)
            request_id.reset(rid_token)

    def _handle(
        self,
        rpc: str,
        context: grpc.ServicerContext,
        ref: vae_pb2.ModelRef,
        work: Callable[[ModelExecutor], Response],
    ) -> Response:
        """Resolve the model, run `work`, and turn ServiceErrors into status codes with metrics."""
        with self._call(rpc, context) as labels:
            runtime = self.store.get(ref.name, ref.version)
            labels["model"] = runtime.metadata.name
            return work(runtime)
        raise AssertionError("unreachable: context.abort raises")

    def _tensor(self, tensor: vae_pb2.Tensor, what: str) -> np.ndarray:
        return tensor_from_proto(tensor, what, self._max_elements)

    def _fill_images(
        self, response: ImageResponse, generated: Generated, image_format: int
    ) -> ImageResponse:
        """Set `model`, and `images` and/or `png` as the format asks, on any of the image responses;
        the RPC has checked `image_format` before any work."""
        response.model.CopyFrom(model_ref(generated.runtime))
        if image_format in _TENSOR_FORMATS:
            response.images.CopyFrom(tensor_to_proto(generated.images))
        if image_format in _PNG_FORMATS:
            response.png.extend(images_to_png(generated.images))
        return response

    def Encode(self, request: vae_pb2.EncodeRequest, context: grpc.ServicerContext):
        def work(runtime: ModelExecutor) -> vae_pb2.EncodeResponse:
            images = self._tensor(request.images, "images")
            seed = request.seed if request.HasField("seed") else None
            result = self.plane.encode(runtime, images, list(request.labels), request.sample, seed)
            response = vae_pb2.EncodeResponse(
                mean=tensor_to_proto(result.mean), model=model_ref(runtime)
            )
            if result.log_variance is not None:
                response.log_variance.CopyFrom(tensor_to_proto(result.log_variance))
            if result.latents is not None:
                response.latents.CopyFrom(tensor_to_proto(result.latents))
            return response

        return self._handle("Encode", context, request.model, work)

    def Decode(self, request: vae_pb2.DecodeRequest, context: grpc.ServicerContext):
        def work(runtime: ModelExecutor) -> vae_pb2.DecodeResponse:
            _check_enum(request.format, vae_pb2.ImageFormat, "format")
            latents = self._tensor(request.latents, "latents")
            result = self.plane.decode(runtime, latents, list(request.labels))
            return self._fill_images(vae_pb2.DecodeResponse(), result, request.format)

        return self._handle("Decode", context, request.model, work)

    def Sample(self, request: vae_pb2.SampleRequest, context: grpc.ServicerContext):
        def work(runtime: ModelExecutor) -> vae_pb2.SampleResponse:
            _check_enum(request.format, vae_pb2.ImageFormat, "format")
            result = self.plane.sample(
                runtime,
                request.count,
                seed=request.seed if request.HasField("seed") else None,
                temperature=request.temperature,
                label=request.label if request.HasField("label") else None,
                prior=_prior(request.prior),
            )
            response = vae_pb2.SampleResponse(
                latents=tensor_to_proto(result.latents), seed=result.seed
            )
            return self._fill_images(response, result, request.format)

        return self._handle("Sample", context, request.model, work)

    def SampleStream(self, request: vae_pb2.SampleStreamRequest, context: grpc.ServicerContext):
        with self._call("SampleStream", context) as labels:
            runtime = self.store.get(request.model.name, request.model.version)
            labels["model"] = runtime.metadata.name
            _check_enum(request.format, vae_pb2.ImageFormat, "format")
            chunks = self.plane.sample_stream(
                runtime,
                request.count,
                chunk_size=request.chunk_size,
                seed=request.seed if request.HasField("seed") else None,
                temperature=request.temperature,
                label=request.label if request.HasField("label") else None,
                prior=_prior(request.prior),
            )
            offset = 0
            for chunk in chunks:
                if not context.is_active():
                    labels["code"] = "CANCELLED"
                    return
                response = vae_pb2.SampleResponse(
                    latents=tensor_to_proto(chunk.latents), seed=chunk.seed, offset=offset
                )
                yield self._fill_images(response, chunk, request.format)
                offset += len(chunk.images)

    def Interpolate(self, request: vae_pb2.InterpolateRequest, context: grpc.ServicerContext):
        def work(runtime: ModelExecutor) -> vae_pb2.InterpolateResponse:
            _check_enum(request.method, vae_pb2.InterpolationMethod, "method")
            _check_enum(request.format, vae_pb2.ImageFormat, "format")
            ends: dict[str, np.ndarray] = {}
            which = request.WhichOneof("endpoints")
            if which == "images":
                ends["start_image"] = self._tensor(request.images.start, "images.start")
                ends["end_image"] = self._tensor(request.images.end, "images.end")
            elif which == "latents":
                ends["start_latent"] = self._tensor(request.latents.start, "latents.start")
                ends["end_latent"] = self._tensor(request.latents.end, "latents.end")
            result = self.plane.interpolate(
                runtime,
                request.steps,
                spherical=request.method == vae_pb2.INTERPOLATION_METHOD_SPHERICAL,
                label=request.label if request.HasField("label") else None,
                **ends,
            )
            response = vae_pb2.InterpolateResponse(latents=tensor_to_proto(result.latents))
            return self._fill_images(response, result, request.format)

        return self._handle("Interpolate", context, request.model, work)

    def GetModelInfo(self, request: vae_pb2.GetModelInfoRequest, context: grpc.ServicerContext):
        def work(runtime: ModelExecutor) -> vae_pb2.ModelInfo:
            return model_info(runtime, self.store.versions(runtime.metadata.name))

        return self._handle("GetModelInfo", context, request.model, work)

    def ListModels(self, request: vae_pb2.ListModelsRequest, context: grpc.ServicerContext):
        with self._call("ListModels", context):
            models = [
                model_info(rt, self.store.versions(rt.metadata.name))
                for rt in self.store.all_latest()
            ]
            return vae_pb2.ListModelsResponse(models=models)

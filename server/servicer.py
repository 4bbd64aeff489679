"""The gRPC servicer (grpc.aio): converts protobuf to plain arrays, awaits the data plane, maps errors
to status codes, and counts every call."""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
import numpy as np

from server.codecs import images_to_png, set_tensor, set_uint8_tensor, tensor_from_proto
from server.errors import InvalidArgument, ServiceError, Unavailable
from server.executor import ModelExecutor
from server.logging_setup import request_id
from server.metrics import Metrics
from server.model_store import ModelStore
from server.proto_gen.vae.v1 import vae_pb2, vae_pb2_grpc
from server.service import DataPlane, Generated

log = logging.getLogger(__name__)
Response = TypeVar("Response")
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
_STATUS = {code.name: code for code in grpc.StatusCode}


@functools.cache
def _enum_values(enum: object) -> frozenset[int]:
    return frozenset(enum.values())  # type: ignore[attr-defined]


def _check_enum(value: int, enum: object, what: str) -> None:
    if value not in _enum_values(enum):
        names = ", ".join(enum.keys())  # type: ignore[attr-defined]
        raise InvalidArgument(f"{what} {value} is not a known value; allowed: {names}")


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
    )


def fill_images(response: ImageResponse, generated: Generated, image_format: int) -> ImageResponse:
    """Set `model`, and `images` and/or `png` as the format asks, on any of the image responses;
    the RPC has checked `image_format` before any work."""
    response.model.name = generated.runtime.metadata.name
    response.model.version = generated.runtime.metadata.version
    if image_format in _FLOAT_FORMATS:
        set_tensor(response.images, generated.images)
    elif image_format == vae_pb2.IMAGE_FORMAT_UINT8:
        set_uint8_tensor(response.images, generated.images)
    if image_format in _PNG_FORMATS:
        response.png.extend(images_to_png(generated.images))
    return response


class CallTracker:
    """The calls this process is handling, so a drain can wait until every accepted call is done."""

    def __init__(self) -> None:
        self.active = 0
        self.last_started = 0.0  # time.monotonic() of the latest call's start
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.active += 1
        self.last_started = time.monotonic()
        self._idle.clear()

    def leave(self) -> None:
        self.active -= 1
        if self.active == 0:
            self._idle.set()

    async def idle(self) -> None:
        await self._idle.wait()

    async def quiet(self, seconds: float, deadline: float) -> None:
        """Wait until no call has started for `seconds` and none is running, or until `deadline`
        (time.monotonic()). Calls the transport had already received when the drain began reach a
        handler within milliseconds and are answered (UNAVAILABLE once refusing) instead of being
        cancelled by the transport's shutdown."""
        while time.monotonic() < deadline:
            since = time.monotonic() - self.last_started
            if self.active == 0 and since >= seconds:
                return
            if self.active:
                try:
                    await asyncio.wait_for(self.idle(), deadline - time.monotonic())
                except TimeoutError:
                    return
            else:
                await asyncio.sleep(min(seconds - since, deadline - time.monotonic()))


class VaeServicer(vae_pb2_grpc.VaeServiceServicer):
    def __init__(self, store: ModelStore, plane: DataPlane, metrics: Metrics) -> None:
        self.store = store
        self.plane = plane
        self.metrics = metrics
        self.draining = False  # set by the drain: new calls get UNAVAILABLE
        self.calls = CallTracker()
        self._max_elements = plane.limits.max_message_bytes // 4
        # Request ids for calls that bring none: a per-process random prefix and a counter (unique
        # without the cost of a uuid4 per call).
        self._id_prefix = os.urandom(4).hex()
        self._ids = itertools.count(1)

    def _request_id(self, context: grpc.aio.ServicerContext) -> str:
        for key, value in context.invocation_metadata() or ():
            if key == "x-request-id" and value:
                return str(value)
        return f"{self._id_prefix}{next(self._ids):08x}"

    async def _run(
        self,
        rpc: str,
        context: grpc.aio.ServicerContext,
        ref: vae_pb2.ModelRef | None,
        work: Callable[[ModelExecutor | None], Awaitable[Response]],
    ) -> Response:
        """One RPC: request id, model lookup, metrics, and errors to status codes."""
        rid = self._request_id(context)
        request_id.set(rid)  # this task's context only: every log line of the call carries it
        context.set_trailing_metadata((("x-request-id", rid),))
        model, code = "", "OK"
        self.calls.enter()
        timer = self.metrics.start_request()
        try:
            if self.draining:
                raise Unavailable("server is shutting down; retry against another replica")
            runtime = None
            if ref is not None:
                runtime = self.store.get(ref.name, ref.version)
                model = runtime.metadata.name
            return await work(runtime)
        except ServiceError as exc:
            code = exc.code
            log.info("%s refused (%s): %s", rpc, exc.code, exc.message)
            await context.abort(_STATUS[exc.code], exc.message)
            raise  # not reached: abort raises
        except asyncio.CancelledError:
            remaining = context.time_remaining()
            code = "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
            raise
        except Exception as exc:
            if _is_abort(exc):
                raise
            code = "INTERNAL"
            log.exception("%s failed", rpc)
            await context.abort(
                grpc.StatusCode.INTERNAL, f"{rpc} failed inside the server; see its log ({rid})"
            )
            raise
        finally:
            self.calls.leave()
            self.metrics.finish_request(timer, rpc, model, code)

    def _tensor(self, tensor: vae_pb2.Tensor, what: str, allow_uint8: bool = False) -> np.ndarray:
        return tensor_from_proto(tensor, what, self._max_elements, allow_uint8)

    async def Encode(self, request: vae_pb2.EncodeRequest, context: grpc.aio.ServicerContext):
        async def work(runtime: ModelExecutor | None) -> vae_pb2.EncodeResponse:
            assert runtime is not None
            images = self._tensor(request.images, "images", allow_uint8=True)
            seed = request.seed if request.HasField("seed") else None
            result = await self.plane.encode(
                runtime, images, request.labels, request.sample, seed, clamp=request.clamp
            )
            response = vae_pb2.EncodeResponse(model=model_ref(runtime))
            set_tensor(response.mean, result.mean)
            if result.log_variance is not None:
                set_tensor(response.log_variance, result.log_variance)
            if result.latents is not None:
                set_tensor(response.latents, result.latents)
            return response

        return await self._run("Encode", context, request.model, work)

    async def Decode(self, request: vae_pb2.DecodeRequest, context: grpc.aio.ServicerContext):
        async def work(runtime: ModelExecutor | None) -> vae_pb2.DecodeResponse:
            assert runtime is not None
            _check_enum(request.format, vae_pb2.ImageFormat, "format")
            latents = self._tensor(request.latents, "latents")
            result = await self.plane.decode(runtime, latents, request.labels)
            return fill_images(vae_pb2.DecodeResponse(), result, request.format)

        return await self._run("Decode", context, request.model, work)

    async def Sample(self, request: vae_pb2.SampleRequest, context: grpc.aio.ServicerContext):
        async def work(runtime: ModelExecutor | None) -> vae_pb2.SampleResponse:
            assert runtime is not None
            _check_enum(request.format, vae_pb2.ImageFormat, "format")
            result = await self.plane.sample(
                runtime,
                request.count,
                seed=request.seed if request.HasField("seed") else None,
                temperature=request.temperature,
                label=request.label if request.HasField("label") else None,
            )
            response = vae_pb2.SampleResponse(seed=result.seed)
            set_tensor(response.latents, result.latents)
            return fill_images(response, result, request.format)

        return await self._run("Sample", context, request.model, work)

    async def SampleStream(
        self, request: vae_pb2.SampleStreamRequest, context: grpc.aio.ServicerContext
    ) -> None:
        """Chunks of one seeded draw, each written to the call as soon as it is decoded (the write
        waits while the client is slow to read, so memory stays at a chunk or two); the call counts
        as one request from the first chunk to the last."""

        async def work(runtime: ModelExecutor | None) -> None:
            assert runtime is not None
            _check_enum(request.format, vae_pb2.ImageFormat, "format")
            stream = self.plane.sample_stream(
                runtime,
                request.count,
                chunk_size=request.chunk_size,
                seed=request.seed if request.HasField("seed") else None,
                temperature=request.temperature,
                label=request.label if request.HasField("label") else None,
            )
            offset = 0
            async for chunk in stream:
                response = vae_pb2.SampleResponse(seed=chunk.seed, offset=offset)
                set_tensor(response.latents, chunk.latents)
                await context.write(fill_images(response, chunk, request.format))
                offset += len(chunk.images)

        await self._run("SampleStream", context, request.model, work)

    async def Interpolate(
        self, request: vae_pb2.InterpolateRequest, context: grpc.aio.ServicerContext
    ):
        async def work(runtime: ModelExecutor | None) -> vae_pb2.InterpolateResponse:
            assert runtime is not None
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
                runtime,
                request.steps,
                spherical=request.method == vae_pb2.INTERPOLATION_METHOD_SPHERICAL,
                label=request.label if request.HasField("label") else None,
                clamp=request.clamp,
                **ends,
            )
            response = vae_pb2.InterpolateResponse()
            set_tensor(response.latents, result.latents)
            return fill_images(response, result, request.format)

        return await self._run("Interpolate", context, request.model, work)

    async def GetModelInfo(
        self, request: vae_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ):
        async def work(runtime: ModelExecutor | None) -> vae_pb2.ModelInfo:
            assert runtime is not None
            return model_info(runtime, self.store.versions(runtime.metadata.name))

        return await self._run("GetModelInfo", context, request.model, work)

    async def ListModels(
        self, request: vae_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ):
        async def work(runtime: ModelExecutor | None) -> vae_pb2.ListModelsResponse:
            models = [
                model_info(rt, self.store.versions(rt.metadata.name))
                for rt in self.store.all_latest()
            ]
            return vae_pb2.ListModelsResponse(models=models)

        return await self._run("ListModels", context, None, work)


def _is_abort(exc: BaseException) -> bool:
    """grpc.aio's context.abort() raises an internal AbortError; let it through untouched."""
    return type(exc).__name__ == "AbortError"

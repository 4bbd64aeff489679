"""inference.GRPCInferenceService, the Open Inference Protocol (KServe v2) with Triton's ModelConfig and
RepositoryIndex: reads v2 tensors into arrays, awaits the data plane vae.v1 uses, writes the arrays
back. Calls run through the CallRunner vae.v1 uses, so limits, metrics, errors and the drain agree."""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Callable

import grpc
import numpy as np

from server.dataplane.plane import DataPlane
from server.errors import InvalidArgument, NotFound, ServiceError
from server.fronts.calls import CallRunner
from server.fronts.grpc.oip_tensors import add_output, read_inputs, requested_outputs
from server.fronts.v2_models import (
    DECODER,
    ENCODER,
    ROLES,
    SAMPLER,
    Signature,
    TensorSpec,
    signature,
    split_name,
    v2_names,
)
from server.inference.served_model import ServedModel
from server.inference.store import ModelStore
from server.proto_gen.inference import grpc_service_pb2 as pb
from server.proto_gen.inference import grpc_service_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVER_NAME = "vae-serve"
# Only what is served in full: RepositoryIndex is served, but Triton's "model_repository" extension
# also means load and unload, which answer UNIMPLEMENTED here.
EXTENSIONS = ("model_configuration",)
# The encoder and decoder are ONNX graphs in onnxruntime; the sampler draws the prior in numpy first.
PLATFORMS = {ENCODER: "onnxruntime_onnx", DECODER: "onnxruntime_onnx", SAMPLER: "vae_sampler"}
CONFIG_TYPES = {
    "FP32": pb.TYPE_FP32,
    "INT32": pb.TYPE_INT32,
    "INT64": pb.TYPE_INT64,
    "UINT64": pb.TYPE_UINT64,
}
Outputs = dict[str, np.ndarray]


def _version_number(version: str) -> int:
    """A v2 model_version as the store's number: empty is 0 (the highest loaded)."""
    if not version:
        return 0
    if version.isascii() and version.isdigit() and int(version) > 0:
        return int(version)
    raise InvalidArgument(
        f"model_version must be empty (the highest loaded) or a positive integer, got {version!r}"
    )


def _server_version() -> str:
    try:
        return importlib.metadata.version("vae-service")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=spec.shape
    )


def model_config(name: str, sig: Signature, max_batch: int) -> pb.ModelConfig:
    """Triton's config of one v2 model; with max_batch_size > 0 the dims leave out the batch."""
    skip = 1 if sig.batched else 0
    return pb.ModelConfig(
        name=name,
        platform=PLATFORMS[sig.role],
        max_batch_size=max_batch if sig.batched else 0,
        input=[
            pb.ModelInput(
                name=s.name,
                data_type=CONFIG_TYPES[s.datatype],
                dims=s.shape[skip:],
                optional=s.optional,
            )
            for s in sig.inputs
        ],
        output=[
            pb.ModelOutput(
                name=s.name,
                data_type=CONFIG_TYPES[s.datatype],
                dims=s.shape[skip:],
            )
            for s in sig.outputs
        ],
    )


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Each loaded model `<name>` as `<name>-encoder`, `<name>-decoder` and `<name>-sampler`.

    `server_ready()` and `model_ready(name)` are what grpc.health.v1 reports for the server and for
    one model, so the v2 readiness answers follow the drain and reloads like health does.
    """

    def __init__(
        self,
        store: ModelStore,
        plane: DataPlane,
        calls: CallRunner,
        server_ready: Callable[[], bool],
        model_ready: Callable[[str], bool],
    ) -> None:
        self.store = store
        self.plane = plane
        self.calls = calls
        self.server_ready = server_ready
        self.model_ready = model_ready
        self._max_elements = plane.limits.max_message_bytes // 4
        self._version = _server_version()

    # --- model lookup ---------------------------------------------------------------------------

    def _runtime(self, name: str, version: str) -> ServedModel:
        """The model version a v2 name and version select; NOT_FOUND lists the v2 names."""
        number = _version_number(version)
        parts = split_name(name)
        if parts is not None:
            try:
                return self.store.get(parts[0], number)
            except NotFound:
                versions = self.store.versions(parts[0])
                if versions:
                    raise NotFound(
                        f"model {name!r} has no version {number}; loaded versions are {versions}"
                    ) from None
        names = [v2 for model in self.store.names() for v2 in v2_names(model)]
        raise NotFound(f"unknown model {name!r}; models are {', '.join(names)}")

    def _resolve(self, name: str, version: str) -> functools.partial[ServedModel]:
        return functools.partial(self._runtime, name, version)

    @staticmethod
    def _signature(model: ServedModel | None, name: str) -> Signature:
        parts = split_name(name)
        assert model is not None and parts is not None  # _runtime resolved this name
        return signature(model.metadata, parts[1])

    # --- server and model metadata --------------------------------------------------------------

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext):
        async def work(_: ServedModel | None) -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=True)

        return await self.calls.run("ServerLive", context, None, work)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext):
        async def work(_: ServedModel | None) -> pb.ServerReadyResponse:
            return pb.ServerReadyResponse(ready=self.server_ready())

        return await self.calls.run("ServerReady", context, None, work)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext):
        async def work(_: ServedModel | None) -> pb.ModelReadyResponse:
            try:  # an unknown model or version is not ready; the question itself is fine
                model = self._runtime(request.name, request.version)
            except ServiceError:
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=self.model_ready(model.metadata.name))

        return await self.calls.run("ModelReady", context, None, work)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ):
        async def work(_: ServedModel | None) -> pb.ServerMetadataResponse:
            return pb.ServerMetadataResponse(
                name=SERVER_NAME, version=self._version, extensions=EXTENSIONS
            )

        return await self.calls.run("ServerMetadata", context, None, work)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ):
        async def work(model: ServedModel | None) -> pb.ModelMetadataResponse:
            sig = self._signature(model, request.name)
            assert model is not None
            return pb.ModelMetadataResponse(
                name=request.name,
                versions=[str(v) for v in self.store.versions(model.metadata.name)],
                platform=PLATFORMS[sig.role],
                inputs=[_tensor_metadata(spec) for spec in sig.inputs],
                outputs=[_tensor_metadata(spec) for spec in sig.outputs],
            )

        resolve = self._resolve(request.name, request.version)
        return await self.calls.run("ModelMetadata", context, resolve, work)

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext):
        async def work(model: ServedModel | None) -> pb.ModelConfigResponse:
            sig = self._signature(model, request.name)
            config = model_config(request.name, sig, self.plane.limits.max_batch)
            return pb.ModelConfigResponse(config=config)

        resolve = self._resolve(request.name, request.version)
        return await self.calls.run("ModelConfig", context, resolve, work)

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ):
        """Every loaded version of every v2 model (vae-serve has one repository, whatever the name)."""

        async def work(_: ServedModel | None) -> pb.RepositoryIndexResponse:
            response = pb.RepositoryIndexResponse()
            for model in self.store.names():
                ready = self.model_ready(model)
                if request.ready and not ready:
                    continue
                for version in self.store.versions(model):
                    for role in ROLES:
                        entry = response.models.add()
                        entry.name, entry.version = f"{model}-{role}", str(version)
                        entry.state = "READY" if ready else "UNAVAILABLE"
            return response

        return await self.calls.run("RepositoryIndex", context, None, work)

    # --- inference ------------------------------------------------------------------------------

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext):
        async def work(model: ServedModel | None) -> pb.ModelInferResponse:
            sig = self._signature(model, request.model_name)
            assert model is not None
            inputs = read_inputs(request, sig, self._max_elements)
            names = requested_outputs(request, sig)
            response = pb.ModelInferResponse(
                model_name=request.model_name,
                model_version=str(model.metadata.version),
                id=request.id,
            )
            if sig.role == DECODER:
                outputs = await self._decode(model, inputs)
            elif sig.role == ENCODER:
                outputs = await self._encode(model, inputs, request)
            else:
                outputs = await self._sample(model, inputs, response)
            for name in names:
                add_output(response, name, outputs[name])
            return response

        resolve = self._resolve(request.model_name, request.model_version)
        return await self.calls.run("ModelInfer", context, resolve, work)

    async def _decode(self, model: ServedModel, inputs: Outputs) -> Outputs:
        result = await self.plane.decode(model, inputs["latent"], inputs.get("label", ()))
        return {"image": result.images}

    async def _encode(
        self, model: ServedModel, inputs: Outputs, request: pb.ModelInferRequest
    ) -> Outputs:
        clamp = False
        if "clamp" in request.parameters:  # the Encode flag: clip images into [0, 1]
            parameter = request.parameters["clamp"]
            if parameter.WhichOneof("parameter_choice") != "bool_param":
                raise InvalidArgument("parameter clamp must be a bool (bool_param)")
            clamp = parameter.bool_param
        result = await self.plane.encode(
            model, inputs["image"], inputs.get("label", ()), clamp=clamp
        )
        outputs = {"mean": result.mean}
        if result.log_variance is not None:
            outputs["log_variance"] = result.log_variance
        return outputs

    async def _sample(
        self, model: ServedModel, inputs: Outputs, response: pb.ModelInferResponse
    ) -> Outputs:
        """vae.v1 Sample through the same DataPlane.sample: the same seed gives the same images."""
        seed, temperature, label = (
            inputs.get("seed"),
            inputs.get("temperature"),
            inputs.get("label"),
        )
        result = await self.plane.sample(
            model,
            int(inputs["count"][0]),
            seed=None if seed is None else int(seed[0]),
            temperature=0.0 if temperature is None else float(temperature[0]),
            label=None if label is None else int(label[0]),
        )
        response.parameters["seed"].int64_param = result.seed  # the seed used, to repeat the draw
        return {"image": result.images, "latent": result.latents}

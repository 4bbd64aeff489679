"""inference.GRPCInferenceService, the Open Inference Protocol (KServe v2) with Triton's ModelConfig and
RepositoryIndex: reads v2 tensors into arrays, awaits the data plane vae.v1 uses, writes the arrays
back. Calls run through the CallRunner vae.v1 uses, so limits, metrics, errors and the drain agree."""

from __future__ import annotations

import functools
from collections.abc import Callable

import grpc

from server.dataplane.plane import DataPlane
from server.errors import ServiceError
from server.fronts.calls import CallRunner
from server.fronts.grpc.oip_tensors import add_output, read_inputs, requested_outputs
from server.fronts.v2_infer import infer
from server.fronts.v2_models import (
    EXTENSIONS,
    PLATFORMS,
    ROLES,
    SERVER_NAME,
    Signature,
    TensorSpec,
    resolve,
    role_signature,
    server_version,
)
from server.inference.served_model import ServedModel
from server.inference.store import ModelStore
from server.proto_gen.inference import grpc_service_pb2 as pb
from server.proto_gen.inference import grpc_service_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
CONFIG_TYPES = {
    "FP32": pb.TYPE_FP32,
    "INT32": pb.TYPE_INT32,
    "INT64": pb.TYPE_INT64,
    "UINT64": pb.TYPE_UINT64,
}
# Parameter types in this front's words, for the refusals of server/fronts/v2_infer.py.
_KINDS = {"bool": "bool (bool_param)", "string": "string (string_param)"}


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
        self._version = server_version()

    # --- model lookup ---------------------------------------------------------------------------

    def _runtime(self, name: str, version: str) -> ServedModel:
        return resolve(self.store, name, version)

    def _resolve(self, name: str, version: str) -> functools.partial[ServedModel]:
        return functools.partial(self._runtime, name, version)

    @staticmethod
    def _signature(model: ServedModel | None, name: str) -> Signature:
        assert model is not None  # resolve() found this name
        return role_signature(model, name)

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
            parameters = {key: _parameter(value) for key, value in request.parameters.items()}
            outputs, answer = await infer(
                self.plane, model, request.model_name, sig, inputs, parameters, _KINDS
            )
            if "seed" in answer:  # the seed the sampler used, to repeat the draw
                response.parameters["seed"].int64_param = answer["seed"]
            for name in names:
                add_output(response, name, outputs[name])
            return response

        resolve = self._resolve(request.model_name, request.model_version)
        return await self.calls.run("ModelInfer", context, resolve, work)


def _parameter(parameter: pb.InferParameter) -> object:
    """An InferParameter's value, whichever field holds it."""
    which = parameter.WhichOneof("parameter_choice")
    return None if which is None else getattr(parameter, which)

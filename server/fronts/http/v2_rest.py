"""The Open Inference Protocol over REST (KServe v2, with Triton's model configuration and repository
index): the same v2 models, lookups, checks and data plane calls as the gRPC v2 front."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from server.dataplane.plane import DataPlane
from server.errors import InvalidArgument, ServiceError
from server.fronts.http.exchange import JSON, OCTET_STREAM, HttpRequest, HttpResponse
from server.fronts.http.exchange import json_response as reply
from server.fronts.http.routes import Body, Route
from server.fronts.http.v2_codec import (
    HEADER_LENGTH,
    infer_response,
    read_inputs,
    requested,
    split_body,
)
from server.fronts.v2_infer import infer
from server.fronts.v2_models import (
    EXTENSIONS,
    PLATFORMS,
    ROLES,
    SERVER_NAME,
    TensorSpec,
    resolve,
    role_signature,
    server_version,
)
from server.inference.served_model import ServedModel
from server.inference.store import ModelStore

_OBJECT = {"type": "object"}
_JSON_BODY = Body({JSON: _OBJECT})
_NOT_READY_STATUS = 503  # load balancers and kubelet read any non-2xx as "not ready"


def _tensor(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


class V2Rest:
    """The /v2 routes. `server_ready()` and `model_ready(name)` are what grpc.health.v1 reports."""

    def __init__(
        self,
        store: ModelStore,
        plane: DataPlane,
        server_ready: Callable[[], bool],
        model_ready: Callable[[str], bool],
    ) -> None:
        self.store = store
        self.plane = plane
        self.server_ready = server_ready
        self.model_ready = model_ready
        self._max_elements = plane.limits.max_message_bytes // 4
        self._version = server_version()

    def _model(self, request: HttpRequest) -> ServedModel:
        model = resolve(self.store, request.params["model"], request.params.get("version", ""))
        request.model = model.metadata.name
        return model

    # --- health and metadata --------------------------------------------------------------------

    async def live(self, request: HttpRequest) -> HttpResponse:
        return reply({"live": True})

    async def ready(self, request: HttpRequest) -> HttpResponse:
        ready = self.server_ready()
        return reply({"ready": ready}, 200 if ready else _NOT_READY_STATUS)

    async def server_metadata(self, request: HttpRequest) -> HttpResponse:
        return reply({"name": SERVER_NAME, "version": self._version, "extensions": EXTENSIONS})

    async def model_metadata(self, request: HttpRequest) -> HttpResponse:
        model = self._model(request)
        name = request.params["model"]
        sig = role_signature(model, name)
        return reply(
            {
                "name": name,
                "versions": [str(v) for v in self.store.versions(model.metadata.name)],
                "platform": PLATFORMS[sig.role],
                "inputs": [_tensor(spec) for spec in sig.inputs],
                "outputs": [_tensor(spec) for spec in sig.outputs],
            }
        )

    async def model_readiness(self, request: HttpRequest) -> HttpResponse:
        try:  # an unknown model or version is not ready; the question itself is fine
            model = self._model(request)
        except ServiceError:
            ready = False
        else:
            ready = self.model_ready(model.metadata.name)
        return reply(
            {"name": request.params["model"], "ready": ready}, 200 if ready else _NOT_READY_STATUS
        )

    async def model_config(self, request: HttpRequest) -> HttpResponse:
        """Triton's model configuration (perf_analyzer reads it); with max_batch_size > 0 the dims
        leave out the batch dimension."""
        model = self._model(request)
        name = request.params["model"]
        sig = role_signature(model, name)
        skip = 1 if sig.batched else 0

        def tensors(specs: tuple[TensorSpec, ...], inputs: bool) -> list[dict[str, Any]]:
            return [
                {
                    "name": s.name,
                    "data_type": f"TYPE_{s.datatype}",
                    "dims": list(s.shape[skip:]),
                    **({"optional": s.optional} if inputs else {}),
                }
                for s in specs
            ]

        return reply(
            {
                "name": name,
                "platform": PLATFORMS[sig.role],
                "max_batch_size": self.plane.limits.max_batch if sig.batched else 0,
                "input": tensors(sig.inputs, True),
                "output": tensors(sig.outputs, False),
            }
        )

    async def repository_index(self, request: HttpRequest) -> HttpResponse:
        """Every loaded version of every v2 model; the body may be empty or {"ready": true}."""
        body = await request.read_body(self.plane.limits.max_message_bytes)
        only_ready = False
        if body.strip():
            only_ready = split_body(body, None).header.get("ready", False)
            if not isinstance(only_ready, bool):
                raise InvalidArgument("'ready' must be true or false")
        index = []
        for model in self.store.names():
            ready = self.model_ready(model)
            if only_ready and not ready:
                continue
            for version in self.store.versions(model):
                for role in ROLES:
                    index.append(
                        {
                            "name": f"{model}-{role}",
                            "version": str(version),
                            "state": "READY" if ready else "UNAVAILABLE",
                        }
                    )
        return reply(index)

    # --- inference ------------------------------------------------------------------------------

    async def infer(self, request: HttpRequest) -> HttpResponse:
        model = self._model(request)
        name = request.params["model"]
        sig = role_signature(model, name)
        body = await request.read_body(self.plane.limits.max_message_bytes)
        parsed = split_body(body, request.headers.get(HEADER_LENGTH))
        inputs = read_inputs(name, sig, parsed, self._max_elements)
        wanted = requested(name, sig, parsed.header)
        parameters = parsed.header.get("parameters", {})
        if not isinstance(parameters, dict):
            raise InvalidArgument(f"{name}: 'parameters' must be a JSON object")
        outputs, answer = await infer(self.plane, model, name, sig, inputs, parameters)
        header: dict[str, Any] = {"model_name": name, "model_version": str(model.metadata.version)}
        if "id" in parsed.header:
            header["id"] = parsed.header["id"]
        if answer:
            header["parameters"] = answer
        return infer_response(header, outputs, wanted)

    def routes(self) -> list[Route]:
        model = "/v2/models/{model}"
        versioned = "/v2/models/{model}/versions/{version}"
        infer_body = Body(
            {JSON: _OBJECT, OCTET_STREAM: {"type": "string", "format": "binary"}},
            "JSON tensors, or a JSON header of Inference-Header-Content-Length bytes followed by "
            "binary tensors (Triton's binary tensor extension)",
        )
        found = {200: _JSON_BODY}
        routes = [
            Route("GET", "/v2/health/live", "ServerLive", self.live, "Is the server live", health=True, responses=found),
            Route("GET", "/v2/health/ready", "ServerReady", self.ready, "Is the server ready (503 when not)", health=True, responses=found),
            Route("GET", "/v2", "ServerMetadata", self.server_metadata, "Server name, version and extensions", responses=found),
            Route("POST", "/v2/repository/index", "RepositoryIndex", self.repository_index, "Every loaded v2 model version and its state", request=_JSON_BODY, responses=found),
        ]  # fmt: skip
        for base, suffix in ((model, ""), (versioned, " (one version)")):
            routes += [
                Route("GET", base, "ModelMetadata", self.model_metadata, "A v2 model's tensors" + suffix, responses=found),
                Route("GET", base + "/ready", "ModelReady", self.model_readiness, "Is a v2 model ready (503 when not)" + suffix, responses=found),
                Route("GET", base + "/config", "ModelConfig", self.model_config, "Triton's model configuration" + suffix, responses=found),
                Route("POST", base + "/infer", "ModelInfer", self.infer, "Run a v2 model" + suffix, request=infer_body, responses={200: infer_body}),
            ]  # fmt: skip
        return routes

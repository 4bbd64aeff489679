"""One serving process: models, the grpc.aio server (vae.v1, the Open Inference Protocol, health,
reflection), the HTTP front (v2 REST, image routes, the explorer) on the same loop, metrics, drain.

The process runs one asyncio event loop in a thread of its own ("vae-loop"); the caller's thread
starts and stops it (`start`, `stop`, `wait`), so tests drive a real server in-process and `vae-serve`
handles signals in its main thread. With `--processes N`, server/process/supervisor.py starts N of these, each
in its own process, sharing the port.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import signal
import threading
import time
from types import FrameType

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from server.dataplane.plane import DataPlane
from server.fronts.calls import CallRunner
from server.fronts.grpc import oip, reflection_v1
from server.fronts.grpc.health import HealthServicer
from server.fronts.grpc.registration import add_servicer
from server.fronts.grpc.vae_v1 import VaeServicer
from server.fronts.http.app import HttpFront, UvicornServer, build_routes
from server.fronts.readiness import (
    API_SERVICE,
    DRAINING,
    NOT_SERVING,
    SERVICE_UNKNOWN,
    SERVING,
    UP,
    ProcessStates,
    Readiness,
    model_service,
)
from server.fronts.tls import TlsConfigError, server_credentials, ssl_context
from server.inference.reload import RepositoryWatcher
from server.inference.served_model import ServedModel
from server.inference.sessions import ModelSessions, RuntimeOptions
from server.inference.store import ModelStore, ReloadResult
from server.metrics import Metrics
from server.process.settings import Settings
from server.proto_gen.inference import grpc_service_pb2_grpc
from server.proto_gen.vae.v1 import vae_pb2, vae_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = vae_pb2.DESCRIPTOR.services_by_name["VaeService"].full_name  # "vae.v1.VaeService"
assert SERVICE_NAME == API_SERVICE, SERVICE_NAME
HEALTH_SERVICE = "grpc.health.v1.Health"
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
# A drain stops the transport once no call has started for this long (calls already in the
# transport's queue reach a handler within milliseconds).
DRAIN_QUIET_SECONDS = 0.25


class StartupError(RuntimeError):
    """The server cannot start as configured; the message says why and how to fix it."""


def grpc_options(settings: Settings, shared_port: bool) -> list[tuple[str, int]]:
    limit = settings.limits.max_message_bytes
    options = [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        # Several processes bind one port only when asked to; otherwise a port in use is an error
        # (gRPC on Linux sets SO_REUSEPORT by default, which would let two servers share it silently).
        ("grpc.so_reuseport", 1 if shared_port else 0),
    ]
    if settings.max_connection_age_seconds > 0:
        # gRPC core sends GOAWAY once a connection is this old (with +-10% jitter, so clients do not
        # reconnect in step), then closes it when its calls finish or the grace runs out.
        options += [
            ("grpc.max_connection_age_ms", round(settings.max_connection_age_seconds * 1000)),
            (
                "grpc.max_connection_age_grace_ms",
                round(settings.max_connection_age_grace_seconds * 1000),
            ),
        ]
    return options


class VaeServer:
    """One serving process: load and warm every model, then serve until stopped.

    `states` is this process's slot among the processes of one `vae-serve --processes N`; None for a
    server of one process.
    """

    def __init__(self, settings: Settings, states: ProcessStates | None = None) -> None:
        self.settings = settings
        self.states = states
        self.metrics = Metrics()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._offload: concurrent.futures.ThreadPoolExecutor | None = None
        self.store = ModelStore(
            settings.repository,
            RuntimeOptions(
                providers=settings.providers,
                intra_op_threads=settings.resolved_intra_op_threads(),
                inter_op_threads=settings.inter_op_threads,
                cuda_device_id=settings.cuda_device_id,
                cuda_arena_extend_strategy=settings.cuda_arena_extend_strategy,
                cudnn_conv_algo_search=settings.cudnn_conv_algo_search,
                cuda_mem_limit_bytes=settings.cuda_mem_limit_bytes,
                tensorrt=settings.tensorrt,
                tensorrt_cache_dir=settings.tensorrt_cache_dir,
                tensorrt_fp16=settings.tensorrt_fp16,
            ),
            served_model_factory=self._served_model,
            close_served_model=self._close_served_model,
        )
        self.plane = DataPlane(self.store, settings.limits, self.metrics)
        # One CallRunner for every servicer: the drain refuses and waits for the calls of all of them.
        self.calls = CallRunner(self.metrics, self.store)
        self.servicer = VaeServicer(self.store, self.plane, self.metrics, self.calls)
        self.readiness = Readiness(states)
        self.health = HealthServicer(self.readiness)
        self.inference = oip.InferenceServicer(
            self.store,
            self.plane,
            self.calls,
            server_ready=lambda: self.readiness.serving(SERVICE_NAME),
            model_ready=lambda name: self.readiness.serving(model_service(name)),
        )
        self._grpc: grpc.aio.Server | None = None
        self._health_grpc: grpc.aio.Server | None = None
        self._http: UvicornServer | None = None
        self.http_port = 0
        self._metrics_http: tuple[object, threading.Thread] | None = None
        self.port = 0
        self.metrics_port = 0
        self.health_port = 0
        self._thread: threading.Thread | None = None
        self._stopping = threading.Lock()
        self._stop_requested = False
        self._stopped = threading.Event()
        self._done: asyncio.Event | None = None
        self.watcher = RepositoryWatcher(
            self.store, settings.reload_interval_seconds, self._after_reload
        )
        self.reloaded = threading.Condition()  # notified after every scan (tests wait on it)
        self.reload_count = 0
        self._health_models: set[str] = set()

    # --- models ---------------------------------------------------------------------------------

    def _offload_for(self, sessions: ModelSessions) -> concurrent.futures.Executor | None:
        """Where this model's calls run: on the loop (CPU: cheaper than a thread hand-off for calls
        of a fraction of a millisecond) or in a thread (GPU: the loop serves while the device works)."""
        mode = self.settings.inference_executor
        if mode == "loop" or (mode == "auto" and sessions.provider not in GPU_PROVIDERS):
            return None
        if self._offload is None:
            self._offload = concurrent.futures.ThreadPoolExecutor(
                max_workers=4, thread_name_prefix="vae-infer"
            )
        return self._offload

    def _served_model(self, sessions: ModelSessions) -> ServedModel:
        config = self.settings.batching_for(sessions.metadata.name)
        return ServedModel(sessions, config, self.metrics, self._offload_for(sessions))

    def _close_served_model(self, model: ServedModel) -> None:
        """An unloaded version's batchers close on the loop (reload runs in a thread)."""
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(model.close)
        else:
            model.close()

    def _require_gpu(self, models: list[ServedModel]) -> None:
        on_cpu = [
            f"{served.metadata.name}/{served.metadata.version}"
            for served in models
            if served.provider not in GPU_PROVIDERS
        ]
        if on_cpu:
            raise StartupError(
                f"--require-gpu is set but {', '.join(on_cpu)} run on "
                f"{models[0].provider}: CUDA did not load (is onnxruntime-gpu installed, a GPU "
                "visible and the CUDA/cuDNN libraries on the library path?); drop --require-gpu "
                "to serve on CPU"
            )

    def _load_models(self) -> None:
        try:
            self.store.load_all(warm_up=True)
        except ValueError as exc:
            raise StartupError(str(exc)) from exc
        for failure in self.store.failures:
            self.metrics.load_failures.labels(failure.name).inc()
        models = self.store.all()
        if not models:
            raise StartupError(
                f"no loadable model in repository {self.settings.repository}; export one with "
                "`vae-export <checkpoint> --repository <dir>` and check the log for skipped versions"
            )
        if self.settings.require_gpu:
            self._require_gpu(models)

    async def _publish_models(self) -> None:
        """Loaded-model gauge and per-model health from what the store serves now."""
        models = self.store.all()
        self.metrics.set_loaded_models(
            [(served.metadata.name, served.metadata.version, served.provider) for served in models]
        )
        if self.calls.draining or self._grpc is None:
            return
        serving = set(self.store.names())
        await self.readiness.set_many([model_service(n) for n in serving], SERVING)
        gone = [model_service(n) for n in self._health_models - serving]
        await self.readiness.set_many(gone, SERVICE_UNKNOWN)
        self._health_models = serving

    def _after_reload(self, result: ReloadResult | None) -> None:
        """Runs on the loop after every scan."""
        if result is None:
            self.metrics.reloads.labels("failed").inc()
        else:
            for failure in result.failed:
                self.metrics.load_failures.labels(failure.name).inc()
            self.metrics.reloads.labels("changed" if result.changed else "unchanged").inc()
            if result.changed:
                log.info("reloaded: added %s, removed %s", result.added, result.removed)
                asyncio.get_running_loop().create_task(self._publish_models())
        with self.reloaded:
            self.reload_count += 1
            self.reloaded.notify_all()

    def reload_now(self) -> None:
        """Ask the watcher for a rescan (what SIGHUP does); safe from any thread."""
        self.watcher.trigger()

    # --- start ----------------------------------------------------------------------------------

    def start(self) -> int:
        """Load models, bind ports, start serving in the loop thread; returns the bound gRPC port."""
        self._load_models()
        self._loop = asyncio.new_event_loop()
        started: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run_loop, args=(started,), name="vae-loop", daemon=True
        )
        self._thread.start()
        try:
            self.port = started.result()
        except BaseException:
            self._thread.join()
            self._close_models()
            raise
        if self.settings.metrics_port and self.states is None:
            self._start_metrics(self.settings.metrics_port)
        if self.states is not None:
            self.states.set(UP)
        credentials = "plaintext" if not self.settings.tls_cert else "TLS"
        log.info(
            "serving %s on %s:%d, HTTP on %s (%s, batching %s, metrics on %s, health port %s, "
            "pid %d)",
            ", ".join(self.store.names()),
            self.settings.host,
            self.port,
            self.http_port or "off",
            credentials,
            "on" if self.settings.batching.enabled else "off",
            self.metrics_port or ("the supervisor" if self.states is not None else "off"),
            self.health_port or "off",
            os.getpid(),
        )
        return self.port

    def _run_loop(self, started: concurrent.futures.Future[int]) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve(started))
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()
            self._stopped.set()

    async def _serve(self, started: concurrent.futures.Future[int]) -> None:
        self._done = asyncio.Event()
        try:
            port = await self._start_grpc()
        except BaseException as exc:
            started.set_exception(exc)
            return
        started.set_result(port)
        await self._done.wait()

    def _bind(self, server: grpc.aio.Server, address: str, secure: bool) -> int:
        s = self.settings
        try:
            credentials = server_credentials(s.tls_cert, s.tls_key, s.tls_client_ca)
        except TlsConfigError as exc:
            raise StartupError(str(exc)) from exc
        try:
            if credentials is None or not secure:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise StartupError(f"cannot bind gRPC to {address}: {exc}") from exc
        if port == 0:
            raise StartupError(f"cannot bind gRPC to {address}; is the port in use?")
        return port

    async def _start_grpc(self) -> int:
        shared = self.states is not None
        self._grpc = grpc.aio.server(
            options=grpc_options(self.settings, shared),
            maximum_concurrent_rpcs=self.settings.max_concurrent_rpcs,
        )
        # Requests that do not parse: INVALID_ARGUMENT naming the method (registration.py).
        add_servicer(
            vae_pb2_grpc.add_VaeServiceServicer_to_server,
            self.servicer,
            self._grpc,
            checks_undecodable=True,
        )
        add_servicer(
            grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server,
            self.inference,
            self._grpc,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        names = (
            SERVICE_NAME,
            oip.SERVICE_NAME,
            HEALTH_SERVICE,
            reflection.SERVICE_NAME,
            reflection_v1.SERVICE_NAME,
        )
        pool = reflection_v1.merged_pool(names)  # the inference.* stubs keep a pool of their own
        reflection.enable_server_reflection(names, self._grpc, pool=pool)
        reflection_v1.enable_server_reflection(names, self._grpc, pool=pool)
        port = self._bind(self._grpc, f"{self.settings.host}:{self.settings.port}", secure=True)
        await self._start_http(shared)
        health_port = self.settings.resolved_health_port()
        if health_port:
            # Plaintext, health only: kubelet's gRPC probes and the container HEALTHCHECK speak no TLS.
            self._health_grpc = grpc.aio.server(options=grpc_options(self.settings, shared))
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_grpc)
            address = f"{self.settings.host}:{health_port}"
            self.health_port = self._bind(self._health_grpc, address, secure=False)
            await self._health_grpc.start()
        await self._grpc.start()
        await self.readiness.set_many(("", SERVICE_NAME), SERVING)
        await self._publish_models()
        self.watcher.start()
        return port

    async def _start_http(self, shared: bool) -> None:
        """The HTTP front on this loop, sharing the CallRunner (drain, metrics) with gRPC."""
        s = self.settings
        if not s.http_port:
            return
        routes = build_routes(
            self.store,
            self.plane,
            server_ready=lambda: self.readiness.serving(SERVICE_NAME),
            model_ready=lambda name: self.readiness.serving(model_service(name)),
        )
        try:
            tls = ssl_context(s.tls_cert, s.tls_key, s.tls_client_ca)
        except TlsConfigError as exc:
            raise StartupError(str(exc)) from exc
        self._http = UvicornServer(HttpFront(routes, self.calls))
        try:
            self.http_port = await self._http.start(s.host, s.http_port, tls, shared)
        except OSError as exc:
            self._http = None
            raise StartupError(
                f"cannot bind HTTP to {s.host}:{s.http_port}: {exc.strerror or exc}; is the port "
                "in use? Choose another with --http-port, or 0 to turn HTTP off"
            ) from exc

    def _start_metrics(self, port: int) -> None:
        try:
            httpd, thread = start_http_server(
                port, addr=self.settings.metrics_host, registry=self.metrics.registry
            )
        except OSError as exc:
            self.stop(grace=0)
            raise StartupError(
                f"cannot serve metrics on {self.settings.metrics_host}:{port}: {exc}"
            ) from exc
        self._metrics_http = (httpd, thread)
        self.metrics_port = httpd.server_port

    # --- drain and stop -------------------------------------------------------------------------

    def stop(self, grace: float | None = None) -> None:
        """Drain: report NOT_SERVING, keep serving for --drain-delay-seconds, then refuse new calls
        with UNAVAILABLE and let every accepted call finish within `grace` seconds; then stop."""
        with self._stopping:
            if self._stop_requested:
                first = False
            else:
                self._stop_requested = first = True
        if first:
            grace = self.settings.grace_seconds if grace is None else grace
            loop = self._loop
            if loop is not None and not loop.is_closed() and self._thread is not None:
                try:
                    drain = asyncio.run_coroutine_threadsafe(self._drain(grace), loop)
                except RuntimeError:  # the loop ended on its own (a failed start)
                    drain = None
                if drain is not None:
                    drain.result()
                self._thread.join()
            self._close_models()
            self._stop_metrics()
            self._stopped.set()
            log.info("stopped")
        self._stopped.wait()

    async def _drain(self, grace: float) -> None:
        if self.states is not None:
            self.states.set(DRAINING)  # every process now reports NOT_SERVING for this one
        await self.readiness.set_many(
            ("", SERVICE_NAME, *(model_service(n) for n in self._health_models)), NOT_SERVING
        )
        delay = self.settings.drain_delay_seconds
        if delay > 0:
            # Keep answering while load balancers notice NOT_SERVING and stop sending calls.
            log.info("draining: NOT_SERVING, refusing new calls in %.1fs", delay)
            await asyncio.sleep(delay)
        self.calls.draining = True  # new calls: UNAVAILABLE, which clients may retry elsewhere
        calls = self.calls.tracker
        log.info(
            "draining: %d call(s) in flight, waiting up to %.1fs for them", calls.active, grace
        )
        deadline = time.monotonic() + grace
        # Stop the transport only once every accepted call has ended and no more are arriving: its
        # shutdown cancels calls it has received but not yet handed to a handler.
        await calls.quiet(DRAIN_QUIET_SECONDS, deadline)
        if calls.active:
            log.warning(
                "draining: %d call(s) still running after %.1fs; cancelling them",
                calls.active,
                grace,
            )
        await self.watcher.stop()
        remaining = max(0.0, deadline - time.monotonic())
        if self._http is not None:
            await self._http.stop(remaining)
        for server in (self._grpc, self._health_grpc):
            if server is not None:
                await server.stop(remaining)
        for model in self.store.all():
            model.close()
        if self._done is not None:
            self._done.set()

    def _close_models(self) -> None:
        if self._offload is not None:
            self._offload.shutdown(wait=True)

    def _stop_metrics(self) -> None:
        if self._metrics_http is not None:
            httpd, _ = self._metrics_http
            httpd.shutdown()  # type: ignore[attr-defined]
            httpd.server_close()  # type: ignore[attr-defined]
            self._metrics_http = None

    def wait(self) -> None:
        self._stopped.wait()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT drain and stop the server (from a thread); SIGHUP rescans the repository."""

        def handle(signum: int, frame: FrameType | None) -> None:
            log.info("received %s", signal.Signals(signum).name)
            threading.Thread(target=self.stop, name="vae-drain", daemon=True).start()

        def reload(signum: int, frame: FrameType | None) -> None:
            log.info("received SIGHUP: rescanning %s", self.settings.repository)
            self.reload_now()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
        signal.signal(signal.SIGHUP, reload)

"""Builds and runs the gRPC server: models, servicer, health, reflection, metrics endpoint, shutdown."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from server.executor import ModelExecutor
from server.metrics import Metrics
from server.model_store import ModelStore, ReloadResult
from server.proto_gen.vae.v1 import vae_pb2, vae_pb2_grpc
from server.reload import RepositoryWatcher
from server.runtime import ModelRuntime, RuntimeOptions
from server.service import DataPlane
from server.servicer import VaeServicer
from server.settings import Settings
from server.tls import TlsConfigError, server_credentials

log = logging.getLogger(__name__)

SERVICE_NAME = vae_pb2.DESCRIPTOR.services_by_name["VaeService"].full_name  # "vae.v1.VaeService"


class StartupError(RuntimeError):
    """The server cannot start as configured; the message says why and how to fix it."""


def model_health_name(model: str) -> str:
    """The grpc.health.v1 service name that reports one model's readiness."""
    return f"{SERVICE_NAME}/{model}"


class VaeServer:
    """One serving process: load and warm every model, then serve until stopped."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.store = ModelStore(
            settings.repository,
            RuntimeOptions(
                providers=settings.providers,
                intra_op_threads=settings.intra_op_threads,
                inter_op_threads=settings.inter_op_threads,
                cuda_device_id=settings.cuda_device_id,
                cuda_arena_extend_strategy=settings.cuda_arena_extend_strategy,
                cudnn_conv_algo_search=settings.cudnn_conv_algo_search,
                cuda_mem_limit_bytes=settings.cuda_mem_limit_bytes,
                tensorrt=settings.tensorrt,
                tensorrt_cache_dir=settings.tensorrt_cache_dir,
                tensorrt_fp16=settings.tensorrt_fp16,
            ),
            executor_factory=self._executor,
        )
        self.plane = DataPlane(self.store, settings.limits, self.metrics)
        self.servicer = VaeServicer(self.store, self.plane, self.metrics)
        self.health = health.HealthServicer()
        self._grpc: grpc.Server | None = None
        self._metrics_http: tuple[object, threading.Thread] | None = None
        self.port = 0
        self.metrics_port = 0
        self._stopped = threading.Event()
        self.watcher = RepositoryWatcher(
            self.store, settings.reload_interval_seconds, self._after_reload
        )
        self.reloaded = threading.Condition()  # notified after every scan (tests wait on it)
        self.reload_count = 0
        self._health_models: set[str] = set()

    def _executor(self, runtime: ModelRuntime) -> ModelExecutor:
        config = self.settings.batching_for(runtime.metadata.name)
        return ModelExecutor(runtime, config, self.metrics)

    def _require_gpu(self, runtimes: list[ModelExecutor]) -> None:
        on_cpu = [
            f"{rt.metadata.name}/{rt.metadata.version}"
            for rt in runtimes
            if rt.provider not in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        ]
        if on_cpu:
            raise StartupError(
                f"--require-gpu is set but {', '.join(on_cpu)} run on "
                f"{runtimes[0].provider}: CUDA did not load (is onnxruntime-gpu installed, a GPU "
                "visible and the CUDA/cuDNN libraries on the library path?); drop --require-gpu "
                "to serve on CPU"
            )

    def _publish_models(self) -> None:
        """Loaded-model gauge and per-model health from what the store serves now."""
        runtimes = self.store.all()
        self.metrics.set_loaded_models(
            [(rt.metadata.name, rt.metadata.version, rt.provider) for rt in runtimes]
        )
        if self.servicer.draining.is_set() or self._grpc is None:
            return
        serving = set(self.store.names())
        for name in serving:
            self.health.set(model_health_name(name), health_pb2.HealthCheckResponse.SERVING)
        for name in self._health_models - serving:
            self.health.set(model_health_name(name), health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
        self._health_models = serving

    def _after_reload(self, result: ReloadResult | None) -> None:
        if result is None:
            self.metrics.reloads.labels("failed").inc()
        else:
            for failure in result.failed:
                self.metrics.load_failures.labels(failure.name).inc()
            self.metrics.reloads.labels("changed" if result.changed else "unchanged").inc()
            if result.changed:
                log.info("reloaded: added %s, removed %s", result.added, result.removed)
                self._publish_models()
        with self.reloaded:
            self.reload_count += 1
            self.reloaded.notify_all()

    def reload_now(self) -> None:
        """Ask the watcher for a rescan (what SIGHUP does)."""
        self.watcher.trigger()

    def _load_models(self) -> None:
        try:
            self.store.load_all(warm_up=True)
        except ValueError as exc:
            raise StartupError(str(exc)) from exc
        for failure in self.store.failures:
            self.metrics.load_failures.labels(failure.name).inc()
        runtimes = self.store.all()
        if not runtimes:
            raise StartupError(
                f"no loadable model in repository {self.settings.repository}; export one with "
                "`vae-export <checkpoint> --repository <dir>` and check the log for skipped versions"
            )
        if self.settings.require_gpu:
            self._require_gpu(runtimes)

    def start(self) -> int:
        """Load models, bind ports, start serving; returns the bound gRPC port."""
        self._load_models()
        limit = self.settings.limits.max_message_bytes
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=self.settings.workers, thread_name_prefix="vae-grpc"
            ),
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
            ],
        )
        vae_pb2_grpc.add_VaeServiceServicer_to_server(self.servicer, self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._grpc
        )
        address = f"{self.settings.host}:{self.settings.port}"
        s = self.settings
        try:
            credentials = server_credentials(s.tls_cert, s.tls_key, s.tls_client_ca)
        except TlsConfigError as exc:
            raise StartupError(str(exc)) from exc
        try:
            if credentials is None:
                self.port = self._grpc.add_insecure_port(address)
            else:
                self.port = self._grpc.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise StartupError(f"cannot bind gRPC to {address}: {exc}") from exc
        if self.port == 0:
            raise StartupError(f"cannot bind gRPC to {address}; is the port in use?")
        self._grpc.start()
        if self.settings.metrics_port:
            self._start_metrics(self.settings.metrics_port)
        self._set_serving(True)
        self._publish_models()
        self.watcher.start()
        log.info(
            "serving %s on %s:%d (%s, batching %s, metrics on %s)",
            ", ".join(self.store.names()),
            self.settings.host,
            self.port,
            "plaintext" if credentials is None else "TLS",
            "on" if self.settings.batching.enabled else "off",
            self.metrics_port or "off",
        )
        return self.port

    def _start_metrics(self, port: int) -> None:
        try:
            httpd, thread = start_http_server(
                port, addr=self.settings.metrics_host, registry=self.metrics.registry
            )
        except OSError as exc:
            raise StartupError(
                f"cannot serve metrics on {self.settings.metrics_host}:{port}: {exc}"
            ) from exc
        self._metrics_http = (httpd, thread)
        self.metrics_port = httpd.server_port

    def _set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self.health.set("", status)
        self.health.set(SERVICE_NAME, status)
        self._health_models = set(self.store.names())
        for name in self._health_models:
            self.health.set(model_health_name(name), status)

    def stop(self, grace: float | None = None) -> None:
        """Drain: report NOT_SERVING, refuse new calls, let in-flight calls finish within `grace`."""
        if self._stopped.is_set():
            return
        grace = self.settings.grace_seconds if grace is None else grace
        self.health.enter_graceful_shutdown()  # every service NOT_SERVING from now on
        if self.settings.drain_delay_seconds > 0:
            # Keep answering while load balancers notice NOT_SERVING and stop sending calls.
            log.info(
                "draining: NOT_SERVING, refusing calls in %.1fs", self.settings.drain_delay_seconds
            )
            threading.Event().wait(self.settings.drain_delay_seconds)
        log.info("draining: waiting up to %.1fs for in-flight calls", grace)
        self.servicer.draining.set()
        self.watcher.stop()
        if self._grpc is not None:
            self._grpc.stop(grace).wait()
        for executor in self.store.all():
            executor.close()
        if self._metrics_http is not None:
            httpd, _ = self._metrics_http
            httpd.shutdown()  # type: ignore[attr-defined]
            httpd.server_close()  # type: ignore[attr-defined]
        self._stopped.set()
        log.info("stopped")

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

"""Server settings: one dataclass, filled from command-line flags that each also read a VAE_* variable."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from server.batching import BatchingConfig
from server.runtime import DEFAULT_PROVIDERS


@dataclass(frozen=True)
class Limits:
    """Bounds on one request; anything larger is refused with RESOURCE_EXHAUSTED or INVALID_ARGUMENT."""

    max_batch: int = 1024  # images or latents in one Encode/Decode call
    max_samples: int = 1024  # images in one Sample call
    max_interpolation_steps: int = 256
    max_temperature: float = 10.0
    max_message_bytes: int = 64 * 1024 * 1024  # gRPC send and receive limit
    max_stream_samples: int = 1_000_000  # images in one SampleStream call


DEFAULT_TLS_HEALTH_PORT = 50052
INFERENCE_EXECUTORS = ("auto", "loop", "thread")


@dataclass(frozen=True)
class Settings:
    repository: Path = Path("model_repository")
    host: str = "0.0.0.0"
    port: int = 50051
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9090  # 0 disables the metrics endpoint
    # gRPC handler threads. A handler blocks while its rows wait in a batch, so this caps how many
    # requests one batch can merge; threads waiting on a future cost little (measured, BENCHMARKS.md).
    workers: int = 128
    providers: tuple[str, ...] = DEFAULT_PROVIDERS
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    cuda_device_id: int = 0
    cuda_arena_extend_strategy: str = "kNextPowerOfTwo"  # or kSameAsRequested
    cudnn_conv_algo_search: str = "EXHAUSTIVE"  # or HEURISTIC, DEFAULT
    cuda_mem_limit_bytes: int = 0  # 0: no limit
    tensorrt: bool = False  # opt in: TensorRT builds engines at load (slow) and caches them
    tensorrt_cache_dir: str = "/tmp/vae-trt-cache"
    tensorrt_fp16: bool = False
    require_gpu: bool = False
    grace_seconds: float = 20.0  # how long SIGTERM waits for in-flight calls
    # After SIGTERM, report NOT_SERVING but keep answering this long, so load balancers move away
    # first; keep it plus grace_seconds under the pod's terminationGracePeriodSeconds.
    drain_delay_seconds: float = 0.0
    reload_interval_seconds: float = (
        15.0  # repository poll; 0 turns polling off (SIGHUP still works)
    )
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    model_batching: dict[str, BatchingConfig] = field(default_factory=dict)  # per-model overrides
    tls_cert: str = ""  # PEM server certificate chain; with tls_key, serves TLS
    tls_key: str = ""
    tls_client_ca: str = ""  # PEM CA bundle; when set, clients must present a certificate it signed
    limits: Limits = field(default_factory=Limits)
    log_level: str = "INFO"
    log_format: str = "text"  # text, or json: one JSON object per line
    # Serving processes sharing the port; 0: one per core this process may run on.
    processes: int = 0
    # Plaintext health-only listener; -1: port 50052 when TLS is on, off otherwise; 0: off.
    health_port: int = -1
    # Where model calls run: auto (on the event loop for CPU models, in a thread for GPU ones),
    # loop, or thread.
    inference_executor: str = "auto"

    def batching_for(self, model: str) -> BatchingConfig:
        return self.model_batching.get(model, self.batching)

    def process_count(self) -> int:
        """Serving processes to run: --processes, or one per core this process may run on."""
        if self.processes > 0:
            return self.processes
        return max(1, len(os.sched_getaffinity(0)))

    def resolved_health_port(self) -> int | None:
        """The plaintext health listener's port, or None when there is none."""
        if self.health_port < 0:
            return DEFAULT_TLS_HEALTH_PORT if self.tls_cert else None
        return self.health_port or None

    def resolved_intra_op_threads(self) -> int:
        """onnxruntime threads per call: as set, or with several processes the cores shared out
        between them (each process's own default would be every core, oversubscribing them)."""
        if self.intra_op_threads > 0:
            return self.intra_op_threads
        processes = self.process_count()
        if processes > 1:
            return max(1, len(os.sched_getaffinity(0)) // processes)
        return 0


# (flag, settings attribute, type, help). Each flag reads VAE_<ATTRIBUTE upper-cased> as its default.
_OPTIONS: list[tuple[str, str, Any, str]] = [
    ("--repository", "repository", Path, "model repository directory"),
    ("--host", "host", str, "address the gRPC server binds"),
    ("--port", "port", int, "gRPC port"),
    ("--metrics-host", "metrics_host", str, "address of the Prometheus /metrics endpoint"),
    ("--metrics-port", "metrics_port", int, "Prometheus /metrics port (0 turns it off)"),
    ("--workers", "workers", int, "gRPC handler threads"),
    (
        "--intra-op-threads",
        "intra_op_threads",
        int,
        "onnxruntime threads per call (0: its default)",
    ),
    ("--inter-op-threads", "inter_op_threads", int, "onnxruntime inter-op threads (0: default)"),
    ("--cuda-device-id", "cuda_device_id", int, "GPU used by the CUDA provider"),
    (
        "--cuda-arena-extend-strategy",
        "cuda_arena_extend_strategy",
        str,
        "CUDA memory arena growth: kNextPowerOfTwo or kSameAsRequested",
    ),
    (
        "--cudnn-conv-algo-search",
        "cudnn_conv_algo_search",
        str,
        "cuDNN convolution algorithm search: EXHAUSTIVE, HEURISTIC or DEFAULT",
    ),
    ("--cuda-mem-limit-bytes", "cuda_mem_limit_bytes", int, "CUDA arena limit (0: none)"),
    ("--tensorrt-cache-dir", "tensorrt_cache_dir", str, "TensorRT engine cache directory"),
    ("--grace-seconds", "grace_seconds", float, "seconds SIGTERM waits for in-flight calls"),
    (
        "--drain-delay-seconds",
        "drain_delay_seconds",
        float,
        "seconds to keep serving while NOT_SERVING before refusing new calls",
    ),
    (
        "--reload-interval-seconds",
        "reload_interval_seconds",
        float,
        "repository poll interval for hot reload (0: off; SIGHUP always reloads)",
    ),
    ("--tls-cert", "tls_cert", str, "PEM server certificate chain (with --tls-key: TLS)"),
    ("--tls-key", "tls_key", str, "PEM private key of --tls-cert"),
    (
        "--tls-client-ca",
        "tls_client_ca",
        str,
        "PEM CA bundle; set it to require client certs (mTLS)",
    ),
    ("--processes", "processes", int, "serving processes sharing the port (0: one per core)"),
    (
        "--health-port",
        "health_port",
        int,
        "plaintext grpc.health.v1 port (-1: 50052 when TLS is on, else off; 0: off)",
    ),
    (
        "--inference-executor",
        "inference_executor",
        str,
        "where model calls run: auto (loop for CPU, thread for GPU), loop or thread",
    ),
    ("--log-level", "log_level", str, "DEBUG, INFO, WARNING or ERROR"),
    ("--log-format", "log_format", str, "text, or json (one object per line)"),
]
_BATCHING_OPTIONS: list[tuple[str, str, Any, str]] = [
    ("--max-batch-size", "max_batch_size", int, "rows merged into one onnxruntime call"),
    ("--max-queue-delay-ms", "max_queue_delay_ms", float, "longest a request waits for company"),
    ("--max-queue-rows", "max_queue_rows", int, "rows waiting per model component before refusing"),
    (
        "--max-settle-ms",
        "max_settle_ms",
        float,
        "longest a batch waits for calls the busy event loop is still accepting",
    ),
]
# (flag, settings attribute, help) of on/off options; each reads VAE_<ATTRIBUTE> (1/true/yes/on).
_SWITCHES: list[tuple[str, str, str]] = [
    ("--require-gpu", "require_gpu", "refuse to start unless every model runs on CUDA"),
    ("--tensorrt", "tensorrt", "try the TensorRT provider before CUDA (engines cached)"),
    ("--tensorrt-fp16", "tensorrt_fp16", "let TensorRT build fp16 engines"),
]
_LIMIT_OPTIONS: list[tuple[str, str, Any, str]] = [
    ("--max-batch", "max_batch", int, "images or latents per Encode/Decode request"),
    ("--max-samples", "max_samples", int, "images per Sample request"),
    ("--max-interpolation-steps", "max_interpolation_steps", int, "steps per Interpolate request"),
    ("--max-temperature", "max_temperature", float, "largest Sample temperature"),
    ("--max-message-bytes", "max_message_bytes", int, "largest gRPC message, either direction"),
    ("--max-stream-samples", "max_stream_samples", int, "images per SampleStream request"),
]


def env_name(attribute: str) -> str:
    return "VAE_" + attribute.upper()


def _env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name, "").strip().lower()
    return default if not value else value in ("1", "true", "yes", "on")


def parse_model_batching(text: str) -> dict[str, dict[str, Any]]:
    """`{"model": {"max_batch_size": 16, ...}}` inline, or `@path` to a file holding it."""
    if not text.strip():
        return {}
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    allowed = sorted(BatchingConfig.__dataclass_fields__)
    try:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise TypeError("the top level must be an object keyed by model name")
        for options in raw.values():
            BatchingConfig(**options)  # raises on unknown keys and bad values
        return raw
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(
            f"--model-batching: {exc}; expected JSON like "
            f'{{"my-model": {{"max_batch_size": 16}}}} with keys from {allowed}'
        ) from exc


def build_parser() -> argparse.ArgumentParser:
    defaults, limit_defaults, batch_defaults = Settings(), Limits(), BatchingConfig()
    parser = argparse.ArgumentParser(
        prog="vae-serve",
        description="Serve a VAE model repository over gRPC with onnxruntime.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for options, source in (
        (_OPTIONS, defaults),
        (_LIMIT_OPTIONS, limit_defaults),
        (_BATCHING_OPTIONS, batch_defaults),
    ):
        for flag, attribute, kind, help_text in options:
            default = os.environ.get(env_name(attribute), getattr(source, attribute))
            parser.add_argument(
                flag, type=kind, default=kind(default), help=f"{help_text} [{env_name(attribute)}]"
            )
    parser.add_argument(
        "--providers",
        default=os.environ.get("VAE_PROVIDERS", ",".join(DEFAULT_PROVIDERS)),
        help="onnxruntime execution providers in order of preference, comma-separated; CPU is "
        "always added last [VAE_PROVIDERS]",
    )
    for flag, attribute, help_text in _SWITCHES:
        parser.add_argument(
            flag,
            action="store_true",
            default=_env_bool(env_name(attribute)),
            help=f"{help_text} [{env_name(attribute)}]",
        )
    parser.add_argument(
        "--batching",
        action=argparse.BooleanOptionalAction,
        default=_env_bool("VAE_BATCHING", default=True),
        help="merge concurrent requests into one onnxruntime call [VAE_BATCHING]",
    )
    parser.add_argument(
        "--model-batching",
        type=parse_model_batching,
        default=parse_model_batching(os.environ.get("VAE_MODEL_BATCHING", "")),
        help="per-model batching overrides as JSON or @file, e.g. "
        '\'{"tiny-vae": {"max_batch_size": 16, "enabled": false}}\' [VAE_MODEL_BATCHING]',
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    values = vars(args)
    limit_names = {f.name for f in fields(Limits)}
    limits = Limits(**{k: v for k, v in values.items() if k in limit_names})
    batching = BatchingConfig(
        enabled=values["batching"],
        **{name: values[name] for _, name, _, _ in _BATCHING_OPTIONS},
    )
    providers = tuple(p.strip() for p in values["providers"].split(",") if p.strip())
    # A model's overrides apply on top of the server-wide batching flags.
    model_batching = {
        name: replace(batching, **options) for name, options in values["model_batching"].items()
    }
    plain = {
        f.name: values[f.name]
        for f in fields(Settings)
        if f.name in values and f.name not in ("limits", "providers", "batching", "model_batching")
    }
    return Settings(
        **plain,
        providers=providers,
        limits=limits,
        batching=batching,
        model_batching=model_batching,
    )

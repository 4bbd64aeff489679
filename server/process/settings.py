"""Server settings: one dataclass, filled from command-line flags that each also read a VAE_* variable.

Every value is checked when parsed (server/options.py): a mistake exits 2 with one line naming the
flag, the variable it came from, the value and what is allowed.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from server import options as opt
from server.dataplane.limits import Limits
from server.inference.batching import BatchingConfig
from server.inference.sessions import DEFAULT_PROVIDERS

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
CUDA_ARENA_EXTEND_STRATEGIES = ("kNextPowerOfTwo", "kSameAsRequested")
CUDNN_CONV_ALGO_SEARCHES = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
# The plaintext grpc.health.v1 listener's port when TLS is on and --health-port is not given:
# kubelet's gRPC probes and docker/healthcheck.py speak plaintext only.
DEFAULT_HEALTH_PORT = 50052


INFERENCE_EXECUTORS = ("auto", "loop", "thread")


@dataclass(frozen=True)
class Settings:
    repository: Path = Path("model_repository")
    host: str = "0.0.0.0"
    port: int = 50051
    # HTTP on every serving process, on the gRPC event loop: the v2 REST API, the image routes,
    # /openapi.json and the explorer. 0 turns it off.
    http_port: int = 8080
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9090  # 0 disables the metrics endpoint
    # Plaintext listener serving grpc.health.v1 only, for probes that cannot speak TLS. None: on at
    # DEFAULT_HEALTH_PORT when TLS is on (tls_cert set), off otherwise; 0: off. See
    # resolved_health_port().
    health_port: int | None = None
    # Server processes sharing the gRPC port; one process is bound by Python's GIL near one core.
    # 0: one per core this process may run on (see process_count()).
    processes: int = 0
    # Calls one process handles at once (grpc.aio's maximum_concurrent_rpcs); beyond it a call gets
    # RESOURCE_EXHAUSTED at once. Handlers are coroutines, so a waiting call costs a few kilobytes.
    max_concurrent_rpcs: int = 1024
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
    # Close each client connection after this long (0: never), letting its calls in flight finish
    # within max_connection_age_grace_seconds, so clients reconnect and spread over the pods and
    # processes behind a Kubernetes Service (one connection reaches one process).
    max_connection_age_seconds: float = 0.0
    max_connection_age_grace_seconds: float = 10.0
    reload_interval_seconds: float = (
        15.0  # repository poll; 0 turns polling off (SIGHUP still works)
    )
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    model_batching: dict[str, BatchingConfig] = field(default_factory=dict)  # per-model overrides
    tls_cert: str = ""  # PEM server certificate chain; with tls_key, serves TLS
    tls_key: str = ""
    tls_client_ca: str = ""  # PEM CA bundle; when set, clients must present a certificate it signed
    limits: Limits = field(default_factory=Limits)
    log_level: str = "INFO"  # one of LOG_LEVELS
    log_format: str = "text"  # text, or json: one JSON object per line
    # Where model calls run: auto (on the event loop for CPU models, in a thread for GPU ones),
    # loop, or thread.
    inference_executor: str = "auto"

    def __post_init__(self) -> None:
        clash = port_clash(
            self.port, self.metrics_port, self.resolved_health_port(), self.http_port
        )
        if clash:
            raise ValueError(clash)

    def batching_for(self, model: str) -> BatchingConfig:
        return self.model_batching.get(model, self.batching)

    def resolved_health_port(self) -> int:
        """The plaintext health listener's port; 0 when it is off."""
        return resolve_health_port(self.health_port, self.tls_cert)

    def process_count(self) -> int:
        """How many server processes to run: `processes`, or one per core this process may use."""
        return self.processes or usable_cores()

    def resolved_intra_op_threads(self) -> int:
        """onnxruntime threads per call: as set, or with several processes the cores shared out
        between them (each process's own default would be every core, oversubscribing them)."""
        if self.intra_op_threads > 0:
            return self.intra_op_threads
        processes = self.process_count()
        if processes > 1:
            return max(1, usable_cores() // processes)
        return 0


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity: a container's cpuset, `taskset`), not the
    machine's. A CPU quota (`docker run --cpus`, a Kubernetes limit) does not narrow it."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no sched_getaffinity
        return os.cpu_count() or 1


def resolve_health_port(health_port: int | None, tls_cert: str) -> int:
    """`health_port` when given (0: off); unset, DEFAULT_HEALTH_PORT with TLS and off without."""
    if health_port is not None:
        return health_port
    return DEFAULT_HEALTH_PORT if tls_cert else 0


def port_clash(port: int, metrics_port: int, health_port: int, http_port: int = 0) -> str | None:
    """A message when two listeners would share a port (0 is ephemeral or off: never a clash)."""
    if port and port == metrics_port:
        return f"--metrics-port {metrics_port} is also --port; give each its own port"
    if http_port:
        for name, other in (("--port", port), ("--metrics-port", metrics_port)):
            if http_port == other:
                return (
                    f"--http-port {http_port} is also {name}; give each its own port, or "
                    "--http-port 0 to turn HTTP off"
                )
    if not health_port:
        return None
    for name, other in (
        ("--port", port),
        ("--metrics-port", metrics_port),
        ("--http-port", http_port),
    ):
        if health_port == other:
            return (
                f"the health port {health_port} is also {name}; give --health-port a port of its "
                "own, or 0 to turn the health listener off"
            )
    return None


# (flag, settings attribute, converter, help). Each flag reads VAE_<ATTRIBUTE upper-cased>.
_PORT = opt.integer(0, 65535)
_OPTIONS: list[tuple[str, str, opt.Convert, str]] = [
    ("--repository", "repository", opt.path, "model repository directory"),
    ("--host", "host", opt.nonempty, "address the gRPC server binds"),
    ("--port", "port", _PORT, "gRPC port"),
    (
        "--http-port",
        "http_port",
        _PORT,
        "HTTP port: the v2 REST API, image routes, /openapi.json and the explorer (0 turns it off)",
    ),
    ("--metrics-host", "metrics_host", opt.nonempty, "address of the Prometheus /metrics endpoint"),
    ("--metrics-port", "metrics_port", _PORT, "Prometheus /metrics port (0 turns it off)"),
    (
        "--processes",
        "processes",
        opt.integer(0),
        "server processes sharing the gRPC port (0: one per core this process may run on)",
    ),
    (
        "--max-concurrent-rpcs",
        "max_concurrent_rpcs",
        opt.integer(1),
        "calls one process handles at once; beyond it RESOURCE_EXHAUSTED",
    ),
    (
        "--intra-op-threads",
        "intra_op_threads",
        opt.integer(0),
        "onnxruntime threads per call (0: its default)",
    ),
    (
        "--inter-op-threads",
        "inter_op_threads",
        opt.integer(0),
        "onnxruntime inter-op threads (0: default)",
    ),
    ("--cuda-device-id", "cuda_device_id", opt.integer(0), "GPU used by the CUDA provider"),
    (
        "--cuda-arena-extend-strategy",
        "cuda_arena_extend_strategy",
        opt.choice(*CUDA_ARENA_EXTEND_STRATEGIES),
        "CUDA memory arena growth: kNextPowerOfTwo or kSameAsRequested",
    ),
    (
        "--cudnn-conv-algo-search",
        "cudnn_conv_algo_search",
        opt.choice(*CUDNN_CONV_ALGO_SEARCHES),
        "cuDNN convolution algorithm search: EXHAUSTIVE, HEURISTIC or DEFAULT",
    ),
    (
        "--cuda-mem-limit-bytes",
        "cuda_mem_limit_bytes",
        opt.integer(0),
        "CUDA arena limit (0: none)",
    ),
    ("--tensorrt-cache-dir", "tensorrt_cache_dir", opt.nonempty, "TensorRT engine cache directory"),
    (
        "--grace-seconds",
        "grace_seconds",
        opt.number(0),
        "seconds SIGTERM waits for in-flight calls",
    ),
    (
        "--drain-delay-seconds",
        "drain_delay_seconds",
        opt.number(0),
        "seconds to keep serving while NOT_SERVING before refusing new calls",
    ),
    (
        "--max-connection-age-seconds",
        "max_connection_age_seconds",
        opt.number(0),
        "close each connection after this long so clients reconnect and spread (0: never)",
    ),
    (
        "--max-connection-age-grace-seconds",
        "max_connection_age_grace_seconds",
        opt.number(0),
        "how long calls in flight on an aged connection may take to finish",
    ),
    (
        "--reload-interval-seconds",
        "reload_interval_seconds",
        opt.number(0),
        "repository poll interval for hot reload (0: off; SIGHUP always reloads)",
    ),
    ("--tls-cert", "tls_cert", opt.text, "PEM server certificate chain (with --tls-key: TLS)"),
    ("--tls-key", "tls_key", opt.text, "PEM private key of --tls-cert"),
    (
        "--tls-client-ca",
        "tls_client_ca",
        opt.text,
        "PEM CA bundle; set it to require client certs (mTLS)",
    ),
    (
        "--inference-executor",
        "inference_executor",
        opt.choice(*INFERENCE_EXECUTORS),
        "where model calls run: auto (the event loop for CPU models, a thread for GPU ones), "
        "loop or thread",
    ),
    ("--log-level", "log_level", opt.choice(*LOG_LEVELS), ", ".join(LOG_LEVELS)),
    ("--log-format", "log_format", opt.choice(*LOG_FORMATS), "text, or json (one object per line)"),
]
_BATCHING_OPTIONS: list[tuple[str, str, opt.Convert, str]] = [
    (
        "--max-batch-size",
        "max_batch_size",
        opt.integer(1),
        "rows merged into one onnxruntime call",
    ),
    (
        "--max-queue-delay-ms",
        "max_queue_delay_ms",
        opt.number(0),
        "longest a request waits for company",
    ),
    (
        "--max-queue-rows",
        "max_queue_rows",
        opt.integer(1),
        "rows waiting per model component before refusing",
    ),
    (
        "--max-settle-ms",
        "max_settle_ms",
        opt.number(0),
        "longest a batch waits for calls the busy event loop is still accepting",
    ),
]
# (flag, settings attribute, help) of on/off options; each reads VAE_<ATTRIBUTE> as a boolean word.
_SWITCHES: list[tuple[str, str, str]] = [
    ("--require-gpu", "require_gpu", "refuse to start unless every model runs on CUDA"),
    ("--tensorrt", "tensorrt", "try the TensorRT provider before CUDA (engines cached)"),
    ("--tensorrt-fp16", "tensorrt_fp16", "let TensorRT build fp16 engines"),
]
_LIMIT_OPTIONS: list[tuple[str, str, opt.Convert, str]] = [
    ("--max-batch", "max_batch", opt.integer(1), "images or latents per Encode/Decode request"),
    ("--max-samples", "max_samples", opt.integer(1), "images per Sample request"),
    (
        "--max-interpolation-steps",
        "max_interpolation_steps",
        opt.integer(2),
        "steps per Interpolate request (both ends included)",
    ),
    ("--max-temperature", "max_temperature", opt.number(above=0), "largest Sample temperature"),
    (
        "--max-message-bytes",
        "max_message_bytes",
        opt.integer(1024),
        "largest gRPC message, either direction, and HTTP request body (413 beyond)",
    ),
    (
        "--max-stream-samples",
        "max_stream_samples",
        opt.integer(1),
        "images per SampleStream request",
    ),
]

# What a --model-batching entry may hold: key -> (JSON types allowed, description).
_MODEL_BATCHING_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "enabled": ((bool,), "true or false"),
    "max_batch_size": ((int,), "an integer"),
    "max_queue_delay_ms": ((int, float), "a number"),
    "max_queue_rows": ((int,), "an integer"),
}
_MODEL_BATCHING_EXAMPLE = '{"my-model": {"max_batch_size": 16}}'


def env_name(attribute: str) -> str:
    return "VAE_" + attribute.upper()


def parse_model_batching(text: str) -> dict[str, dict[str, Any]]:
    """`{"model": {"max_batch_size": 16, ...}}` inline, or `@path` to a file holding it.

    Raises ValueError saying what is wrong and what is allowed; keys and value types are checked
    here (JSON `"16"` is not an integer, `"no"` is not false), ranges by BatchingConfig.
    """
    if not text.strip():
        return {}
    allowed = sorted(_MODEL_BATCHING_KEYS)
    expected = f"expected JSON like {_MODEL_BATCHING_EXAMPLE} with keys from {allowed}"
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            raise ValueError(f"cannot read {text[1:]!r}: {exc.strerror}") from exc
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc}); {expected}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"the top level must be an object keyed by model name; {expected}")
    for model, overrides in raw.items():
        if not isinstance(overrides, dict):
            raise ValueError(f"model {model!r}: its value must be an object; {expected}")
        for key, value in overrides.items():
            if key not in _MODEL_BATCHING_KEYS:
                raise ValueError(f"model {model!r}: unknown key {key!r}; {expected}")
            types, description = _MODEL_BATCHING_KEYS[key]
            # bool is an int in Python; only "enabled" may be one.
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                raise ValueError(f"model {model!r}: {key} must be {description}, got {value!r}")
        try:
            BatchingConfig(**overrides)
        except ValueError as exc:
            raise ValueError(f"model {model!r}: {exc}") from None
    return raw


def _check_ports(parser: opt.StrictParser) -> opt.Check:
    def check(args: argparse.Namespace) -> str | None:
        early = port_clash(args.port, args.metrics_port, 0, args.http_port)
        if early:
            return early
        health = resolve_health_port(args.health_port, args.tls_cert)
        clash = port_clash(args.port, args.metrics_port, health, args.http_port)
        if clash is None:
            return None
        where = (
            parser.describe("health_port")
            if args.health_port is not None
            else f"--health-port (default {DEFAULT_HEALTH_PORT} with --tls-cert)"
        )
        return f"{where}: {clash}"

    return check


def build_parser() -> opt.StrictParser:
    defaults, limit_defaults, batch_defaults = Settings(), Limits(), BatchingConfig()
    parser = opt.StrictParser(
        prog="vae-serve",
        description="Serve a VAE model repository over gRPC and HTTP with onnxruntime. Every flag also "
        "reads the VAE_* variable in brackets; booleans take true/false, 1/0, yes/no or on/off.",
    )
    for options, source in (
        (_OPTIONS, defaults),
        (_LIMIT_OPTIONS, limit_defaults),
        (_BATCHING_OPTIONS, batch_defaults),
    ):
        for flag, attribute, convert, help_text in options:
            parser.option(
                flag,
                convert,
                getattr(source, attribute),
                help_text,
                env=env_name(attribute),
                dest=attribute,
            )
    parser.option(
        "--health-port",
        _PORT,
        None,
        "plaintext port serving only grpc.health.v1, for probes (kubelet, docker/healthcheck.py) "
        "when the gRPC port speaks TLS; 0 turns it off",
        env="VAE_HEALTH_PORT",
        dest="health_port",
        shown_default=f"{DEFAULT_HEALTH_PORT} with --tls-cert, off without",
    )
    parser.option(
        "--providers",
        opt.providers,
        DEFAULT_PROVIDERS,
        "onnxruntime execution providers in order of preference, comma-separated; CPU is "
        "always added last",
        env="VAE_PROVIDERS",
        dest="providers",
    )
    for flag, attribute, help_text in _SWITCHES:
        parser.switch(
            flag, getattr(defaults, attribute), help_text, env=env_name(attribute), dest=attribute
        )
    parser.switch(
        "--batching",
        batch_defaults.enabled,
        "merge concurrent requests into one onnxruntime call",
        env="VAE_BATCHING",
        dest="batching",
        negatable=True,
    )
    parser.option(
        "--model-batching",
        parse_model_batching,
        {},
        "per-model batching overrides as JSON or @file, e.g. "
        '\'{"tiny-vae": {"max_batch_size": 16, "enabled": false}}\'',
        env="VAE_MODEL_BATCHING",
        dest="model_batching",
        metavar="JSON",
        shown_default="none",
    )
    parser.check(_check_ports(parser))
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    values = vars(args)
    limit_names = {f.name for f in fields(Limits)}
    limits = Limits(**{k: v for k, v in values.items() if k in limit_names})
    batching = BatchingConfig(
        enabled=values["batching"],
        **{name: values[name] for _, name, _, _ in _BATCHING_OPTIONS},
    )
    # A model's overrides apply on top of the server-wide batching flags.
    model_batching = {
        name: replace(batching, **options) for name, options in values["model_batching"].items()
    }
    plain = {
        f.name: values[f.name]
        for f in fields(Settings)
        if f.name in values and f.name not in ("limits", "batching", "model_batching")
    }
    return Settings(**plain, limits=limits, batching=batching, model_batching=model_batching)


def parse_settings(argv: list[str] | None = None) -> Settings:
    """vae-serve's Settings from `argv` (default sys.argv) and the environment; exits 2 on a mistake."""
    return settings_from_args(build_parser().parse_args(argv))

"""Server settings: one dataclass, filled from command-line flags that each also read a VAE_* variable."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from server.runtime import DEFAULT_PROVIDERS


@dataclass(frozen=True)
class Limits:
    """Bounds on one request; anything larger is refused with RESOURCE_EXHAUSTED or INVALID_ARGUMENT."""

    max_batch: int = 1024  # images or latents in one Encode/Decode call
    max_samples: int = 1024  # images in one Sample call
    max_interpolation_steps: int = 256
    max_temperature: float = 10.0
    max_message_bytes: int = 64 * 1024 * 1024  # gRPC send and receive limit


@dataclass(frozen=True)
class Settings:
    repository: Path = Path("model_repository")
    host: str = "0.0.0.0"
    port: int = 50051
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9090  # 0 disables the metrics endpoint
    workers: int = (
        16  # gRPC handler threads; onnxruntime releases the GIL, so threads run in parallel
    )
    providers: tuple[str, ...] = DEFAULT_PROVIDERS
    intra_op_threads: int = 0
    cuda_device_id: int = 0
    require_gpu: bool = False
    grace_seconds: float = 20.0  # how long SIGTERM waits for in-flight calls
    limits: Limits = field(default_factory=Limits)
    log_level: str = "INFO"


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
    ("--cuda-device-id", "cuda_device_id", int, "GPU used by the CUDA provider"),
    ("--grace-seconds", "grace_seconds", float, "seconds SIGTERM waits for in-flight calls"),
    ("--log-level", "log_level", str, "DEBUG, INFO, WARNING or ERROR"),
]
_LIMIT_OPTIONS: list[tuple[str, str, Any, str]] = [
    ("--max-batch", "max_batch", int, "images or latents per Encode/Decode request"),
    ("--max-samples", "max_samples", int, "images per Sample request"),
    ("--max-interpolation-steps", "max_interpolation_steps", int, "steps per Interpolate request"),
    ("--max-temperature", "max_temperature", float, "largest Sample temperature"),
    ("--max-message-bytes", "max_message_bytes", int, "largest gRPC message, either direction"),
]


def env_name(attribute: str) -> str:
    return "VAE_" + attribute.upper()


def _env_bool(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def build_parser() -> argparse.ArgumentParser:
    defaults, limit_defaults = Settings(), Limits()
    parser = argparse.ArgumentParser(
        prog="vae-serve",
        description="Serve a VAE model repository over gRPC with onnxruntime.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for options, source in ((_OPTIONS, defaults), (_LIMIT_OPTIONS, limit_defaults)):
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
    parser.add_argument(
        "--require-gpu",
        action="store_true",
        default=_env_bool("VAE_REQUIRE_GPU"),
        help="refuse to start unless every model runs on CUDA [VAE_REQUIRE_GPU]",
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    values = vars(args)
    limit_names = {f.name for f in fields(Limits)}
    limits = Limits(**{k: v for k, v in values.items() if k in limit_names})
    providers = tuple(p.strip() for p in values["providers"].split(",") if p.strip())
    plain = {
        f.name: values[f.name]
        for f in fields(Settings)
        if f.name in values and f.name not in ("limits", "providers")
    }
    return Settings(**plain, providers=providers, limits=limits)

"""Bounds on one request, which the data plane and every front enforce."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Bounds on one request; anything larger is refused with RESOURCE_EXHAUSTED or INVALID_ARGUMENT."""

    max_batch: int = 1024  # images or latents in one Encode/Decode call
    max_samples: int = 1024  # images in one Sample call
    max_interpolation_steps: int = 256
    max_temperature: float = 10.0
    max_message_bytes: int = 64 * 1024 * 1024  # gRPC send and receive limit
    max_stream_samples: int = 1_000_000  # images in one SampleStream call

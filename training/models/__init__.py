"""Model registry: build any model from its ModelConfig."""

from __future__ import annotations

from training.models.base import GenerativeModel, ModelConfig, ModelOutput
from training.models.mlp import MLPVAE

ARCHITECTURES: dict[str, type[GenerativeModel]] = {"mlp": MLPVAE}
KINDS = ("vae", "cvae", "ae")


def build_model(config: ModelConfig) -> GenerativeModel:
    if config.architecture not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {config.architecture!r}; choose one of {sorted(ARCHITECTURES)}"
        )
    if config.kind not in KINDS:
        raise ValueError(f"unknown model kind {config.kind!r}; choose one of {KINDS}")
    if (config.kind == "cvae") != (config.num_classes > 0):
        raise ValueError("kind 'cvae' needs num_classes > 0, and other kinds num_classes = 0")
    return ARCHITECTURES[config.architecture](config)


__all__ = ["ARCHITECTURES", "GenerativeModel", "ModelConfig", "ModelOutput", "build_model"]

"""Model registry: build any model from its ModelConfig."""

from __future__ import annotations

from training.models.base import GenerativeModel, ModelConfig, ModelOutput
from training.models.conv import ConvVAE
from training.models.face import FaceVAE
from training.models.mlp import MLPVAE

ARCHITECTURES: dict[str, type[GenerativeModel]] = {"mlp": MLPVAE, "conv": ConvVAE, "face": FaceVAE}
LIKELIHOODS = ("bernoulli", "gaussian")
KINDS = ("vae", "cvae", "ae")


def build_model(config: ModelConfig) -> GenerativeModel:
    if config.architecture not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {config.architecture!r}; choose one of {sorted(ARCHITECTURES)}"
        )
    if config.kind not in KINDS:
        raise ValueError(f"unknown model kind {config.kind!r}; choose one of {KINDS}")
    if config.likelihood not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {config.likelihood!r}; choose one of {LIKELIHOODS}")
    if not config.logvar_min < config.logvar_max:
        raise ValueError(
            f"logvar_min ({config.logvar_min}) must be below logvar_max ({config.logvar_max})"
        )
    if (config.kind == "cvae") != (config.num_classes > 0):
        raise ValueError("kind 'cvae' needs num_classes > 0, and other kinds num_classes = 0")
    return ARCHITECTURES[config.architecture](config)


__all__ = [
    "ARCHITECTURES",
    "KINDS",
    "LIKELIHOODS",
    "GenerativeModel",
    "ModelConfig",
    "ModelOutput",
    "build_model",
]

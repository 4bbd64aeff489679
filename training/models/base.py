"""The interface every model implements: encode, reparameterise, decode, sample, forward."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class ModelConfig:
    """What a checkpoint needs to rebuild a model; stored in it as plain values."""

    kind: str = "vae"  # vae, cvae (conditional) or ae (deterministic autoencoder)
    architecture: str = "mlp"
    image_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W)
    hidden_dims: tuple[int, ...] = (400,)  # the classic example's single 400-unit layer
    latent_dim: int = 20
    num_classes: int = 0  # > 0 for conditional models
    likelihood: str = "bernoulli"  # bernoulli (BCE) or gaussian (MSE)
    # Clamp of the encoder's log-variance (configurable): exp(20) and exp(-30) bound std to [3e-7, 2.2e4], so a
    # wild early step cannot overflow exp() into inf and NaN.
    logvar_min: float = -30.0
    logvar_max: float = 20.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["image_shape"] = list(self.image_shape)
        data["hidden_dims"] = list(self.hidden_dims)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        config = cls(**known)
        config.image_shape = tuple(config.image_shape)  # type: ignore[assignment]
        config.hidden_dims = tuple(config.hidden_dims)
        return config

    @property
    def input_size(self) -> int:
        c, h, w = self.image_shape
        return c * h * w


@dataclass
class ModelOutput:
    reconstruction: torch.Tensor  # (N, C, H, W), the likelihood's mean in [0, 1]
    mean: torch.Tensor  # (N, D)
    log_variance: torch.Tensor | None  # (N, D); None for the deterministic autoencoder
    latent: torch.Tensor  # (N, D), the z that was decoded
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class GenerativeModel(nn.Module):
    """Base class: subclasses implement `encode` and `decode`; the rest follows from them."""

    config: ModelConfig

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config

    @property
    def variational(self) -> bool:
        return self.config.kind != "ae"

    def one_hot(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        if self.config.num_classes == 0:
            return None
        if labels is None:
            raise ValueError(f"{self.config.kind} model needs class labels")
        return nn.functional.one_hot(labels, self.config.num_classes).float()

    def condition_labels(self, labels: torch.Tensor) -> torch.Tensor | None:
        """A batch's labels as this model's condition: the labels for a conditional model, else None."""
        return labels if self.config.num_classes else None

    def append_condition(self, h: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """(N, F) -> (N, F + num_classes) with the one-hot label for conditional models, else h."""
        condition = self.one_hot(labels)
        return h if condition is None else torch.cat([h, condition], dim=1)

    def posterior(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Features (N, F) -> mean (N, D) and clamped log-variance (N, D), or None for the AE.

        Subclasses define `to_mean` and `to_log_variance` (None when the model is not variational).
        """
        mean = self.to_mean(h)
        if self.to_log_variance is None:
            return mean, None
        return mean, self.clamp_log_variance(self.to_log_variance(h))

    def encode(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, C, H, W) -> mean (N, D), log-variance (N, D) or None."""
        raise NotImplementedError

    def decode_logits(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(N, D) -> (N, C, H, W) pre-sigmoid logits; subclasses implement this or `decode`."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(N, D) -> (N, C, H, W) in [0, 1]."""
        return torch.sigmoid(self.decode_logits(z, labels))

    def reparameterise(self, mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
        """z = mean + std * eps with eps ~ N(0, I) (Kingma & Welling 2014, section 2.4)."""
        std = torch.exp(0.5 * log_variance)
        return mean + std * torch.randn_like(std)

    def clamp_log_variance(self, log_variance: torch.Tensor) -> torch.Tensor:
        return log_variance.clamp(self.config.logvar_min, self.config.logvar_max)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> ModelOutput:
        mean, log_variance = self.encode(x, labels)
        z = mean if log_variance is None else self.reparameterise(mean, log_variance)
        # The logits let the Bernoulli loss use BCE-with-logits: exact where sigmoid saturates.
        logits = self.decode_logits(z, labels)
        return ModelOutput(torch.sigmoid(logits), mean, log_variance, z, {"logits": logits})

    @torch.no_grad()
    def sample(
        self, count: int, labels: torch.Tensor | None = None, temperature: float = 1.0
    ) -> torch.Tensor:
        """Decode `count` draws from N(0, temperature^2 I): (count, C, H, W)."""
        device = next(self.parameters()).device
        z = torch.randn(count, self.config.latent_dim, device=device) * temperature
        return self.decode(z, labels)

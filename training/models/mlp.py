"""Fully connected models for small images: the classic MLP VAE (784-400-20), its conditional
variant, and the deterministic autoencoder baseline."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from training.models.base import GenerativeModel, ModelConfig


def _mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class MLPVAE(GenerativeModel):
    """Encoder x -> hidden -> (mean, log-variance); decoder z -> hidden -> sigmoid image.

    With kind 'cvae' the one-hot class label is concatenated to the encoder's input and to z
    (Sohn et al. 2015); with kind 'ae' the encoder has a single code output and no variance.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        hidden = list(config.hidden_dims)
        condition = config.num_classes
        self.encoder_body = nn.Sequential(_mlp([config.input_size + condition, *hidden]), nn.ReLU())
        self.to_mean = nn.Linear(hidden[-1], config.latent_dim)
        self.to_log_variance = (
            nn.Linear(hidden[-1], config.latent_dim) if self.variational else None
        )
        self.decoder_body = _mlp(
            [config.latent_dim + condition, *reversed(hidden), config.input_size]
        )

    def encode(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = x.flatten(1)  # (N, C*H*W)
        h = self.append_condition(h, labels)
        h = self.encoder_body(h)  # (N, hidden[-1])
        return self.posterior(h)

    def decode_logits(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        z = self.append_condition(z, labels)
        logits = self.decoder_body(z)  # (N, C*H*W)
        return logits.view(-1, *self.config.image_shape)  # (N, C, H, W)

"""Convolutional VAE for small images (28x28): Conv 4x4 stride 2, 32-64-128 channels down to 3x3,
mirrored with transposed convolutions, sigmoid output; conditional and autoencoder kinds too."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from training.models.base import GenerativeModel, ModelConfig

KERNEL, STRIDE, PADDING = 4, 2, 1  # each convolution halves the side: floor(s / 2)


def downsampled_sides(side: int, blocks: int) -> list[int]:
    """Spatial side after each stride-2 convolution, starting with the input: [28, 14, 7, 3]."""
    sides = [side]
    for _ in range(blocks):
        sides.append((sides[-1] + 2 * PADDING - KERNEL) // STRIDE + 1)
    return sides


def _block(layer: nn.Module, channels: int, batch_norm: bool) -> list[nn.Module]:
    return [layer, *([nn.BatchNorm2d(channels)] if batch_norm else []), nn.ReLU()]


class ConvVAE(GenerativeModel):
    """Encoder: conv blocks over `hidden_dims` channels, then linear heads for mean and log-variance.
    Decoder: linear to the last feature map, transposed conv blocks back to the image, sigmoid.

    With kind 'cvae' the one-hot label joins the flattened features and z (Sohn et al. 2015).
    """

    batch_norm = False  # the face model turns it on

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        channels_in, height, width = config.image_shape
        if height != width:
            raise ValueError(f"{type(self).__name__} needs square images, got {config.image_shape}")
        channels = list(config.hidden_dims)
        self.sides = downsampled_sides(height, len(channels))
        if self.sides[-1] < 1:
            raise ValueError(
                f"{len(channels)} stride-2 blocks shrink a {height}x{width} image to nothing; "
                f"use fewer hidden_dims than {config.hidden_dims}"
            )
        self.feature_shape = (channels[-1], self.sides[-1], self.sides[-1])  # (C', S, S)
        features = channels[-1] * self.sides[-1] ** 2
        condition = config.num_classes

        encoder: list[nn.Module] = []
        for c_in, c_out in zip([channels_in, *channels[:-1]], channels, strict=True):
            conv = nn.Conv2d(c_in, c_out, KERNEL, STRIDE, PADDING)
            encoder += _block(conv, c_out, self.batch_norm)
        self.encoder_body = nn.Sequential(*encoder, nn.Flatten())
        self.to_mean = nn.Linear(features + condition, config.latent_dim)
        self.to_log_variance = (
            nn.Linear(features + condition, config.latent_dim) if self.variational else None
        )

        self.from_latent = nn.Linear(config.latent_dim + condition, features)
        # With BatchNorm on, the projected map is normalised too, as in DCGAN generators, so every
        # decoder, however shallow, has BatchNorm; 2-D over (C', S, S), so a batch of one still works.
        projection_norm = [nn.BatchNorm2d(channels[-1])] if self.batch_norm else []
        self.projection_activation = nn.Sequential(*projection_norm, nn.ReLU())
        decoder: list[nn.Module] = []
        up_channels = [*reversed(channels), channels_in]
        targets = list(reversed(self.sides[:-1]))  # sides to restore, e.g. [7, 14, 28]
        for i, (c_in, c_out) in enumerate(itertools.pairwise(up_channels)):
            side_in = self.sides[-1 - i]
            # A transposed conv gives 2 * side; output_padding adds the row that floor() dropped.
            extra = targets[i] - STRIDE * side_in
            deconv = nn.ConvTranspose2d(c_in, c_out, KERNEL, STRIDE, PADDING, output_padding=extra)
            last = i == len(up_channels) - 2
            decoder += [deconv] if last else _block(deconv, c_out, self.batch_norm)
        self.decoder_body = nn.Sequential(*decoder)

    def encode(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.encoder_body(x)  # (N, C' * S * S)
        h = self.append_condition(h, labels)
        return self.posterior(h)

    def decode_logits(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        z = self.append_condition(z, labels)
        h = self.from_latent(z).view(-1, *self.feature_shape)  # (N, C', S, S)
        return self.decoder_body(self.projection_activation(h))  # (N, C, H, W)

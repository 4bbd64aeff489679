"""Face VAE for 64x64 RGB (CelebA): four conv blocks 32-64-128-256 with BatchNorm and ReLU down to
4x4, a 256-dimensional latent, and the mirrored transposed-conv decoder with a sigmoid output."""

from __future__ import annotations

from training.models.base import ModelConfig
from training.models.conv import ConvVAE

# The configuration this family is built for; configs/face-vae.yaml spells it out.
FACE_DEFAULTS = {
    "image_shape": (3, 64, 64),  # CelebA after centre crop 148 and resize 64
    "hidden_dims": (32, 64, 128, 256),  # 64 -> 32 -> 16 -> 8 -> 4
    "latent_dim": 256,  # wide enough for faces' pose, light and identity
    "likelihood": "gaussian",  # summed squared error, the usual choice for natural images
}


class FaceVAE(ConvVAE):
    """ConvVAE with BatchNorm after every hidden convolution (eval mode uses running statistics,
    so the exported graphs are plain convolutions)."""

    batch_norm = True

    def __init__(self, config: ModelConfig) -> None:
        if config.image_shape[0] != 3:
            raise ValueError(f"the face model takes RGB images (3, H, W), got {config.image_shape}")
        super().__init__(config)

"""Every architecture honours the model interface: shapes, ranges, conditioning, the clamp, and
the checkpoint exports to ONNX."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.checkpoint import save_checkpoint
from training.models import ModelConfig, build_model

CONV = ModelConfig(architecture="conv", hidden_dims=(32, 64, 128), latent_dim=16)
FACE = ModelConfig(
    architecture="face",
    image_shape=(3, 64, 64),
    hidden_dims=(32, 64, 128, 256),
    latent_dim=256,
    likelihood="gaussian",
)


def test_conv_encoder_reaches_a_3x3_map_of_128_channels() -> None:
    assert build_model(CONV).feature_shape == (128, 3, 3)


def test_conv_decoder_restores_28x28_in_the_unit_interval() -> None:
    images = build_model(CONV).sample(5)
    assert images.shape == (5, 1, 28, 28) and images.min() >= 0 and images.max() <= 1


def test_face_encoder_reaches_a_4x4_map_of_256_channels() -> None:
    assert build_model(FACE).feature_shape == (256, 4, 4)


def test_face_model_round_trips_64x64_rgb() -> None:
    model = build_model(FACE).eval()
    mean, log_variance = model.encode(torch.rand(2, 3, 64, 64))
    assert mean.shape == log_variance.shape == (2, 256) and model.decode(mean).shape == (
        2,
        3,
        64,
        64,
    )


def test_face_model_has_batch_norm() -> None:
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in build_model(FACE).modules())


def test_conditional_conv_decoder_depends_on_the_label() -> None:
    model = build_model(ModelConfig(architecture="conv", kind="cvae", num_classes=10, latent_dim=4))
    z = torch.zeros(2, 4)
    assert not torch.allclose(
        model.decode(z, torch.tensor([0, 0])), model.decode(z, torch.tensor([0, 9]))
    )


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
def test_autoencoder_has_no_variance(architecture: str) -> None:
    model = build_model(ModelConfig(architecture=architecture, kind="ae"))
    assert model.encode(torch.rand(2, 1, 28, 28))[1] is None


def test_log_variance_is_clamped_to_the_configured_range() -> None:
    model = build_model(ModelConfig(architecture="conv", logvar_min=-1.0, logvar_max=1.0))
    with torch.no_grad():
        model.to_log_variance.bias.fill_(50.0)
    with torch.no_grad():
        log_variance = model.encode(torch.rand(3, 1, 28, 28))[1]
    assert float(log_variance.max()) == 1.0


def test_unknown_architecture_lists_the_registered_ones() -> None:
    with pytest.raises(ValueError, match=r"choose one of \['conv', 'face', 'mlp'\]"):
        build_model(ModelConfig(architecture="resnet"))


def test_too_many_blocks_for_the_image_is_refused() -> None:
    with pytest.raises(ValueError, match="fewer hidden_dims"):
        build_model(ModelConfig(architecture="conv", hidden_dims=(8, 8, 8, 8, 8, 8)))


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(
            architecture="conv", kind="cvae", num_classes=10, hidden_dims=(8, 16, 32), latent_dim=4
        ),
        ModelConfig(
            architecture="face", image_shape=(3, 64, 64), hidden_dims=(8, 8, 16, 16), latent_dim=8
        ),
    ],
    ids=["conv-cvae", "face"],
)
def test_checkpoint_exports_to_onnx_with_parity(config: ModelConfig, tmp_path: Path) -> None:
    from export.pipeline import export_checkpoint

    model = build_model(config)
    checkpoint = tmp_path / "run" / "best.pt"
    save_checkpoint(
        checkpoint,
        {
            "model_config": config.to_dict(),
            "model_state": model.state_dict(),
            "train_config": {"run_dir": str(tmp_path / "run")},
            "epoch": 1,
            "metrics": {"test_loss": 1.0},
            "dataset": "celeba" if config.architecture == "face" else "fashion-mnist",
        },
    )
    result = export_checkpoint(checkpoint, tmp_path / "repository")
    assert result.status == "exported", result.detail


def test_even_a_one_block_face_decoder_has_batch_norm() -> None:
    config = ModelConfig(
        architecture="face", image_shape=(3, 64, 64), hidden_dims=(8,), latent_dim=4
    )
    projection = build_model(config).projection_activation
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in projection.modules())


def test_face_model_trains_on_a_batch_of_one() -> None:
    model = build_model(FACE).train()
    model(torch.rand(1, 3, 64, 64)).reconstruction.sum().backward()
    assert model.from_latent.weight.grad is not None

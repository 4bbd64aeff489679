"""Every registered architecture x kind, freshly trained for a few steps, exported and run in onnxruntime.

The parameter list is built from `training.models.ARCHITECTURES` at collection time, so architectures
added later are covered without editing this file. A small conv + BatchNorm model defined here (and
registered only while this module runs) proves convolutions and BatchNorm in eval mode export today,
at 1x28x28 and, like the face VAE, at 3x64x64 (whose data set export cannot load: parity falls back).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from export.onnx_export import OPSET, RANDOM_OPS
from export.parity import DEFAULT_TOLERANCE
from export.pipeline import export_checkpoint
from server.inference.sessions import ModelSessions, RuntimeOptions
from server.repository import ModelMetadata, read_metadata
from training.checkpoint import save_checkpoint, sha256_file
from training.data import load_idx_split
from training.evaluation import evaluate
from training.losses import negative_elbo
from training.models import ARCHITECTURES, KINDS, GenerativeModel, ModelConfig, build_model

CONV_BN = "test-conv-bn"
FACE_BN = "test-face-bn"
CPU = RuntimeOptions(providers=("CPUExecutionProvider",))
COMBOS = [(arch, kind) for arch in [*sorted(ARCHITECTURES), CONV_BN, FACE_BN] for kind in KINDS]
# Shapes tried, in order, for an architecture whose config this file cannot know: MNIST-like, faces.
CANDIDATE_SHAPES = ((1, 28, 28), (3, 64, 64))


class ConvBatchNormVAE(GenerativeModel):
    """(N, C, H, W) -> conv(stride 2) -> BatchNorm -> ReLU -> linear heads; the decoder mirrors it."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        channels, height, width = config.image_shape
        self.feature_shape = (8, height // 2, width // 2)
        features = int(np.prod(self.feature_shape))
        condition = config.num_classes
        self.encoder_body = nn.Sequential(
            nn.Conv2d(channels, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.to_mean = nn.Linear(features + condition, config.latent_dim)
        self.to_log_variance = (
            nn.Linear(features + condition, config.latent_dim) if self.variational else None
        )
        self.from_latent = nn.Linear(config.latent_dim + condition, features)
        self.decoder_body = nn.Sequential(
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.ConvTranspose2d(8, channels, 4, stride=2, padding=1),
        )

    def _condition(self, h: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        one_hot = self.one_hot(labels)
        return h if one_hot is None else torch.cat([h, one_hot], dim=1)

    def encode(self, x, labels=None):
        h = self._condition(self.encoder_body(x).flatten(1), labels)  # (N, 8*H/2*W/2 [+ K])
        mean = self.to_mean(h)
        if self.to_log_variance is None:
            return mean, None
        return mean, self.clamp_log_variance(self.to_log_variance(h))

    def decode_logits(self, z, labels=None):
        h = self.from_latent(self._condition(z, labels)).view(-1, *self.feature_shape)
        return self.decoder_body(h)  # (N, C, H, W); the base class's decode applies the sigmoid


class FaceBatchNormVAE(ConvBatchNormVAE):
    """The same layers, refusing anything but 64x64 RGB, as the face VAE does: exercises that shape."""

    def __init__(self, config: ModelConfig) -> None:
        if tuple(config.image_shape) != (3, 64, 64):
            raise ValueError(f"takes (3, 64, 64) images, not {config.image_shape}")
        super().__init__(config)


@pytest.fixture(scope="module", autouse=True)
def extra_models_registered():
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(ARCHITECTURES, CONV_BN, ConvBatchNormVAE)
        patch.setitem(ARCHITECTURES, FACE_BN, FaceBatchNormVAE)
        yield


def tiny_model(architecture: str, kind: str) -> GenerativeModel:
    """The smallest config of `architecture` we can build for `kind`, checked by one forward pass.

    Small layers first (for conv-like families hidden_dims are channels), then the family's defaults;
    each at the candidate image shapes.
    """
    extra = {"kind": kind, "num_classes": 10 if kind == "cvae" else 0}
    sizes = [{"hidden_dims": (32,) if architecture == "mlp" else (8, 16), "latent_dim": 4}, {}]
    errors = []
    for size in sizes:
        for shape in CANDIDATE_SHAPES:
            try:
                config = ModelConfig(architecture=architecture, image_shape=shape, **extra, **size)
                model = build_model(config)
                labels = torch.zeros(2, dtype=torch.long) if kind == "cvae" else None
                model(torch.rand(2, *shape), labels)
                return model
            except Exception as exc:  # this architecture does not take this config; try the next
                errors.append(f"{size} {shape}: {exc}")
    pytest.skip(f"{architecture} cannot be built as {kind}: {'; '.join(errors)}")


def real_images(mnist_dir: Path, shape: tuple[int, int, int], count: int):
    """MNIST test images resized and repeated to `shape`, with their labels."""
    test = load_idx_split("mnist", "test", mnist_dir)
    images = test.images[:count]
    if images.shape[1:] != shape:
        images = F.interpolate(images, size=shape[1:], mode="bilinear").repeat(1, shape[0], 1, 1)
    return images.clamp(0, 1), test.labels[:count]


def train_and_save(model: GenerativeModel, mnist_dir: Path, run_dir: Path, steps: int = 15) -> Path:
    """A few Adam steps on real images, then a checkpoint in the format vae-train writes."""
    torch.manual_seed(0)
    config = model.config
    images, labels = real_images(mnist_dir, config.image_shape, 256)
    labels = labels if config.num_classes else None
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for step in range(steps):
        index = slice(step % 3 * 64, step % 3 * 64 + 64)  # the first 192 images; 64 held out
        batch_labels = None if labels is None else labels[index]
        terms = negative_elbo(model(images[index], batch_labels), images[index], config.likelihood)
        optimiser.zero_grad()
        terms.loss.backward()
        optimiser.step()
    held_out = [(images[192:], torch.zeros(64, dtype=torch.long))]  # one batch of (images, labels)
    figures = evaluate(model, held_out, config.likelihood)
    mnist_shaped = tuple(config.image_shape) == (1, 28, 28)
    save_checkpoint(
        run_dir / "best.pt",
        {
            "model_config": config.to_dict(),
            "model_state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "train_config": {"run_dir": str(run_dir)},
            "epoch": 1,
            "step": steps,
            "metrics": {
                **{f"test_{k}": v for k, v in figures.items()},
                "test_elbo": -figures["loss"],
            },
            "dataset": "mnist" if mnist_shaped else "celeba",
        },
    )
    return run_dir / "best.pt"


@dataclass
class Exported:
    model: GenerativeModel  # in eval mode, the weights that were exported
    checkpoint: Path
    version_dir: Path
    metadata: ModelMetadata


def _export(request, tmp_path_factory, mnist_dir, precision: str) -> Exported:
    architecture, kind = request.param
    model = tiny_model(architecture, kind)
    run_dir = tmp_path_factory.mktemp("runs") / f"{architecture}-{kind}"
    checkpoint = train_and_save(model, mnist_dir, run_dir)
    repository = tmp_path_factory.mktemp("repo")
    result = export_checkpoint(checkpoint, repository, data_dir=mnist_dir, precision=precision)
    assert result.status == "exported", result.detail
    version_dir = repository / result.name / str(result.version)
    return Exported(model.eval(), checkpoint, version_dir, read_metadata(version_dir))


@pytest.fixture(scope="module", params=COMBOS, ids=lambda c: f"{c[0]}-{c[1]}")
def exported(request, tmp_path_factory, mnist_dir) -> Exported:
    return _export(request, tmp_path_factory, mnist_dir, "fp32")


@pytest.fixture(scope="module", params=COMBOS, ids=lambda c: f"{c[0]}-{c[1]}-fp16")
def exported_fp16(request, tmp_path_factory, mnist_dir) -> Exported:
    return _export(request, tmp_path_factory, mnist_dir, "fp16")


def _inputs(exported: Exported, count: int, seed: int = 1):
    config = exported.model.config
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, *config.image_shape, generator=generator)
    latents = torch.randn(count, config.latent_dim, generator=generator)
    labels = torch.arange(count) % config.num_classes if config.num_classes else None
    return images, latents, labels


def _runtime_vs_torch(exported: Exported, count: int) -> tuple[float, float]:
    """Largest |server runtime - PyTorch| over encoder outputs and decoder outputs, on new inputs."""
    runtime = ModelSessions(exported.version_dir, CPU)
    images, latents, labels = _inputs(exported, count)
    np_labels = None if labels is None else labels.numpy()
    with torch.no_grad():
        mean, log_variance = exported.model.encode(images, labels)
        decoded = exported.model.decode(latents, labels)
    onnx_mean, onnx_log_variance = runtime.encode(images.numpy(), np_labels)
    encoder_diff = float(np.abs(onnx_mean - mean.numpy()).max())
    if log_variance is not None:
        assert onnx_log_variance is not None
        encoder_diff = max(
            encoder_diff, float(np.abs(onnx_log_variance - log_variance.numpy()).max())
        )
    decoder_diff = float(np.abs(runtime.decode(latents.numpy(), np_labels) - decoded.numpy()).max())
    return encoder_diff, decoder_diff


def test_recorded_parity_is_within_the_fp32_tolerance(exported):
    parity = exported.metadata.parity
    worst = max(parity["encoder_max_abs_diff"], parity["decoder_max_abs_diff"])
    assert worst <= parity["tolerance"] == DEFAULT_TOLERANCE["fp32"]


@pytest.mark.parametrize("count", [1, 37])
def test_server_runtime_matches_pytorch_at_any_batch_size(exported, count):
    assert max(_runtime_vs_torch(exported, count)) <= 1e-4


def test_batch_axis_is_dynamic_in_both_graphs(exported):
    for name in ("encoder.onnx", "decoder.onnx"):
        graph = onnx.load(str(exported.version_dir / name)).graph
        batch_dims = [i.type.tensor_type.shape.dim[0] for i in [*graph.input, *graph.output]]
        assert all(d.dim_param and not d.HasField("dim_value") for d in batch_dims), name


def test_graphs_import_the_pinned_opset(exported):
    for name in ("encoder.onnx", "decoder.onnx"):
        graph = onnx.load(str(exported.version_dir / name))
        assert {o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")} == {OPSET}
    assert exported.metadata.opset == OPSET


def test_graphs_hold_no_random_op(exported):
    ops = set()
    for name in ("encoder.onnx", "decoder.onnx"):
        graph = onnx.load(str(exported.version_dir / name))
        ops |= {n.op_type for n in graph.graph.node}
        ops |= {n.op_type for f in graph.functions for n in f.node}
    assert not ops & RANDOM_OPS


def test_tensor_names_follow_the_kind(exported):
    config = exported.model.config
    tensors = exported.metadata.tensors
    label = ("label",) if config.kind == "cvae" else ()
    outputs = ("mean",) if config.kind == "ae" else ("mean", "log_variance")
    assert (tensors.encoder_inputs, tensors.encoder_outputs, tensors.decoder_inputs) == (
        ("image", *label),
        outputs,
        ("latent", *label),
    )


def test_model_json_records_the_checkpoint_sha256(exported):
    assert exported.metadata.checkpoint_sha256 == sha256_file(exported.checkpoint)


def test_model_json_records_the_test_elbo_terms_from_the_checkpoint(exported):
    document = torch.load(exported.checkpoint, weights_only=True)
    wanted = ("test_elbo", "test_loss", "test_reconstruction", "test_kl")
    assert {k: exported.metadata.metrics[k] for k in wanted} == pytest.approx(
        {k: document["metrics"][k] for k in wanted}
    )


def test_model_json_says_which_inputs_the_parity_check_used(exported):
    mnist_shaped = tuple(exported.model.config.image_shape) == (1, 28, 28)
    expected = "mnist test set" if mnist_shaped else "uniform noise: celeba not loadable here"
    assert exported.metadata.parity_inputs.startswith(expected)


def test_batchnorm_runs_with_its_running_statistics(exported):
    """In train mode BatchNorm would normalise by the batch; the graph must match eval mode only."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in exported.model.modules()):
        pytest.skip(f"{exported.model.config.architecture} has no BatchNorm")
    runtime = ModelSessions(exported.version_dir, CPU)
    _, latents, labels = _inputs(exported, 16)
    with torch.no_grad():  # a copy: a train-mode pass would also move the running statistics
        train_mode = copy.deepcopy(exported.model).train().decode(latents, labels)
    onnx_decoded = runtime.decode(latents.numpy(), None if labels is None else labels.numpy())
    assert float(np.abs(onnx_decoded - train_mode.numpy()).max()) > 1e-3


def test_fp16_graphs_keep_float32_inputs_and_outputs(exported_fp16):
    float32 = onnx.TensorProto.FLOAT
    for name in ("encoder.onnx", "decoder.onnx"):
        graph = onnx.load(str(exported_fp16.version_dir / name)).graph
        float_io = [v for v in [*graph.input, *graph.output] if v.name != "label"]
        assert all(v.type.tensor_type.elem_type == float32 for v in float_io), name


def test_fp16_graphs_store_their_weights_in_half_precision(exported_fp16):
    graph = onnx.load(str(exported_fp16.version_dir / "decoder.onnx")).graph
    float_types = {i.data_type for i in graph.initializer} - {onnx.TensorProto.INT64}
    assert float_types == {onnx.TensorProto.FLOAT16}


def test_fp16_parity_is_recorded_within_its_looser_tolerance(exported_fp16):
    meta = exported_fp16.metadata
    worst = max(meta.parity["encoder_max_abs_diff"], meta.parity["decoder_max_abs_diff"])
    assert (meta.precision, meta.parity["tolerance"]) == ("fp16", DEFAULT_TOLERANCE["fp16"])
    assert 0 < worst <= DEFAULT_TOLERANCE["fp16"]


def test_fp16_version_runs_in_the_server_runtime_close_to_pytorch(exported_fp16):
    assert max(_runtime_vs_torch(exported_fp16, 9)) <= DEFAULT_TOLERANCE["fp16"]


def test_fp16_export_is_named_apart_from_fp32(exported_fp16):
    assert exported_fp16.metadata.name.endswith("-fp16")

"""Export a model's encoder and decoder as two ONNX graphs with a dynamic batch axis, and check them.

No random op enters either graph: the encoder returns the posterior mean and log-variance, and the
server draws the reparameterisation noise itself.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from server.repository import TensorNames
from training.models import GenerativeModel

OPSET = 18  # pinned so graphs do not change with the exporter's default; recorded in model.json


class ParityError(ValueError):
    """ONNX outputs differ from PyTorch's by more than the tolerance; nothing was written."""


class EncoderGraph(nn.Module):
    """image (N, C, H, W) [, label (N,) int64] -> mean (N, D) [, log_variance (N, D)]."""

    def __init__(self, model: GenerativeModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, label: torch.Tensor | None = None):
        mean, log_variance = self.model.encode(image, label)
        return mean if log_variance is None else (mean, log_variance)


class DecoderGraph(nn.Module):
    """latent (N, D) [, label (N,) int64] -> image (N, C, H, W) in [0, 1]."""

    def __init__(self, model: GenerativeModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, latent: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.decode(latent, label)


def tensor_names(model: GenerativeModel) -> TensorNames:
    conditional = model.config.num_classes > 0
    extra = ("label",) if conditional else ()
    return TensorNames(
        encoder_inputs=("image", *extra),
        encoder_outputs=("mean", "log_variance") if model.variational else ("mean",),
        decoder_inputs=("latent", *extra),
        decoder_outputs=("image",),
    )


def _export(module: nn.Module, args: tuple, path: Path, inputs, outputs) -> None:
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    dynamic_shapes = tuple({0: batch} for _ in args)
    # The exporter reports progress on stdout and warns about its own internals; keep the CLI quiet.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            args,
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_shapes=dynamic_shapes,
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
        )
    assert program is not None
    program.save(str(path))
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    random_ops = {n.op_type for n in graph.graph.node} & {
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
    }
    if random_ops:
        raise ValueError(
            f"{path.name} contains random ops {sorted(random_ops)}; sampling is the server's job"
        )


def _example_inputs(model: GenerativeModel, batch: int) -> tuple[tuple, tuple]:
    config = model.config
    images = torch.rand(batch, *config.image_shape)
    latents = torch.randn(batch, config.latent_dim)
    if config.num_classes:
        labels = torch.arange(batch) % config.num_classes
        return (images, labels), (latents, labels)
    return (images,), (latents,)


def export_graphs(model: GenerativeModel, out_dir: Path) -> TensorNames:
    """Write encoder.onnx and decoder.onnx for `model` (in eval mode) into `out_dir`."""
    model = model.eval()
    names = tensor_names(model)
    encoder_args, decoder_args = _example_inputs(model, batch=2)
    _export(
        EncoderGraph(model),
        encoder_args,
        out_dir / "encoder.onnx",
        names.encoder_inputs,
        names.encoder_outputs,
    )
    _export(
        DecoderGraph(model),
        decoder_args,
        out_dir / "decoder.onnx",
        names.decoder_inputs,
        names.decoder_outputs,
    )
    return names


@dataclass
class ParityReport:
    """Largest absolute and relative differences between onnxruntime and PyTorch outputs."""

    encoder_max_abs: float
    encoder_max_rel: float
    decoder_max_abs: float
    decoder_max_rel: float
    batch: int

    def as_dict(self) -> dict[str, float]:
        return {
            "encoder_max_abs_diff": self.encoder_max_abs,
            "encoder_max_rel_diff": self.encoder_max_rel,
            "decoder_max_abs_diff": self.decoder_max_abs,
            "decoder_max_rel_diff": self.decoder_max_rel,
            "parity_batch": float(self.batch),
        }


def _differences(expected: list[np.ndarray], got: list[np.ndarray]) -> tuple[float, float]:
    max_abs = max_rel = 0.0
    for want, have in zip(expected, got, strict=True):
        diff = np.abs(want - have)
        max_abs = max(max_abs, float(diff.max()))
        max_rel = max(max_rel, float((diff / np.maximum(np.abs(want), 1e-3)).max()))
    return max_abs, max_rel


@torch.no_grad()
def check_parity(
    model: GenerativeModel,
    out_dir: Path,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    tolerance: float = 1e-4,
    seed: int = 0,
) -> ParityReport:
    """Run both graphs in onnxruntime (CPU) on real images and on N(0, I) latents, compare to PyTorch.

    Raises ParityError when the largest absolute difference exceeds `tolerance`.
    """
    model = model.eval()
    names = tensor_names(model)
    conditional = model.config.num_classes > 0
    label_feed = (
        {"label": labels.numpy().astype(np.int64)} if conditional and labels is not None else {}
    )
    encoder = ort.InferenceSession(
        str(out_dir / "encoder.onnx"), providers=["CPUExecutionProvider"]
    )
    decoder = ort.InferenceSession(
        str(out_dir / "decoder.onnx"), providers=["CPUExecutionProvider"]
    )

    torch_encoded = EncoderGraph(model)(images, labels if conditional else None)
    torch_encoded = list(torch_encoded) if isinstance(torch_encoded, tuple) else [torch_encoded]
    onnx_encoded = encoder.run(list(names.encoder_outputs), {"image": images.numpy(), **label_feed})
    enc_abs, enc_rel = _differences([t.numpy() for t in torch_encoded], onnx_encoded)

    latents = torch.randn(
        len(images), model.config.latent_dim, generator=torch.Generator().manual_seed(seed)
    )
    torch_decoded = model.decode(latents, labels if conditional else None).numpy()
    (onnx_decoded,) = decoder.run(["image"], {"latent": latents.numpy(), **label_feed})
    dec_abs, dec_rel = _differences([torch_decoded], [onnx_decoded])

    report = ParityReport(enc_abs, enc_rel, dec_abs, dec_rel, len(images))
    worst = max(enc_abs, dec_abs)
    if not worst <= tolerance:  # also catches NaN
        raise ParityError(
            f"ONNX differs from PyTorch by up to {worst:.3g} (encoder {enc_abs:.3g}, decoder "
            f"{dec_abs:.3g}), over the tolerance {tolerance:g}; the export was not written"
        )
    return report

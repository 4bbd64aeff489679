"""Parity of exported graphs: run them in onnxruntime and compare with PyTorch on the same inputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from export.onnx_export import EncoderGraph, tensor_names
from training.models import GenerativeModel

# Largest allowed |ONNX - PyTorch| by precision. float32 graphs differ from eager only by operation
# order (~1e-6 on these models); float16 carries 11 significant bits (~5e-4 relative per op), which
# compounds over a few layers to ~1e-3 on [0, 1] pixels and a few 1e-3 on latent means.
DEFAULT_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}


class ParityError(ValueError):
    """ONNX outputs differ from PyTorch's by more than the tolerance; nothing was written."""


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

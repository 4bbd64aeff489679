"""The two-stage prior's decoder as ONNX (prior_decoder.onnx: noise -> latent), its parity with
PyTorch, and the numpy/onnxruntime reference sampler that a server's two-stage Sample must equal."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from export.onnx_export import export_module
from export.parity import ParityError
from server.repository import PRIOR_DECODER_FILE, PRIOR_DECODER_TOLERANCE
from training.two_stage import SecondStageVAE, noise

PRIOR_DECODER_INPUT = "noise"  # (N, noise_dim) float32: N(0, T^2 I) draws
PRIOR_DECODER_OUTPUT = "latent"  # (N, latent_dim) float32: what decoder.onnx takes
PARITY_TEMPERATURES = (1.0, 2.0)  # typical draws, and the tails a high temperature reaches


class PriorDecoderGraph(nn.Module):
    """noise (N, noise_dim) -> latent (N, D): SecondStageVAE.generate, deterministic."""

    def __init__(self, second_stage: SecondStageVAE) -> None:
        super().__init__()
        self.second_stage = second_stage

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.second_stage.generate(noise)


def export_prior_decoder(second_stage: SecondStageVAE, out_dir: Path) -> Path:
    """Write prior_decoder.onnx (float32, dynamic batch, the pinned opset) into `out_dir`."""
    path = out_dir / PRIOR_DECODER_FILE
    example = torch.randn(2, second_stage.noise_dim, generator=torch.Generator().manual_seed(0))
    export_module(
        PriorDecoderGraph(second_stage.eval()),
        (example,),
        path,
        (PRIOR_DECODER_INPUT,),
        (PRIOR_DECODER_OUTPUT,),
    )
    return path


@dataclass
class PriorParity:
    """Largest differences between onnxruntime and PyTorch latents over the parity draws."""

    max_abs_diff: float
    max_rel_diff: float
    batch: int
    tolerance: float

    def as_dict(self) -> dict[str, float]:
        return {
            "max_abs_diff": self.max_abs_diff,
            "max_rel_diff": self.max_rel_diff,
            "batch": self.batch,
            "tolerance": self.tolerance,
        }


@torch.no_grad()
def check_prior_parity(
    second_stage: SecondStageVAE,
    path: Path,
    batch: int = 256,
    tolerance: float = PRIOR_DECODER_TOLERANCE,
) -> PriorParity:
    """Run prior_decoder.onnx in onnxruntime (CPU) on the reference sampler's noise at each of
    PARITY_TEMPERATURES and compare with PyTorch; ParityError beyond `tolerance`."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    max_abs = max_rel = 0.0
    for seed, temperature in enumerate(PARITY_TEMPERATURES):
        feed = noise(batch, second_stage.noise_dim, seed, temperature)
        want = second_stage.eval().generate(torch.from_numpy(feed)).numpy()
        (have,) = session.run([PRIOR_DECODER_OUTPUT], {PRIOR_DECODER_INPUT: feed})
        diff = np.abs(want - have)
        max_abs = max(max_abs, float(diff.max()))
        max_rel = max(max_rel, float((diff / np.maximum(np.abs(want), 1e-3)).max()))
    report = PriorParity(max_abs, max_rel, batch * len(PARITY_TEMPERATURES), tolerance)
    if not max_abs <= tolerance:  # also catches NaN
        raise ParityError(
            f"{path.name} differs from PyTorch by up to {max_abs:.3g}, over the tolerance "
            f"{tolerance:g}; the export was not written"
        )
    return report


def describe_two_stage(
    second_stage: SecondStageVAE, sha256: str, parity: PriorParity, summary: dict[str, Any]
) -> dict[str, Any]:
    """model.json's two_stage block: how to run the graph, its checks, the second stage's figures."""
    figures = ("hidden_dims", "epochs", "fit_to", "gamma", "train_images", "heldout_nelbo")
    return {
        "sha256": sha256,
        "input": PRIOR_DECODER_INPUT,
        "output": PRIOR_DECODER_OUTPUT,
        "noise_dim": second_stage.noise_dim,
        "latent_dim": second_stage.dim,
        "parity": parity.as_dict(),
        **{k: summary[k] for k in figures if k in summary},
    }


def reference_two_stage_sample(
    prior_decoder: Path | bytes,
    count: int,
    seed: int,
    temperature: float = 1.0,
    input_name: str = PRIOR_DECODER_INPUT,
    output_name: str = PRIOR_DECODER_OUTPUT,
) -> np.ndarray:
    """The two-stage prior's latents (count, D) float32 for a Sample of `count` with `seed` and
    `temperature`, from the ONNX file alone (numpy and onnxruntime): noise = Generator(Philox(key=
    seed)).standard_normal((count, noise_dim), dtype=float32), times float32(temperature) when it is
    not 1 (seed scheme 2, as server/dataplane/latent_space.py draws N(0, I)), then the graph. Images
    are decoder.onnx of these."""
    source = str(prior_decoder) if isinstance(prior_decoder, Path) else prior_decoder
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    (graph_input,) = session.get_inputs()
    noise_dim = int(graph_input.shape[1])
    u = noise(count, noise_dim, seed, temperature)  # (count, noise_dim), as the server draws it
    (latents,) = session.run([output_name], {input_name: u})
    return latents

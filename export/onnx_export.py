"""Export a model's encoder and decoder as two ONNX graphs with a dynamic batch axis, and check them.

No random op enters either graph: the encoder returns the posterior mean and log-variance, and the
server draws the reparameterisation noise itself.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from server.repository import TensorNames
from training.models import GenerativeModel

OPSET = 18  # pinned so graphs do not change with the exporter's default; recorded in model.json
GRAPH_FILES = ("encoder.onnx", "decoder.onnx")
RANDOM_OPS = frozenset(
    {
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
    }
)


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


def export_module(module: nn.Module, args: tuple, path: Path, inputs, outputs) -> None:
    """`module` as ONNX at the pinned opset with a dynamic batch axis on every input, checked."""
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
    check_graph(path)


def check_graph(path: Path) -> onnx.ModelProto:
    """onnx.checker (full, with shape inference), the pinned opset, and no random op anywhere."""
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    opsets = {o.domain or "ai.onnx": o.version for o in graph.opset_import}
    if opsets.get("ai.onnx") != OPSET:
        raise ValueError(f"{path.name} imports opset {opsets.get('ai.onnx')}, expected {OPSET}")
    nodes = [*graph.graph.node, *(n for f in graph.functions for n in f.node)]
    random_ops = {n.op_type for n in nodes} & RANDOM_OPS
    if random_ops:
        raise ValueError(
            f"{path.name} contains random ops {sorted(random_ops)}; sampling is the server's job"
        )
    return graph


def convert_to_fp16(directory: Path) -> None:
    """Rewrite both graphs in `directory` with float16 weights and arithmetic, in place.

    Inputs and outputs stay float32 (casts at the edges), so the server feeds an fp16 version exactly
    as it feeds an fp32 one. The int64 label input and shape constants are left alone by the converter.
    """
    from onnxconverter_common import float16  # imported here: only fp16 exports need it

    for file_name in GRAPH_FILES:
        path = directory / file_name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # it warns about values it clamps to the fp16 range
            half = float16.convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
        _retarget_float_casts(half)
        onnx.save(half, str(path))
        check_graph(path)


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
    export_module(
        EncoderGraph(model),
        encoder_args,
        out_dir / "encoder.onnx",
        names.encoder_inputs,
        names.encoder_outputs,
    )
    export_module(
        DecoderGraph(model),
        decoder_args,
        out_dir / "decoder.onnx",
        names.decoder_inputs,
        names.decoder_outputs,
    )
    return names


def _retarget_float_casts(graph: onnx.ModelProto) -> None:
    """Make the graph's own casts to float32 (e.g. one-hot labels) cast to float16 instead.

    The converter retypes every float tensor but leaves Cast's `to` attribute alone, so a one-hot
    label would meet float16 weights as float32 and fail type inference. Casts that feed a graph
    output are the converter's float32 edges and stay as they are.
    """
    outputs = {o.name for o in graph.graph.output}
    for node in graph.graph.node:
        if node.op_type != "Cast" or set(node.output) & outputs:
            continue
        for attribute in node.attribute:
            if attribute.name == "to" and attribute.i == onnx.TensorProto.FLOAT:
                attribute.i = onnx.TensorProto.FLOAT16

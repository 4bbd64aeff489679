"""The Open Inference Protocol's view of a model: each model `<name>` is three v2 models,
`<name>-encoder`, `<name>-decoder` and `<name>-sampler`; their tensors, and request tensors read into
numpy arrays with the checks vae.v1 makes (shapes, sizes, NaN), each refusal naming what is expected."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from server.codecs import element_count
from server.errors import InvalidArgument
from server.proto_gen.inference import grpc_service_pb2 as pb
from server.repository import ModelMetadata

ENCODER, DECODER, SAMPLER = "encoder", "decoder", "sampler"
ROLES = (ENCODER, DECODER, SAMPLER)

# The datatypes these models use: numpy dtype (little-endian, as raw contents are) and the typed field
# of InferTensorContents that carries them.
DTYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype("<f4"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT64": np.dtype("<u8"),
}
CONTENTS_FIELDS = {
    "FP32": "fp32_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT64": "uint64_contents",
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # a key of DTYPES
    shape: tuple[int, ...]  # -1: any size
    optional: bool = False

    def describe(self) -> str:
        return f"{self.name} {self.datatype} {list(self.shape)}"

    def fits(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.shape) and all(
            want in (-1, got) for got, want in zip(shape, self.shape, strict=True)
        )


@dataclass(frozen=True)
class Signature:
    """One v2 model's tensors. `batched`: the first dimension of every tensor is the row count."""

    role: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batched: bool
    input_by_name: Mapping[str, TensorSpec] = field(init=False, compare=False)
    output_names: tuple[str, ...] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_by_name", {spec.name: spec for spec in self.inputs})
        object.__setattr__(self, "output_names", tuple(spec.name for spec in self.outputs))


def describe(specs: Iterable[TensorSpec]) -> str:
    return ", ".join(spec.describe() for spec in specs)


@functools.lru_cache(maxsize=1024)  # bounded: the name comes from the caller
def split_name(v2_name: str) -> tuple[str, str] | None:
    """`<name>-decoder` -> (`<name>`, "decoder"); None for a name without a known role suffix."""
    base, dash, role = v2_name.rpartition("-")
    return (base, role) if dash and base and role in ROLES else None


def v2_names(model: str) -> list[str]:
    return [f"{model}-{role}" for role in ROLES]


def signature(meta: ModelMetadata, role: str) -> Signature:
    return _signature(
        role,
        meta.latent_dim,
        tuple(meta.image_shape),
        meta.conditional,
        len(meta.tensors.encoder_outputs) > 1,  # autoencoders have no log_variance
    )


@functools.lru_cache(maxsize=256)
def _signature(
    role: str, dim: int, image_shape: tuple[int, ...], conditional: bool, variational: bool
) -> Signature:
    image = TensorSpec("image", "FP32", (-1, *image_shape))
    latent = TensorSpec("latent", "FP32", (-1, dim))
    labels = (TensorSpec("label", "INT64", (-1,)),) if conditional else ()
    if role == DECODER:
        return Signature(role, (latent, *labels), (image,), batched=True)
    if role == ENCODER:
        outputs = [TensorSpec("mean", "FP32", (-1, dim))]
        if variational:
            outputs.append(TensorSpec("log_variance", "FP32", (-1, dim)))
        return Signature(role, (image, *labels), tuple(outputs), batched=True)
    inputs = (
        TensorSpec("count", "INT32", (1,)),
        TensorSpec("seed", "UINT64", (1,), optional=True),
        TensorSpec("temperature", "FP32", (1,), optional=True),
        *(TensorSpec("label", "INT64", (1,)) for _ in labels),
    )
    return Signature(role, inputs, (image, latent), batched=False)


def read_inputs(
    request: pb.ModelInferRequest, sig: Signature, max_elements: int
) -> dict[str, np.ndarray]:
    """Every input tensor of the request as a numpy array of its spec's shape and dtype; raw contents
    are read in place (np.frombuffer), typed contents converted once."""
    model = request.model_name
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(
            f"{model}: raw_input_contents holds {len(raw)} tensors for {len(request.inputs)} "
            "inputs; send one entry per input, in the order of inputs"
        )
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        spec = sig.input_by_name.get(name)
        if spec is None:
            raise InvalidArgument(
                f"{model}: no input named {name!r}; its inputs are {describe(sig.inputs)}"
            )
        if name in arrays:
            raise InvalidArgument(f"{model}: input {name!r} is sent twice; send each input once")
        if tensor.datatype != spec.datatype:
            raise InvalidArgument(
                f"{model}: input {name!r} has datatype {tensor.datatype or '(empty)'}; "
                f"expected {spec.datatype}"
            )
        shape = tuple(tensor.shape)
        count = element_count(shape, f"{model}: input {name!r}", max_elements)
        if not spec.fits(shape):
            raise InvalidArgument(
                f"{model}: input {name!r} has shape {list(shape)}; expected {list(spec.shape)} "
                "(-1: any size)"
            )
        dtype = DTYPES[spec.datatype]
        if raw:
            if tensor.HasField("contents"):
                raise InvalidArgument(
                    f"{model}: input {name!r} carries contents while raw_input_contents is set; "
                    "send every input one way or the other"
                )
            data = raw[index]
            if len(data) != count * dtype.itemsize:
                raise InvalidArgument(
                    f"{model}: input {name!r} of shape {list(shape)} needs "
                    f"{count * dtype.itemsize} bytes of little-endian {spec.datatype} in "
                    f"raw_input_contents[{index}], got {len(data)}"
                )
            array = np.frombuffer(data, dtype=dtype).reshape(shape)
        else:
            where = CONTENTS_FIELDS[spec.datatype]
            values = getattr(tensor.contents, where)
            if len(values) != count:
                raise InvalidArgument(
                    f"{model}: input {name!r} of shape {list(shape)} needs {count} values in "
                    f"contents.{where}, got {len(values)}"
                )
            array = np.array(values, dtype=dtype).reshape(shape)
        if dtype.kind == "f" and not np.isfinite(array).all():
            raise InvalidArgument(
                f"{model}: input {name!r} contains NaN or infinite values; only finite values "
                "are allowed"
            )
        arrays[name] = array
    if len(arrays) < len(sig.inputs):
        missing = [spec for spec in sig.inputs if not spec.optional and spec.name not in arrays]
        if missing:
            raise InvalidArgument(
                f"{model}: missing input {describe(missing)}; its inputs are {describe(sig.inputs)}"
            )
    return arrays


def requested_outputs(request: pb.ModelInferRequest, sig: Signature) -> tuple[str, ...]:
    """The outputs to send back: those the request names, in its order, or else all of them."""
    if not request.outputs:
        return sig.output_names
    names = tuple(output.name for output in request.outputs)
    for name in names:
        if name not in sig.output_names:
            raise InvalidArgument(
                f"{request.model_name}: no output named {name!r}; its outputs are "
                f"{describe(sig.outputs)}"
            )
    return names


def add_output(response: pb.ModelInferResponse, name: str, array: np.ndarray) -> None:
    """One FP32 output: its metadata in `outputs`, its bytes (one copy) in raw_output_contents."""
    data = np.ascontiguousarray(array, dtype=DTYPES["FP32"])  # no copy: already float32, C order
    tensor = response.outputs.add()
    tensor.name = name
    tensor.datatype = "FP32"
    tensor.shape.extend(data.shape)
    response.raw_output_contents.append(data.tobytes())

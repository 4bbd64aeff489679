"""Open Inference Protocol tensors over gRPC: request tensors (raw or typed contents) read into numpy
arrays with the checks vae.v1 makes (shapes, sizes, NaN), each refusal naming what is expected, and
outputs written back as raw contents."""

from __future__ import annotations

import numpy as np

from server.codecs import element_count
from server.errors import InvalidArgument
from server.fronts.v2_models import DTYPES, Signature, describe
from server.proto_gen.inference import grpc_service_pb2 as pb

# The typed field of InferTensorContents that carries each datatype.
CONTENTS_FIELDS = {
    "FP32": "fp32_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT64": "uint64_contents",
}


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

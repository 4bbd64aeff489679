"""Open Inference Protocol tensors over gRPC: request tensors (raw or typed contents) read into numpy
arrays with the checks vae.v1 makes (shapes, sizes, NaN), each refusal naming what is expected, and
outputs written back as raw contents."""

from __future__ import annotations

import numpy as np

from server.errors import InvalidArgument
from server.fronts.v2_models import DTYPES, Signature
from server.fronts.v2_tensors import (
    check_complete,
    check_finite,
    check_input,
    from_bytes,
    from_values,
)
from server.fronts.v2_tensors import requested_outputs as pick_outputs
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
        shape = tuple(tensor.shape)
        spec, count = check_input(model, sig, name, tensor.datatype, shape, arrays, max_elements)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidArgument(
                    f"{model}: input {name!r} carries contents while raw_input_contents is set; "
                    "send every input one way or the other"
                )
            where = f"raw_input_contents[{index}]"
            array = from_bytes(model, spec, shape, count, raw[index], where)
        else:
            field = CONTENTS_FIELDS[spec.datatype]
            values = getattr(tensor.contents, field)
            array = from_values(model, spec, shape, count, values, f"contents.{field}")
        check_finite(model, name, array)
        arrays[name] = array
    if len(arrays) < len(sig.inputs):
        check_complete(model, sig, arrays)
    return arrays


def requested_outputs(request: pb.ModelInferRequest, sig: Signature) -> tuple[str, ...]:
    """The outputs to send back: those the request names, in its order, or else all of them."""
    return pick_outputs(request.model_name, sig, [output.name for output in request.outputs])


def add_output(response: pb.ModelInferResponse, name: str, array: np.ndarray) -> None:
    """One FP32 output: its metadata in `outputs`, its bytes (one copy) in raw_output_contents."""
    data = np.ascontiguousarray(array, dtype=DTYPES["FP32"])  # no copy: already float32, C order
    tensor = response.outputs.add()
    tensor.name = name
    tensor.datatype = "FP32"
    tensor.shape.extend(data.shape)
    response.raw_output_contents.append(data.tobytes())

"""Open Inference Protocol REST bodies: JSON tensors and Triton's binary tensor extension.

A binary request is a JSON header of `Inference-Header-Content-Length` bytes followed by the raw
little-endian data of every input whose `parameters.binary_data_size` is set, in the order of
`inputs`. A response carries an output as raw bytes after its JSON header when the output asks for
it (`parameters.binary_data: true`) or the request does for all (`parameters.binary_data_output`);
then its `Inference-Header-Content-Length` says where the JSON ends.
https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_binary_data.md
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from server.errors import InvalidArgument
from server.fronts.http.exchange import JSON, OCTET_STREAM, HttpResponse, dump_json, json_object
from server.fronts.v2_models import DTYPES, Signature
from server.fronts.v2_tensors import (
    check_complete,
    check_finite,
    check_input,
    from_bytes,
    from_values,
    requested_outputs,
)

HEADER_LENGTH = "inference-header-content-length"


@dataclass(frozen=True)
class InferRequest:
    header: dict[str, Any]  # the JSON part
    binary: memoryview  # the bytes after it (empty for a JSON-only request)


def split_body(body: bytes, header_length: str | None) -> InferRequest:
    """The JSON header and the binary data of an infer request body."""
    if header_length is None:
        return InferRequest(json_object(body), memoryview(b""))
    if not (header_length.isascii() and header_length.isdigit()):
        raise InvalidArgument(
            f"Inference-Header-Content-Length must be a byte count, got {header_length!r}"
        )
    length = int(header_length)
    if length > len(body):
        raise InvalidArgument(
            f"Inference-Header-Content-Length {length} is more than the body's {len(body)} "
            "bytes; it must be the length of the JSON part at the start of the body"
        )
    return InferRequest(json_object(body[:length], "the JSON header"), memoryview(body)[length:])


def _field(entry: dict[str, Any], key: str, kind: type, where: str, what: str) -> Any:
    value = entry.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise InvalidArgument(f"{where}: {key!r} must be {what}, got {value!r}")
    return value


def _parameters(entry: dict[str, Any], where: str) -> dict[str, Any]:
    value = entry.get("parameters", {})
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where}: 'parameters' must be a JSON object, got {value!r}")
    return value


def read_inputs(
    model: str, sig: Signature, request: InferRequest, max_elements: int
) -> dict[str, np.ndarray]:
    """Every input tensor as an array of its spec's shape and dtype, from JSON `data` or from the
    binary part (read in place); refusals name the input and what was expected."""
    inputs = request.header.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidArgument(
            f"{model}: the request needs 'inputs', a list of tensors like "
            '{"name": "latent", "shape": [1, 8], "datatype": "FP32", "data": [...]}'
        )
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    binary = request.binary
    for index, entry in enumerate(inputs):
        where = f"{model}: inputs[{index}]"
        if not isinstance(entry, dict):
            raise InvalidArgument(f"{where} must be a JSON object, got {entry!r}")
        name = _field(entry, "name", str, where, "a string")
        datatype = _field(entry, "datatype", str, where, "a string such as FP32")
        shape_list = _field(entry, "shape", list, where, "a list of integers")
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape_list):
            raise InvalidArgument(f"{where}: 'shape' must be a list of integers, got {shape_list}")
        shape = tuple(shape_list)
        spec, count = check_input(model, sig, name, datatype, shape, arrays, max_elements)
        size = _parameters(entry, where).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidArgument(
                    f"{where}: binary_data_size must be a byte count, got {size!r}"
                )
            if "data" in entry:
                raise InvalidArgument(
                    f"{model}: input {name!r} has both 'data' and binary_data_size; send one"
                )
            if offset + size > len(binary):
                raise InvalidArgument(
                    f"{model}: input {name!r} needs bytes {offset}..{offset + size} of the "
                    f"binary data, which holds {len(binary)}; binary_data_size must match the "
                    "data sent after the JSON header"
                )
            chunk = binary[offset : offset + size]
            offset += size
            array = from_bytes(model, spec, shape, count, chunk, "its binary data")  # type: ignore[arg-type]
        elif "data" in entry:
            array = from_values(model, spec, shape, count, entry["data"], "'data'")
        else:
            raise InvalidArgument(
                f"{model}: input {name!r} has no 'data' and no binary_data_size parameter"
            )
        check_finite(model, name, array)
        arrays[name] = array
    if offset != len(binary):
        raise InvalidArgument(
            f"{model}: the body holds {len(binary)} bytes of binary data but the inputs' "
            f"binary_data_size add up to {offset}"
        )
    check_complete(model, sig, arrays)
    return arrays


def requested(model: str, sig: Signature, header: dict[str, Any]) -> list[tuple[str, bool]]:
    """(output name, as binary?) for each output to send, in order."""
    default_binary = _parameters(header, model).get("binary_data_output", False)
    if not isinstance(default_binary, bool):
        raise InvalidArgument(f"{model}: parameter binary_data_output must be true or false")
    outputs = header.get("outputs", [])
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        raise InvalidArgument(
            f"{model}: 'outputs' must be a list of objects like "
            '{"name": "image", "parameters": {"binary_data": true}}'
        )
    binary_of = {}
    for entry in outputs:
        flag = _parameters(entry, f"{model}: output {entry['name']!r}").get(
            "binary_data", default_binary
        )
        if not isinstance(flag, bool):
            raise InvalidArgument(f"{model}: output {entry['name']!r}: binary_data must be a bool")
        binary_of[entry["name"]] = flag
    names = requested_outputs(model, sig, [o["name"] for o in outputs])
    return [(name, binary_of.get(name, default_binary)) for name in names]


def infer_response(
    header: dict[str, Any],
    outputs: dict[str, np.ndarray],
    wanted: list[tuple[str, bool]],
) -> HttpResponse:
    """The response body: `header` (model_name, model_version, id, parameters) plus the outputs."""
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, binary in wanted:
        array = np.ascontiguousarray(outputs[name], dtype=DTYPES["FP32"])
        entry: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(array.shape)}
        if binary:
            data = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            blobs.append(data)
        else:
            entry["data"] = array.ravel()  # row-major, as the protocol's flat data is
        entries.append(entry)
    text = dump_json({**header, "outputs": entries})
    if not blobs:
        return HttpResponse(200, text, JSON)
    return HttpResponse(
        200,
        b"".join((text, *blobs)),
        OCTET_STREAM,
        {"Inference-Header-Content-Length": str(len(text))},
    )

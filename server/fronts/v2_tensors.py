"""The checks every Open Inference Protocol front makes on request tensors and parameters (gRPC raw or
typed contents, REST JSON data or binary data): names, datatypes, shapes, sizes, NaN, missing inputs,
requested outputs and the sampler's parameters, each refusal naming what is expected."""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence
from typing import Any

import numpy as np

from server.codecs import element_count
from server.errors import InvalidArgument
from server.fronts.v2_models import DTYPES, Signature, TensorSpec, describe

# JSON values accepted for each datatype, as numpy kinds: an integer tensor takes no fractions.
_KINDS = {"FP32": "biuf", "INT32": "biu", "INT64": "biu", "UINT64": "biu"}


def check_input(
    model: str,
    sig: Signature,
    name: str,
    datatype: str,
    shape: tuple[int, ...],
    seen: Container[str],
    max_elements: int,
) -> tuple[TensorSpec, int]:
    """One input's header (name, datatype, shape) against the model's signature; returns its spec and
    element count. `seen` holds the inputs already read, so an input sent twice is refused."""
    spec = sig.input_by_name.get(name)
    if spec is None:
        raise InvalidArgument(
            f"{model}: no input named {name!r}; its inputs are {describe(sig.inputs)}"
        )
    if name in seen:
        raise InvalidArgument(f"{model}: input {name!r} is sent twice; send each input once")
    if datatype != spec.datatype:
        raise InvalidArgument(
            f"{model}: input {name!r} has datatype {datatype or '(empty)'}; "
            f"expected {spec.datatype}"
        )
    count = element_count(shape, f"{model}: input {name!r}", max_elements)
    if not spec.fits(shape):
        raise InvalidArgument(
            f"{model}: input {name!r} has shape {list(shape)}; expected {list(spec.shape)} "
            "(-1: any size)"
        )
    return spec, count


def from_bytes(
    model: str, spec: TensorSpec, shape: tuple[int, ...], count: int, data: bytes, where: str
) -> np.ndarray:
    """Little-endian bytes as the input's array (no copy); `where` names where the bytes came from."""
    dtype = DTYPES[spec.datatype]
    if len(data) != count * dtype.itemsize:
        raise InvalidArgument(
            f"{model}: input {spec.name!r} of shape {list(shape)} needs "
            f"{count * dtype.itemsize} bytes of little-endian {spec.datatype} in {where}, "
            f"got {len(data)}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def from_values(
    model: str, spec: TensorSpec, shape: tuple[int, ...], count: int, values: Any, where: str
) -> np.ndarray:
    """Typed values (a protobuf repeated field, or JSON numbers, flat or nested in row-major order)
    as the input's array, refusing values of the wrong kind or out of the datatype's range."""
    dtype = DTYPES[spec.datatype]
    try:
        loose = np.asarray(values)
    except (ValueError, TypeError, OverflowError):
        loose = np.asarray([], dtype=object)
    wrong = f"{model}: input {spec.name!r} needs {spec.datatype} values in {where}"
    if loose.dtype.kind not in _KINDS[spec.datatype] and loose.size:
        raise InvalidArgument(
            f"{wrong}: a flat or nested list of {count} "
            f"{'numbers' if spec.datatype == 'FP32' else 'integers'}, got something else"
        )
    if loose.size != count:
        raise InvalidArgument(
            f"{model}: input {spec.name!r} of shape {list(shape)} needs {count} values in "
            f"{where}, got {loose.size}"
        )
    if dtype.kind in "iu" and loose.size and loose.dtype.kind in "iu":
        info = np.iinfo(dtype)
        low, high = int(loose.min()), int(loose.max())
        if low < info.min or high > info.max:
            raise InvalidArgument(
                f"{wrong}: {low if low < info.min else high} is out of {spec.datatype}'s range "
                f"{info.min}..{info.max}"
            )
    return loose.astype(dtype, copy=False).reshape(shape)


def check_finite(model: str, name: str, array: np.ndarray) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidArgument(
            f"{model}: input {name!r} contains NaN or infinite values; only finite values "
            "are allowed"
        )


def check_complete(model: str, sig: Signature, arrays: Container[str]) -> None:
    """Every required input is there."""
    missing = [spec for spec in sig.inputs if not spec.optional and spec.name not in arrays]
    if missing:
        raise InvalidArgument(
            f"{model}: missing input {describe(missing)}; its inputs are {describe(sig.inputs)}"
        )


def requested_outputs(model: str, sig: Signature, names: Sequence[str]) -> tuple[str, ...]:
    """The outputs to send back: those the request names, in its order, or else all of them."""
    if not names:
        return sig.output_names
    for name in names:
        if name not in sig.output_names:
            raise InvalidArgument(
                f"{model}: no output named {name!r}; its outputs are {describe(sig.outputs)}"
            )
    return tuple(names)


def bool_parameter(model: str, name: str, value: Any, how: str = "bool") -> bool:
    """A request parameter that must be a boolean; `how` names that type in the front's words."""
    if not isinstance(value, bool):
        raise InvalidArgument(f"{model}: parameter {name} must be a {how}, got {value!r}")
    return value


def string_parameter(
    model: str, name: str, value: Any, allowed: Iterable[str], how: str = "string"
) -> str:
    """A request parameter that must be a string; the data plane checks which strings it accepts."""
    if not isinstance(value, str):
        raise InvalidArgument(
            f"{model}: parameter {name} must be a {how}, one of {', '.join(allowed)}; got {value!r}"
        )
    return value

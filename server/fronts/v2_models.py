"""The Open Inference Protocol's view of a model, whichever front serves it: each model `<name>` is
three v2 models, `<name>-encoder`, `<name>-decoder` and `<name>-sampler`, with these tensors."""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from server.errors import InvalidArgument, NotFound
from server.inference.served_model import ServedModel
from server.inference.store import ModelStore
from server.repository import ModelMetadata

ENCODER, DECODER, SAMPLER = "encoder", "decoder", "sampler"
ROLES = (ENCODER, DECODER, SAMPLER)
SERVER_NAME = "vae-serve"
# Only what is served in full: the repository index is served, but Triton's "model_repository"
# extension also means load and unload, which this server does not offer.
EXTENSIONS = ("model_configuration",)
# The encoder and decoder are ONNX graphs in onnxruntime; the sampler draws the prior in numpy first.
PLATFORMS = {ENCODER: "onnxruntime_onnx", DECODER: "onnxruntime_onnx", SAMPLER: "vae_sampler"}

# The datatypes these models use, as numpy dtypes (little-endian, as raw and binary tensors are).
DTYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype("<f4"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT64": np.dtype("<u8"),
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


def version_number(version: str) -> int:
    """A v2 model_version as the store's number: empty is 0 (the highest loaded)."""
    if not version:
        return 0
    if version.isascii() and version.isdigit() and int(version) > 0:
        return int(version)
    raise InvalidArgument(
        f"model_version must be empty (the highest loaded) or a positive integer, got {version!r}"
    )


def server_version() -> str:
    try:
        return importlib.metadata.version("vae-service")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def resolve(store: ModelStore, name: str, version: str) -> ServedModel:
    """The model version a v2 name and version select; NOT_FOUND lists the v2 names."""
    number = version_number(version)
    parts = split_name(name)
    if parts is not None:
        try:
            return store.get(parts[0], number)
        except NotFound:
            versions = store.versions(parts[0])
            if versions:
                raise NotFound(
                    f"model {name!r} has no version {number}; loaded versions are {versions}"
                ) from None
    names = [v2 for model in store.names() for v2 in v2_names(model)]
    raise NotFound(f"unknown model {name!r}; models are {', '.join(names)}")


def role_signature(model: ServedModel, name: str) -> Signature:
    """The signature of the v2 model `name`, which resolve() found as `model`."""
    parts = split_name(name)
    assert parts is not None  # resolve() accepted this name
    return signature(model.metadata, parts[1])

"""Checkpoints as plain dicts of tensors and primitives, loadable with torch.load(weights_only=True)."""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from training.models import GenerativeModel, ModelConfig, build_model

CHECKPOINT_FORMAT = "vae-service-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A file is not a readable checkpoint of this project; the message says why."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically: a crash mid-write never leaves a truncated checkpoint under `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **payload}
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(document, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load and validate a checkpoint without unpickling arbitrary objects. Anything that is not a
    checkpoint vae-train wrote raises CheckpointError with one line in this project's words."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    document = _read_torch_file(path)
    if not isinstance(document, dict) or document.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: a PyTorch file, but not a checkpoint written by vae-train "
            f"(expected format {CHECKPOINT_FORMAT!r})"
        )
    if int(document.get("format_version", 0)) > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {document['format_version']} is newer than this code reads "
            f"({CHECKPOINT_VERSION})"
        )
    for key in ("model_config", "model_state"):
        if key not in document:
            raise CheckpointError(f"{path}: checkpoint has no {key!r}")
    return document


def _read_torch_file(path: Path) -> Any:
    """torch.load(weights_only=True) of a file that is first checked to be a whole zip archive, the
    format torch.save has written since PyTorch 1.6: PyTorch's own errors for other files range from
    a KeyError to advice about loading code it would then run, so none of its text is passed on."""
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(
            f"{path}: empty file (0 bytes), not a checkpoint; was it copied or written while "
            "training was still saving it? vae-train replaces its checkpoints in one step"
        )
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head != b"PK\x03\x04":
        kind = "a pickle stream" if head[:1] == b"\x80" else "neither a zip archive nor a pickle"
        raise CheckpointError(
            f"{path}: not a vae-train checkpoint ({kind}; vae-train writes PyTorch's zip format); "
            "it was not loaded"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError):
        damaged = "the archive's index"
    if damaged is not None:
        raise CheckpointError(
            f"{path}: truncated or corrupt ({size} bytes; {damaged} cannot be read): copy or "
            "write the checkpoint again"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: holds Python objects besides tensors and plain values, which this project "
            "refuses to load because loading them could run code; not a vae-train checkpoint"
        ) from None
    except Exception as exc:  # anything else PyTorch trips over inside a well-formed archive
        raise CheckpointError(
            f"{path}: a zip archive that PyTorch cannot read as a checkpoint "
            f"({type(exc).__name__}); not a vae-train checkpoint, or a damaged one"
        ) from None


def model_from_checkpoint(document: dict[str, Any]) -> GenerativeModel:
    """Rebuild the model in eval mode with its trained weights."""
    config = ModelConfig.from_dict(document["model_config"])
    model = build_model(config)
    try:
        model.load_state_dict(document["model_state"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights do not fit {config}: {exc}") from exc
    return model.eval()

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
    """Load and validate a checkpoint without unpickling arbitrary objects."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        document = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (corrupt, truncated, or it holds objects "
            f"that weights_only loading refuses): {exc}"
        ) from exc
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


def model_from_checkpoint(document: dict[str, Any]) -> GenerativeModel:
    """Rebuild the model in eval mode with its trained weights."""
    config = ModelConfig.from_dict(document["model_config"])
    model = build_model(config)
    try:
        model.load_state_dict(document["model_state"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights do not fit {config}: {exc}") from exc
    return model.eval()

"""Export one checkpoint, or every checkpoint under a directory, into a model repository."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

from export.onnx_export import OPSET, check_parity, export_graphs
from export.writer import existing_sha256, write_version
from server.repository import ModelMetadata, validate_model_name
from training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, sha256_file
from training.data import DatasetNotFound, load_idx_split


@dataclass
class ExportResult:
    checkpoint: Path
    name: str
    status: str  # exported, skipped or failed
    version: int = 0
    detail: str = ""
    parity: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def model_name_for(document: dict, checkpoint: Path) -> str:
    """A repository name from the run's directory name, made safe ('runs/My Run!' -> 'My-Run')."""
    run_dir = document.get("train_config", {}).get("run_dir") or checkpoint.parent.name
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(run_dir).name).strip("-.") or "model"
    return validate_model_name(name[:64])


def parity_batch(
    document: dict, data_dir: Path | None, size: int
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """A batch of real test images from the checkpoint's data set, or uniform noise if unavailable."""
    config = document["model_config"]
    dataset = str(document.get("dataset", ""))
    try:
        test = load_idx_split(dataset, "test", data_dir)
        if tuple(test.images.shape[1:]) == tuple(config["image_shape"]):
            return test.images[:size], test.labels[:size], f"{dataset} test set"
    except (DatasetNotFound, ValueError, KeyError):
        pass
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(size, *config["image_shape"], generator=generator)
    classes = max(int(config.get("num_classes", 0)), 1)
    return images, torch.arange(size) % classes, "uniform noise (data set not found)"


def export_checkpoint(
    checkpoint: Path,
    repository: Path,
    name: str | None = None,
    data_dir: Path | None = None,
    tolerance: float = 1e-4,
    batch: int = 64,
    skip_existing: bool = True,
) -> ExportResult:
    """Export one checkpoint as the next version of its model; never raises for a bad checkpoint."""
    started = time.perf_counter()
    try:
        document = load_checkpoint(checkpoint)
        model_name = validate_model_name(name) if name else model_name_for(document, checkpoint)
    except (CheckpointError, ValueError) as exc:
        return ExportResult(checkpoint, name or "?", "failed", detail=str(exc))
    digest = sha256_file(checkpoint)
    if skip_existing and digest in (already := existing_sha256(repository, model_name)):
        return ExportResult(
            checkpoint,
            model_name,
            "skipped",
            already[digest],
            detail=f"same sha256 as version {already[digest]}",
        )
    try:
        model = model_from_checkpoint(document)
        images, labels, source = parity_batch(document, data_dir, batch)
        labels = labels if model.config.num_classes else None
        config = model.config
        report = {}

        def build(directory: Path) -> ModelMetadata:
            names = export_graphs(model, directory)
            report.update(check_parity(model, directory, images, labels, tolerance).as_dict())
            metrics = {
                k: float(v)
                for k, v in document.get("metrics", {}).items()
                if isinstance(v, (int, float))
            }
            return ModelMetadata(
                name=model_name,
                version=1,  # replaced by the writer with the next free number
                kind=config.kind,
                latent_dim=config.latent_dim,
                image_shape=tuple(config.image_shape),  # type: ignore[arg-type]
                likelihood=config.likelihood,
                num_classes=config.num_classes,
                opset=OPSET,
                tensors=names,
                dataset=str(document.get("dataset", "")),
                metrics={**metrics, "epoch": float(document.get("epoch", 0))},
                parity={**report, "tolerance": tolerance},
                checkpoint_sha256=digest,
                exported_at=datetime.now(UTC).isoformat(timespec="seconds"),
                model_config={**config.to_dict(), "parity_inputs": source},
            )

        version, _ = write_version(repository, model_name, build)
    except Exception as exc:  # any failure of one checkpoint is reported, the batch goes on
        return ExportResult(checkpoint, model_name, "failed", detail=f"{type(exc).__name__}: {exc}")
    return ExportResult(
        checkpoint,
        model_name,
        "exported",
        version,
        parity=report,
        seconds=time.perf_counter() - started,
    )


def find_checkpoints(root: Path, which: str = "best") -> list[Path]:
    """Every `<which>.pt` under `root` (best or last), sorted."""
    return sorted(p for p in root.rglob(f"{which}.pt") if p.is_file())

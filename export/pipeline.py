"""Export one checkpoint, or every checkpoint under a directory, into a model repository."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

from export.onnx_export import OPSET, convert_to_fp16, export_graphs
from export.parity import DEFAULT_TOLERANCE, check_parity
from export.writer import existing_sha256, write_version
from server.preprocessing import Preprocessing
from server.repository import (
    PRECISIONS,
    GaussianMixture,
    ModelMetadata,
    RepositoryError,
    validate_model_name,
    write_mixture,
)
from training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, sha256_file
from training.data import DatasetNotFound, load_idx_split
from training.images import preprocessing_of
from training.prior import load_mixture, prior_path

QUALITY_PREFIXES = ("fd_", "precision_", "recall_", "classifier_test_accuracy")


@dataclass
class ExportResult:
    """What became of one checkpoint: one row of the batch table."""

    checkpoint: Path
    name: str
    status: str  # exported, skipped or failed
    version: int = 0
    detail: str = ""
    parity: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def model_name_for(document: dict, checkpoint: Path, precision: str = "fp32") -> str:
    """A repository name from the run's directory name, made safe ('runs/My Run!' -> 'My-Run').

    An fp16 export gets the suffix '-fp16', so both variants of a run can be served side by side.
    """
    train_config = document.get("train_config")
    run_dir = (train_config.get("run_dir") if isinstance(train_config, dict) else None) or (
        checkpoint.parent.name
    )
    suffix = "" if precision == "fp32" else f"-{precision}"
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(str(run_dir)).name).strip("-.") or "model"
    return validate_model_name(name[: 64 - len(suffix)] + suffix)


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
        reason = (
            f"{dataset} images are {tuple(test.images.shape[1:])}, the model takes "
            f"{tuple(config['image_shape'])}"
        )
    except (DatasetNotFound, ValueError, KeyError) as exc:
        # Data sets this module cannot read (an image folder such as CelebA) end up here too.
        reason = f"{dataset or 'no data set'} not loadable here ({type(exc).__name__})"
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(size, *config["image_shape"], generator=generator)
    classes = max(int(config.get("num_classes", 0)), 1)
    return images, torch.arange(size) % classes, f"uniform noise: {reason}"


def run_mixture(
    checkpoint: Path, digest: str, latent_dim: int
) -> tuple[GaussianMixture | None, dict, str]:
    """The mixture prior fitted to this checkpoint (`<checkpoint>.prior.npz`), checked as the server
    will check it, with its fit summary; or None and why (a note for the export table)."""
    path = prior_path(checkpoint)
    if not path.is_file():
        return None, {}, f"no mixture prior ({path.name}; `vae-train prior` fits one)"
    try:
        arrays, fitted_to, summary = load_mixture(path)
        mixture = GaussianMixture.from_arrays(arrays, latent_dim, where=str(path))
    except (OSError, ValueError, KeyError) as exc:  # RepositoryError is a ValueError
        raise RepositoryError(f"{path}: unreadable mixture prior ({exc})") from exc
    if fitted_to != digest:
        return None, {}, f"mixture prior left out: {path.name} was fitted to another checkpoint"
    return mixture, summary, ""


def quality_metrics(checkpoint: Path, digest: str) -> dict[str, float]:
    """The run's sample-quality figures (metrics.json "quality"), if they are for this checkpoint."""
    path = checkpoint.parent / "metrics.json"
    try:
        block = json.loads(path.read_text(encoding="utf-8")).get("quality") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    if block.get("checkpoint_sha256") != digest:
        return {}
    mixture = prior_path(checkpoint)
    current = sha256_file(mixture) if mixture.is_file() else None
    stale_mixture = block.get("mixture_sha256") != current  # refitted since it was measured
    return {
        k: float(v)
        for k, v in block.items()
        if k.startswith(QUALITY_PREFIXES)
        and isinstance(v, (int, float))
        and not (stale_mixture and k.endswith("_mixture"))
    }


def export_checkpoint(
    checkpoint: Path,
    repository: Path,
    name: str | None = None,
    data_dir: Path | None = None,
    tolerance: float | None = None,
    batch: int = 64,
    skip_existing: bool = True,
    precision: str = "fp32",
) -> ExportResult:
    """Export one checkpoint as the next version of its model; never raises for a bad checkpoint.

    `tolerance` defaults to DEFAULT_TOLERANCE[precision]; the parity check fails the export above it.
    """
    started = time.perf_counter()
    if precision not in PRECISIONS:
        return ExportResult(
            checkpoint, name or "?", "failed", detail=f"precision {precision!r} not in {PRECISIONS}"
        )
    tolerance = DEFAULT_TOLERANCE[precision] if tolerance is None else tolerance
    try:
        document = load_checkpoint(checkpoint)
        model_name = (
            validate_model_name(name)
            if name is not None
            else model_name_for(document, checkpoint, precision)
        )
    except (CheckpointError, ValueError) as exc:
        return ExportResult(checkpoint, name or checkpoint.parent.name, "failed", detail=str(exc))
    digest = sha256_file(checkpoint)
    already = existing_sha256(repository, model_name, precision)
    if skip_existing and digest in already:
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
        dataset = str(document.get("dataset", ""))
        report = {}
        mixture, mixture_summary, note = run_mixture(checkpoint, digest, config.latent_dim)
        quality = quality_metrics(checkpoint, digest)

        def build(directory: Path) -> ModelMetadata:
            names = export_graphs(model, directory)
            if precision == "fp16":
                convert_to_fp16(directory)
            # Always against float32 PyTorch: the question is how far the served graph is from it.
            report.update(check_parity(model, directory, images, labels, tolerance).as_dict())
            metrics = {
                k: float(v)
                for k, v in document.get("metrics", {}).items()
                if isinstance(v, (int, float))
            }
            described: dict = {}
            if mixture is not None:
                described = {
                    "components": mixture.components,
                    "sha256": write_mixture(directory, mixture),
                    **{
                        k: mixture_summary[k]
                        for k in ("covariance_type", "fit_images", "heldout_log_likelihood")
                        if k in mixture_summary
                    },
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
                tensors=names,  # cvae graphs take a label; ae encoders have no log_variance
                dataset=dataset,
                metrics={**metrics, "epoch": float(document.get("epoch", 0)), **quality},
                parity={**report, "tolerance": tolerance},
                parity_inputs=source,
                precision=precision,
                checkpoint_sha256=digest,
                exported_at=datetime.now(UTC).isoformat(timespec="seconds"),
                model_config=config.to_dict(),
                mixture=described,
                preprocessing=Preprocessing.from_dict(preprocessing_of(dataset)),
            )

        version, _ = write_version(repository, model_name, build)
    except Exception as exc:  # any failure of one checkpoint is reported, the batch goes on
        return ExportResult(checkpoint, model_name, "failed", detail=f"{type(exc).__name__}: {exc}")
    return ExportResult(
        checkpoint,
        model_name,
        "exported",
        version,
        detail=note,
        parity=report,
        seconds=time.perf_counter() - started,
    )


def find_checkpoints(root: Path, which: str = "best") -> list[Path]:
    """Every `<which>.pt` under `root` (best or last), sorted."""
    return sorted(p for p in root.rglob(f"{which}.pt") if p.is_file())

"""Export one checkpoint, or every checkpoint under a directory, into a model repository."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from export.onnx_export import OPSET, convert_to_fp16, export_graphs
from export.parity import DEFAULT_TOLERANCE, check_parity
from export.prior_export import check_prior_parity, describe_two_stage, export_prior_decoder
from export.writer import existing_sha256, write_version
from server.preprocessing import Preprocessing
from server.repository import (
    PRECISIONS,
    PRIOR_MIXTURE,
    PRIOR_STANDARD_NORMAL,
    PRIOR_TWO_STAGE,
    PRIORS,
    GaussianMixture,
    ModelMetadata,
    RepositoryError,
    validate_model_name,
    write_class_mixtures,
    write_mixture,
)
from training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, sha256_file
from training.class_prior import class_prior_path, load_class_mixtures, mixture_file
from training.data import DatasetNotFound, load_idx_split
from training.images import preprocessing_of
from training.prior import load_mixture, prior_path
from training.two_stage import SecondStageVAE, load_two_stage, two_stage_path

# The run file behind each learned prior, whose sha256 `vae-train quality` records: figures of a
# prior refitted since are stale and left out.
PRIOR_FILES = {PRIOR_MIXTURE: mixture_file, PRIOR_TWO_STAGE: two_stage_path}


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


def run_class_mixtures(
    checkpoint: Path, digest: str, latent_dim: int
) -> tuple[list[GaussianMixture], dict, str]:
    """A conditional run's mixtures per class (`<checkpoint>.class_prior.npz`), each checked as the
    server will check it, with the fit's summary; or none and why (a note for the export table)."""
    path = class_prior_path(checkpoint)
    if not path.is_file():
        return [], {}, ""
    try:
        arrays, fitted_to, summary = load_class_mixtures(path)
        mixtures = [
            GaussianMixture.from_arrays(
                {name: arrays[name][label] for name in arrays}, latent_dim, f"{path} ({label})"
            )
            for label in range(len(arrays["weights"]))
        ]
    except (OSError, ValueError, KeyError) as exc:  # RepositoryError is a ValueError
        raise RepositoryError(f"{path}: unreadable per-class mixture prior ({exc})") from exc
    if fitted_to != digest:
        return [], {}, f"per-class mixtures left out: {path.name} was fitted to another checkpoint"
    return mixtures, summary, ""


def run_two_stage(checkpoint: Path, digest: str) -> tuple[SecondStageVAE | None, dict, str]:
    """The two-stage prior trained on this checkpoint's codes (`<checkpoint>.two_stage.pt`) with its
    summary; or None and why (a note for the export table)."""
    path = two_stage_path(checkpoint)
    if not path.is_file():
        return None, {}, f"no two-stage prior ({path.name}; `vae-train prior --kind two-stage`)"
    second_stage, fitted_to, summary = load_two_stage(path)  # CheckpointError: the export fails
    if fitted_to != digest:
        return None, {}, f"two-stage prior left out: {path.name} was trained on another checkpoint"
    return second_stage, summary, ""


def quality_metrics(checkpoint: Path, digest: str, priors: tuple[str, ...]) -> dict[str, Any]:
    """The run's sample-quality figures (metrics.json "quality") for the `priors` the version
    carries, if measured on this checkpoint and on the prior files as they are now; and the
    recommended prior with its temperature when it is among them ("recommended_prior", ...)."""
    path = checkpoint.parent / "metrics.json"
    try:
        block = json.loads(path.read_text(encoding="utf-8")).get("quality") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    if not isinstance(block, dict) or block.get("checkpoint_sha256") != digest:
        return {}
    current = {PRIOR_STANDARD_NORMAL}
    for prior, where in PRIOR_FILES.items():
        file = where(checkpoint)
        if prior in priors and file.is_file() and block.get(f"{prior}_sha256") == sha256_file(file):
            current.add(prior)
    pattern = re.compile(r"^(?:fd|precision|recall)_(" + "|".join(current) + r")(?:_t[0-9.]+)?$")
    figures: dict[str, Any] = {
        k: float(v)
        for k, v in block.items()
        if pattern.match(k) and isinstance(v, int | float) and not isinstance(v, bool)
    }
    if isinstance(block.get("classifier_test_accuracy"), int | float):
        figures["classifier_test_accuracy"] = float(block["classifier_test_accuracy"])
    recommended = block.get("recommended") or {}
    # Chosen among every prior measured: it stands only if all of them are still current.
    measured = set(block.get("priors", [])) & set(PRIORS)
    if recommended.get("prior") in current and measured <= current:
        figures["recommended_prior"] = recommended["prior"]
        figures["recommended_temperature"] = float(recommended["temperature"])
    return figures


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
        second_stage, second_stage_summary, second_note = run_two_stage(checkpoint, digest)
        per_class, per_class_summary, class_note = run_class_mixtures(
            checkpoint, digest, config.latent_dim
        )
        if config.num_classes and per_class and len(per_class) != config.num_classes:
            raise RepositoryError(f"{len(per_class)} per-class mixtures for {config.num_classes}")
        if config.num_classes:  # a conditional model has no two-stage prior (training/two_stage)
            second_stage, second_note = None, ""
        note = "; ".join(n for n in (note, class_note, second_note) if n)
        carried = (
            PRIOR_STANDARD_NORMAL,
            *((PRIOR_MIXTURE,) if mixture is not None or per_class else ()),
            *((PRIOR_TWO_STAGE,) if second_stage is not None else ()),
        )
        quality = quality_metrics(checkpoint, digest, carried)
        recommended_prior = str(quality.pop("recommended_prior", ""))
        recommended_temperature = float(quality.pop("recommended_temperature", 1.0))

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
            class_mixture: dict = {}
            if per_class:
                class_mixture = {
                    "classes": len(per_class),
                    "components": per_class[0].components,
                    "sha256": write_class_mixtures(directory, per_class),
                    **{
                        k: per_class_summary[k]
                        for k in ("covariance_type", "fit_to", "heldout_log_likelihood")
                        if k in per_class_summary
                    },
                }
            two_stage: dict = {}
            if second_stage is not None:
                # Always float32 (an fp16 version too): it is small, and its parity bound is 1e-4.
                prior_file = export_prior_decoder(second_stage, directory)
                parity = check_prior_parity(second_stage, prior_file)
                two_stage = describe_two_stage(
                    second_stage, sha256_file(prior_file), parity, second_stage_summary
                )
                report["prior_decoder_max_abs_diff"] = parity.max_abs_diff
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
                two_stage=two_stage,
                class_mixture=class_mixture,
                recommended_prior=recommended_prior,
                recommended_temperature=recommended_temperature,
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

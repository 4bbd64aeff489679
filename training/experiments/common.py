"""Shared pieces of the studies: settings, one training run, and the figures measured on the test set."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.config import TrainConfig
from training.data import TensorDataset, load_idx_split
from training.models import GenerativeModel, ModelConfig
from training.train import train

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. 2015, section 5.2: Var_x(E_q[z_u | x]) > 0.01


@dataclass
class ExperimentSettings:
    """What every study shares; the defaults are the documented full mode."""

    dataset: str = "fashion-mnist"  # mnist too, where its four IDX files are found
    data_dir: str = ""  # empty: the training code's usual lookup (VAE_DATA_DIR, Debian package)
    out: str = "reports"  # each study writes reports/<study>/
    runs_dir: str = "runs/experiments"  # checkpoints and logs; runs/ is git-ignored
    epochs: int = 10  # the classic PyTorch MNIST example trains 10 epochs
    train_subset: int = 0  # 0: all 55,000 training rows left after the validation split
    max_steps: int = 0  # 0: no limit; the tests cap runs at a handful of steps
    batch_size: int = 128  # the classic example's batch size
    hidden_dims: tuple[int, ...] = (400,)  # the classic 784-400-latent MLP
    latent_dim: int = 20  # the classic example's latent size (studies that vary it ignore this)
    val_size: int = 5000  # the training code's default validation split
    threads: int = 1  # one torch thread per run: small MLPs run faster so on busy, shared CPUs
    iwae_samples: int = 50  # k of the IWAE bound (Burda et al. 2015 report k = 50 and 5000)
    iwae_images: int = 1000  # test images the IWAE bound averages over, to bound its run time
    analysis_images: int = 0  # test images for active units, latent statistics, distances (0: all)
    interpolation_pairs: int = 100  # test-image pairs whose interpolation smoothness is averaged
    seed: int = 0
    quick: bool = False  # recorded in the report; quick() sets the smaller sizes

    def quick_mode(self) -> ExperimentSettings:
        """About a minute per study on two busy cores: 10,000 training images, 2 epochs."""
        return replace(self, quick=True, epochs=2, train_subset=10_000)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["hidden_dims"] = list(self.hidden_dims)
        return data


@dataclass
class Run:
    """One trained model with its log and the figures `train` measured."""

    name: str
    model: GenerativeModel
    summary: dict[str, Any]
    history: list[dict[str, Any]]
    seconds: float
    figures: dict[str, Any] = field(default_factory=dict)  # filled in by the study


def model_config(settings: ExperimentSettings, **overrides: Any) -> ModelConfig:
    """The study's MLP (784-hidden-latent) with `overrides` (kind, latent_dim, likelihood, ...)."""
    values: dict[str, Any] = {
        "hidden_dims": settings.hidden_dims,
        "latent_dim": settings.latent_dim,
    }
    values.update(overrides)
    return ModelConfig(architecture="mlp", **values)


def train_run(
    settings: ExperimentSettings, study: str, name: str, model: ModelConfig, **train_overrides: Any
) -> Run:
    """Train one model into <runs_dir>/<study>/<name>; the model comes back from its last epoch."""
    run_dir = Path(settings.runs_dir) / study / name
    config = TrainConfig(
        dataset=settings.dataset,
        data_dir=settings.data_dir,
        run_dir=str(run_dir),
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        train_subset=settings.train_subset,
        max_steps=settings.max_steps,
        val_size=settings.val_size,
        threads=settings.threads,
        iwae_samples=settings.iwae_samples,
        iwae_images=settings.iwae_images,
        seed=settings.seed,
        progress=False,
        tensorboard=False,
        figures=False,  # each study draws its own comparisons
        prior_components=0,  # no study samples the mixture prior; it would add a fit per model
        prior_two_stage=False,  # nor the two-stage prior: minutes of training per model
        model=model,
        **train_overrides,
    )
    started = time.perf_counter()
    summary = train(config)
    seconds = time.perf_counter() - started
    lines = (run_dir / "log.jsonl").read_text(encoding="utf-8").splitlines()
    history = [json.loads(line) for line in lines if line.strip()]
    trained = model_from_checkpoint(load_checkpoint(run_dir / "last.pt"))
    return Run(name, trained, summary, history, seconds)


def load_test_set(settings: ExperimentSettings) -> TensorDataset:
    """The official test split, cut to `analysis_images` rows when that is set."""
    test = load_idx_split(
        settings.dataset, "test", Path(settings.data_dir) if settings.data_dir else None
    )
    if settings.analysis_images:
        test = test.subset(slice(0, settings.analysis_images))
    return test


@torch.no_grad()
def posterior_means(model: GenerativeModel, test: TensorDataset, batch: int = 1000) -> torch.Tensor:
    """E_q[z | x] for every test image: (N, D); the code itself for the plain autoencoder."""
    chunks = []
    for start in range(0, len(test), batch):
        images, labels = test.images[start : start + batch], test.labels[start : start + batch]
        chunks.append(model.encode(images, model.condition_labels(labels))[0])
    return torch.cat(chunks)


def active_units(means: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """Latent dimensions u with Var_x(E_q[z_u | x]) > threshold (Burda et al. 2015, section 5.2)."""
    return int((means.var(dim=0) > threshold).sum())


def latent_statistics(means: torch.Tensor) -> dict[str, float]:
    """How far the codes of the test set sit from the prior N(0, I).

    `aggregate_kl` moment-matches the codes with N(m, diag(s^2)) and returns its closed-form
    KL to N(0, I), 1/2 * sum(s^2 + m^2 - 1 - log s^2) (Kingma & Welling 2014, Appendix B):
    0 when the codes have the prior's first two moments.
    """
    mean, variance = means.mean(dim=0), means.var(dim=0).clamp_min(1e-12)
    aggregate_kl = 0.5 * (variance + mean.pow(2) - 1.0 - variance.log()).sum()
    return {
        "code_mean_abs": float(mean.abs().mean()),
        "code_std": float(variance.sqrt().mean()),
        "code_std_min": float(variance.sqrt().min()),
        "code_std_max": float(variance.sqrt().max()),
        "aggregate_kl": float(aggregate_kl),
    }


@torch.no_grad()
def interpolation_frames(
    model: GenerativeModel, test: TensorDataset, pairs: int, steps: int = 10
) -> torch.Tensor:
    """Decoded points on the line between the codes of test images i and pairs + i.

    Returns (pairs, steps, C, H, W); a conditional model keeps the first image's class.
    """
    pairs = min(pairs, len(test) // 2)
    means = posterior_means(model, test.subset(slice(0, 2 * pairs)))
    start, end = means[:pairs], means[pairs : 2 * pairs]  # (P, D) each
    weights = torch.linspace(0, 1, steps, device=means.device).view(1, steps, 1)
    z = torch.lerp(start.unsqueeze(1), end.unsqueeze(1), weights)  # (P, S, D)
    labels = test.labels[:pairs].repeat_interleave(steps)
    frames = model.decode(z.reshape(pairs * steps, -1), model.condition_labels(labels))
    return frames.reshape(pairs, steps, *frames.shape[1:])


def interpolation_smoothness(
    model: GenerativeModel, test: TensorDataset, pairs: int, steps: int = 10
) -> dict[str, float]:
    """How evenly the decoded image changes along a straight line between two codes.

    interp_step_mean: mean absolute pixel change between consecutive frames, averaged over pairs.
    interp_step_std: the standard deviation of those changes along one path, averaged over pairs.
    interp_step_cv: interp_step_std / interp_step_mean per path, averaged: 0 when every step
    changes the image equally; large when the path jumps (a hole between the two codes).
    """
    frames = interpolation_frames(model, test, pairs, steps).flatten(2)  # (P, S, C*H*W)
    changes = (frames[:, 1:] - frames[:, :-1]).abs().mean(dim=2)  # (P, S-1)
    path_mean, path_std = changes.mean(dim=1), changes.std(dim=1)
    return {
        "interp_step_mean": float(path_mean.mean()),
        "interp_step_std": float(path_std.mean()),
        "interp_step_cv": float((path_std / path_mean.clamp_min(1e-12)).mean()),
    }


@torch.no_grad()
def reconstruction_errors(model: GenerativeModel, test: TensorDataset) -> dict[str, float]:
    """Per-image BCE and squared error of the decoded posterior means: comparable across likelihoods."""
    bce_total = sse_total = 0.0
    for start in range(0, len(test), 1000):
        images, labels = test.images[start : start + 1000], test.labels[start : start + 1000]
        condition = model.condition_labels(labels)
        rebuilt = model.decode(model.encode(images, condition)[0], condition).clamp(1e-6, 1 - 1e-6)
        bce_total += float(F.binary_cross_entropy(rebuilt, images, reduction="sum"))
        sse_total += float((rebuilt - images).pow(2).sum())
    return {"mean_code_bce": bce_total / len(test), "mean_code_sse": sse_total / len(test)}


@torch.no_grad()
def sample_distance(model: GenerativeModel, test: TensorDataset, count: int = 256) -> float:
    """Root-mean-square pixel distance from prior samples to their nearest test image.

    A crude check of whether draws from N(0, I) decode to data-like images: lower is closer.
    """
    labels = torch.arange(count) % model.config.num_classes if model.config.num_classes else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        samples = model.sample(count, labels).flatten(1)  # (count, C*H*W)
    data = test.images.flatten(1)  # (N, C*H*W)
    squared = torch.cdist(samples, data).pow(2).min(dim=1).values / data.shape[1]  # (count,)
    return float(squared.sqrt().mean())


def elbo_figures(run: Run) -> dict[str, float]:
    """The last epoch's test terms from the training log (beta = 1), plus the IWAE bound if any."""
    summary = run.summary
    figures = {
        "test_neg_elbo": summary["test_loss"],
        "test_reconstruction": summary["test_reconstruction"],
        "test_kl": summary["test_kl"],
        "train_seconds": round(run.seconds, 1),
    }
    if "test_iwae_nll" in summary:
        figures["test_iwae_nll"] = summary["test_iwae_nll"]
    return figures


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def standard_figures(run: Run, test: TensorDataset) -> dict[str, Any]:
    """The figures most studies tabulate: ELBO terms, IWAE, active units, codes, sample distance."""
    means = posterior_means(run.model, test)
    return {
        **elbo_figures(run),
        "active_units": active_units(means),
        "latent_dim": run.model.config.latent_dim,
        **latent_statistics(means),
        "sample_rms_to_nearest": sample_distance(run.model, test),
    }


@torch.no_grad()
def prior_samples(model: GenerativeModel, count: int = 64, seed: int = 0) -> torch.Tensor:
    """`count` decoded draws from N(0, I) with a fixed seed: (count, C, H, W)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model.sample(count)

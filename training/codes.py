"""The latent codes a trained model gives its data: each image's posterior mean and log-variance, and
draws from q(z | x), which the learned priors (training/prior.py, training/two_stage.py) are fitted
to."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.models import GenerativeModel

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Codes:
    """q(z | x) = N(means, diag(exp(log_variances))) for N images; an autoencoder's codes have no
    spread (log_variances None), so its 'posterior' is the point at the code."""

    means: np.ndarray  # (N, D) float64
    log_variances: np.ndarray | None  # (N, D) float64, or None for an autoencoder
    labels: np.ndarray | None = None  # (N,) int64 class labels of the images, when known

    def __len__(self) -> int:
        return len(self.means)

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def draws(self, per_image: int, rng: np.random.Generator) -> np.ndarray:
        """`per_image` draws z = mean + exp(log_variance / 2) * eps of every image, (N * per_image,
        D) float64, image-major (the draws of image i are rows i * per_image ... ); an autoencoder's
        draws are its codes repeated."""
        if per_image < 1:
            raise ValueError(f"draws per image must be at least 1, got {per_image}")
        means = np.repeat(self.means, per_image, axis=0)
        if self.log_variances is None:
            return means
        std = np.repeat(np.exp(0.5 * self.log_variances), per_image, axis=0)
        return means + std * rng.standard_normal(means.shape)

    def subset(self, rows: np.ndarray | slice) -> Codes:
        log_variances = None if self.log_variances is None else self.log_variances[rows]
        labels = None if self.labels is None else self.labels[rows]
        return Codes(self.means[rows], log_variances, labels)

    def of_class(self, label: int) -> Codes:
        """The codes of the images labelled `label`."""
        if self.labels is None:
            raise ValueError("these codes carry no labels")
        return self.subset(np.flatnonzero(self.labels == label))


@torch.no_grad()
def posterior_codes(model: GenerativeModel, batches: Iterable[Batch]) -> Codes:
    """The posterior of every image of `batches` under `model` (its code, for an autoencoder)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    means, log_variances, all_labels = [], [], []
    for images, labels in batches:
        images, labels = images.to(device), labels.to(device)
        mean, log_variance = model.encode(images, model.condition_labels(labels))
        means.append(mean.double().cpu())
        all_labels.append(labels.cpu())
        if log_variance is not None:
            log_variances.append(log_variance.double().cpu())
    model.train(was_training)
    return Codes(
        torch.cat(means).numpy(),
        torch.cat(log_variances).numpy() if log_variances else None,
        torch.cat(all_labels).numpy().astype(np.int64),
    )


def fit_batches(data: Any) -> tuple[Iterable[Batch], Iterable[Batch] | None]:
    """Every row of the training split (in order, whatever the shuffling and sharding of training)
    and the validation split, or None without one, from a run's DataBundle."""
    from training.batching import TensorBatches

    if isinstance(data.train, TensorBatches):
        train = TensorBatches(data.train.data, 1000, shuffle=False).epoch()
    else:  # an image folder: this process's share of it
        train = data.train.epoch(0)
    return train, (data.val.epoch() if data.val is not None else None)


def split_codes(model: GenerativeModel, data: Any) -> tuple[Codes, Codes | None]:
    """The posteriors of the training split and of the validation split (None without one)."""
    train, heldout = fit_batches(data)
    codes = posterior_codes(model, train)
    return codes, (None if heldout is None else posterior_codes(model, heldout))


def load_run(run_dir: Path, which: str, data_dir: str | None, device: str) -> tuple[Path, Any, Any]:
    """A finished run's checkpoint `<run_dir>/<which>.pt`, its TrainConfig and its data splits (the
    same ones it was trained on: same data set, seed and validation split)."""
    from training.batching import load_data
    from training.checkpoint import load_checkpoint
    from training.config import TrainConfig

    checkpoint = run_dir / f"{which}.pt"
    document = load_checkpoint(checkpoint)
    config = TrainConfig.from_dict(document.get("train_config", {}))
    if data_dir is not None:
        config.data_dir = data_dir
    return checkpoint, config, load_data(config, torch.device(device))

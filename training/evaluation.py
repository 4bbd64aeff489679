"""Evaluation: the test ELBO and its terms, and the importance-weighted bound on the negative
log-likelihood (Burda et al. 2015) for Bernoulli models."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from training.data import TensorDataset
from training.losses import negative_elbo
from training.models import GenerativeModel

Batch = tuple[torch.Tensor, torch.Tensor]


def _batches(data: TensorDataset | Iterable[Batch], batch_size: int) -> Iterable[Batch]:
    if isinstance(data, TensorDataset):  # a whole split in memory, sliced in order
        return (
            (data.images[i : i + batch_size], data.labels[i : i + batch_size])
            for i in range(0, len(data), batch_size)
        )
    return data


@torch.no_grad()
def evaluate(
    model: GenerativeModel,
    data: TensorDataset | Iterable[Batch],
    likelihood: str,
    batch_size: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Mean per-image negative ELBO and its terms (beta = 1, one z sample per image) over a split
    held in memory (sliced into `batch_size` rows) or any iterable of (images, labels) batches.

    The noise comes from a fixed seed, so two evaluations of the same weights agree.
    """
    was_training = model.training
    model.eval()
    totals = {"loss": 0.0, "reconstruction": 0.0, "kl": 0.0}
    count = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for images, labels in _batches(data, batch_size):
            terms = negative_elbo(model(images, model.condition_labels(labels)), images, likelihood)
            for key, value in terms.as_floats().items():
                totals[key] += value * len(images)
            count += len(images)
    model.train(was_training)
    return {key: value / max(count, 1) for key, value in totals.items()}


def _log_normal(x: torch.Tensor, mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag(exp(log_variance))) summed over the last axis."""
    return -0.5 * (
        math.log(2 * math.pi) + log_variance + (x - mean).pow(2) / log_variance.exp()
    ).sum(dim=-1)


@torch.no_grad()
def iwae_nll(
    model: GenerativeModel,
    batches: Iterable[Batch],
    samples: int = 50,
    max_images: int = 0,
    seed: int = 0,
    chunk: int = 10,
) -> float:
    """-log p(x) estimated as -log (1/k) sum_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(z|x), in nats per
    image (Burda et al. 2015, eq. 8). It is a tighter bound than -ELBO and approaches -log p(x)
    as k grows. Bernoulli likelihood only: a Gaussian decoder with fixed variance has no density
    on [0, 1]-valued pixels worth comparing."""
    if model.config.likelihood != "bernoulli" or not model.variational:
        raise ValueError(
            "the IWAE estimate needs a variational model with the bernoulli likelihood; got "
            f"kind {model.config.kind!r}, likelihood {model.config.likelihood!r}"
        )
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for images, labels in batches:
            if max_images and count >= max_images:
                break
            if max_images:
                images, labels = images[: max_images - count], labels[: max_images - count]
            condition = model.condition_labels(labels)
            mean, log_variance = model.encode(images, condition)  # (B, D) each
            log_weights = []
            for start in range(0, samples, chunk):
                k = min(chunk, samples - start)
                z = mean + (0.5 * log_variance).exp() * torch.randn(
                    k, *mean.shape, device=mean.device
                )  # (k, B, D)
                flat = z.reshape(k * len(images), -1)  # (k*B, D)
                repeated = None if condition is None else condition.repeat(k)
                logits = model.decode_logits(flat, repeated).view(k, *images.shape)
                target = images.expand(k, *images.shape)
                log_px = -F.binary_cross_entropy_with_logits(logits, target, reduction="none")
                log_px = log_px.flatten(2).sum(dim=2)  # (k, B)
                log_pz = _log_normal(z, torch.zeros_like(z), torch.zeros_like(z))
                log_qz = _log_normal(z, mean, log_variance)
                log_weights.append(log_px + log_pz - log_qz)
            log_likelihood = torch.cat(log_weights).logsumexp(dim=0) - math.log(samples)  # (B,)
            total += float(-log_likelihood.sum())
            count += len(images)
    model.train(was_training)
    return total / max(count, 1)

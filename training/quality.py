"""Sample quality of a trained run: the Fréchet distance between classifier features of test images
and of generated images, and the precision and recall of the generated set (Kynkäänniemi et al.
2019), for samples decoded from N(0, I) and from the run's mixture prior (training/prior.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.checkpoint import load_checkpoint, model_from_checkpoint, sha256_file
from training.classifier import Classifier, default_path, load_classifier
from training.data import load_idx_split
from training.models import GenerativeModel
from training.prior import load_mixture, prior_path, sample_mixture, update_metrics

DEFAULT_SAMPLES = 10_000  # the whole MNIST / Fashion-MNIST test set
DEFAULT_K = 3  # Kynkäänniemi et al. 2019, section 3: k = 3 throughout their experiments


def frechet_distance(
    real: np.ndarray | torch.Tensor, generated: np.ndarray | torch.Tensor
) -> float:
    """||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)) between Gaussians moment-matched to two
    feature sets (N, F) (Fréchet 1957; Dowson & Landau 1982; as FID, Heusel et al. 2017).

    Tr((S_r S_g)^(1/2)) is computed as the sum of the square roots of the eigenvalues of the
    symmetric S_r^(1/2) S_g S_r^(1/2), which has the same spectrum: no complex sqrtm round-off.
    """
    a = np.asarray(real, dtype=np.float64)
    b = np.asarray(generated, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"feature sets must be (N, F) with the same F, got {a.shape} and {b.shape}"
        )
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T  # S_r^(1/2)
    middle = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = float(np.sqrt(np.clip(middle, 0.0, None)).sum())
    distance = float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b))
    return distance - 2.0 * trace_root


def _kth_neighbour_radii(features: torch.Tensor, k: int, chunk: int = 1000) -> torch.Tensor:
    """Distance from each row to its k-th nearest other row: (N,)."""
    radii = []
    for start in range(0, len(features), chunk):
        distances = torch.cdist(features[start : start + chunk], features)  # (c, N)
        # The smallest distance is the row to itself (0), so the k-th neighbour is at index k.
        radii.append(distances.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


def _coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int = 1000):
    """Share of `points` inside at least one ball (centre, radius)."""
    inside = 0
    for start in range(0, len(points), chunk):
        distances = torch.cdist(points[start : start + chunk], centres)  # (c, M)
        inside += int((distances <= radii[None, :]).any(dim=1).sum())
    return inside / max(len(points), 1)


def precision_recall(
    real: torch.Tensor, generated: torch.Tensor, k: int = DEFAULT_K
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, eq. 1-3): each set's manifold is the
    union of balls around its points reaching their k-th nearest neighbour; precision is the share
    of generated points inside the real manifold, recall the share of real points inside the
    generated one."""
    real, generated = real.float(), generated.float()
    if min(len(real), len(generated)) <= k:
        raise ValueError(f"k = {k} needs more than {k} points per set")
    precision = _coverage(generated, real, _kth_neighbour_radii(real, k))
    recall = _coverage(real, generated, _kth_neighbour_radii(generated, k))
    return precision, recall


def scores(real: torch.Tensor, generated: torch.Tensor, k: int = DEFAULT_K) -> dict[str, float]:
    precision, recall = precision_recall(real, generated, k)
    return {"fd": frechet_distance(real, generated), "precision": precision, "recall": recall}


@torch.no_grad()
def generate(
    model: GenerativeModel, latents: np.ndarray, num_classes: int, batch: int = 1000
) -> torch.Tensor:
    """Decode (N, D) latents to (N, C, H, W) images on CPU; a conditional model gets the classes in
    turn (0, 1, ..., K-1, 0, ...), so every class is equally represented."""
    model.eval()
    device = next(model.parameters()).device
    z = torch.from_numpy(latents).to(device)
    labels = torch.arange(len(z), device=device) % max(num_classes, 1)
    images = []
    for start in range(0, len(z), batch):
        condition = model.condition_labels(labels[start : start + batch])
        images.append(model.decode(z[start : start + batch], condition).cpu())
    return torch.cat(images)


def standard_normal_latents(count: int, dim: int, seed: int, temperature: float) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((count, dim)) * temperature).astype(
        np.float32
    )


def measure_run(
    run_dir: Path,
    which: str = "best",
    classifier_path: Path | None = None,
    samples: int = DEFAULT_SAMPLES,
    k: int = DEFAULT_K,
    seed: int = 0,
    temperature: float = 1.0,
    data_dir: Path | None = None,
) -> dict[str, Any]:
    """`vae-train quality`: score `<run_dir>/<which>.pt` for each prior it has, write the figures
    into the run's metrics.json under "quality" (with the checkpoint's sha256, so vae-export carries
    them only into the version of that checkpoint) and return them."""
    started = time.perf_counter()
    checkpoint = run_dir / f"{which}.pt"
    document = load_checkpoint(checkpoint)
    model = model_from_checkpoint(document)
    dataset = str(document.get("dataset", ""))
    if data_dir is None and document.get("train_config", {}).get("data_dir"):
        data_dir = Path(document["train_config"]["data_dir"])
    classifier_path = classifier_path or default_path(dataset)
    classifier: Classifier = load_classifier(classifier_path, dataset)
    test = load_idx_split(dataset, "test", data_dir)
    if samples > len(test):
        raise ValueError(f"{samples} samples asked for, the {dataset} test set has {len(test)}")
    real = classifier.features(test.images[:samples])
    train_images = load_idx_split(dataset, "train", data_dir).images[:samples]
    config = model.config
    figures: dict[str, Any] = {
        "checkpoint": checkpoint.name,
        "checkpoint_sha256": sha256_file(checkpoint),
        "classifier": str(classifier_path),
        "classifier_sha256": sha256_file(classifier_path),
        "classifier_test_accuracy": classifier.test_accuracy,
        "samples": samples,
        "k": k,
        "seed": seed,
        "temperature": temperature,
    }
    # The floor: real training images scored against the test images, as a generator would be.
    reference = scores(real, classifier.features(train_images), k)
    figures.update({f"{name}_train_reference": value for name, value in reference.items()})
    priors = {
        "standard_normal": standard_normal_latents(samples, config.latent_dim, seed, temperature)
    }
    mixture_file = prior_path(checkpoint)
    if mixture_file.is_file():
        arrays, fitted_to, _ = load_mixture(mixture_file)
        if fitted_to != figures["checkpoint_sha256"]:
            raise ValueError(
                f"{mixture_file} was fitted to another checkpoint than {checkpoint}; fit it again "
                f"with `vae-train prior {run_dir} --which {which}`"
            )
        priors["mixture"] = sample_mixture(arrays, samples, seed, temperature)
        figures["mixture_sha256"] = sha256_file(mixture_file)  # a refit makes these figures stale
    for name, latents in priors.items():
        images = generate(model, latents, config.num_classes)
        for metric, value in scores(real, classifier.features(images), k).items():
            figures[f"{metric}_{name}"] = value
    figures["seconds"] = round(time.perf_counter() - started, 1)
    update_metrics(run_dir, "quality", figures)
    return figures

"""Sample quality of a trained run: the Fréchet distance between classifier features of test images
and of generated images, and the precision and recall of the generated set (Kynkäänniemi et al.
2019), for samples decoded from every prior the run has (N(0, I), the mixture of training/prior.py,
the two-stage prior of training/two_stage.py), over several sampling seeds and temperatures, and
the recommended prior (training/recommend.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.checkpoint import load_checkpoint, model_from_checkpoint, sha256_file
from training.class_prior import (
    class_prior_path,
    load_class_mixtures,
    mixture_file,
    sample_class_mixture,
)
from training.classifier import Classifier, default_path, load_classifier
from training.data import load_idx_split
from training.models import GenerativeModel
from training.prior import load_mixture, sample_mixture, update_metrics
from training.recommend import figure_key, recommend
from training.two_stage import load_two_stage, sample_two_stage, two_stage_path

DEFAULT_SAMPLES = 10_000  # the whole MNIST / Fashion-MNIST test set
DEFAULT_K = 3  # Kynkäänniemi et al. 2019, section 3: k = 3 throughout their experiments
DEFAULT_SEEDS = (0, 1, 2)  # sampling seeds: the figures are their means, the spread is kept too
DEFAULT_TEMPERATURES = (1.0,)
SERVED_PRIORS = ("standard_normal", "mixture", "two_stage")  # as server/repository.py names them
# (count, seed, temperature) -> latents (count, D) float32
Sampler = Callable[[int, int, float], np.ndarray]


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


def run_samplers(
    checkpoint: Path, digest: str, latent_dim: int, extra_mixtures: dict[str, Path] | None = None
) -> tuple[dict[str, Sampler], dict[str, str]]:
    """A latent sampler for each prior `checkpoint` has (N(0, I); its mixture, per class for a
    conditional model, and its two-stage prior when fitted to this checkpoint; `extra_mixtures`,
    name -> .prior.npz, to compare), and the sha256 of each prior's file (a refit makes the figures
    stale: vae-export leaves them out)."""
    clash = set(extra_mixtures or {}) & set(SERVED_PRIORS)
    if clash:
        raise ValueError(f"extra mixture names {sorted(clash)} clash with the run's own priors")
    samplers: dict[str, Sampler] = {
        "standard_normal": lambda n, seed, t: standard_normal_latents(n, latent_dim, seed, t)
    }
    files: dict[str, str] = {}
    how_to_refit = (
        f"fit it again with `vae-train prior {checkpoint.parent} --which {checkpoint.stem}"
    )
    mixtures = {"mixture": mixture_file(checkpoint), **(extra_mixtures or {})}
    for name, path in mixtures.items():
        if not path.is_file():
            if name != "mixture":
                raise ValueError(f"{path}: no such mixture file (given for {name!r})")
            continue
        per_class = path == class_prior_path(checkpoint)
        arrays, fitted_to, _ = (load_class_mixtures if per_class else load_mixture)(path)
        if fitted_to != digest:
            raise ValueError(
                f"{path} was fitted to another checkpoint than {checkpoint}; {how_to_refit}`"
            )
        if per_class:  # image i is decoded with label i % classes (generate): draw from its own
            samplers[name] = lambda n, seed, t, arrays=arrays: sample_class_mixture(
                arrays, np.arange(n) % len(arrays["weights"]), seed, t
            )
        else:
            samplers[name] = lambda n, seed, t, arrays=arrays: sample_mixture(arrays, n, seed, t)
        files[name] = sha256_file(path)
    second_stage_file = two_stage_path(checkpoint)
    if second_stage_file.is_file():
        second_stage, fitted_to, _ = load_two_stage(second_stage_file)
        if fitted_to != digest:
            raise ValueError(
                f"{second_stage_file} was fitted to another checkpoint than {checkpoint}; "
                f"{how_to_refit} --kind two-stage`"
            )
        samplers["two_stage"] = lambda n, seed, t: sample_two_stage(second_stage, n, seed, t)
        files["two_stage"] = sha256_file(second_stage_file)
    return samplers, files


def measure_run(
    run_dir: Path,
    which: str = "best",
    classifier_path: Path | None = None,
    samples: int = DEFAULT_SAMPLES,
    k: int = DEFAULT_K,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    data_dir: Path | None = None,
    extra_mixtures: dict[str, Path] | None = None,
) -> dict[str, Any]:
    """`vae-train quality`: score `<run_dir>/<which>.pt` for each prior it has at each temperature
    (temperature 1 always), each figure the mean over the sampling `seeds`; choose the recommended
    prior; write it all into the run's metrics.json under "quality" (with the checkpoint's and the
    priors' sha256, so vae-export carries them only into the version they describe)."""
    started = time.perf_counter()
    if not seeds:
        raise ValueError("give at least one sampling seed")
    if any(not t > 0 for t in temperatures):
        raise ValueError(f"temperatures must be positive, got {list(temperatures)}")
    temperatures = sorted({1.0, *(float(t) for t in temperatures)})
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
    digest = sha256_file(checkpoint)
    samplers, files = run_samplers(checkpoint, digest, config.latent_dim, extra_mixtures)
    figures: dict[str, Any] = {
        "checkpoint": checkpoint.name,
        "checkpoint_sha256": digest,
        "classifier": str(classifier_path),
        "classifier_sha256": sha256_file(classifier_path),
        "classifier_test_accuracy": classifier.test_accuracy,
        "samples": samples,
        "k": k,
        "seeds": list(seeds),
        "temperatures": temperatures,
        "priors": list(samplers),
        **{f"{name}_sha256": digest for name, digest in files.items()},
    }
    # The floor: real training images scored against the test images, as a generator would be.
    reference = scores(real, classifier.features(train_images), k)
    figures.update({f"{name}_train_reference": value for name, value in reference.items()})
    per_seed: dict[str, list[float]] = {}
    for name, sampler in samplers.items():
        # A comparison mixture (--extra-mixture) is scored at temperature 1 only.
        for temperature in temperatures if name in SERVED_PRIORS else (1.0,):
            for seed in seeds:
                images = generate(model, sampler(samples, seed, temperature), config.num_classes)
                for metric, value in scores(real, classifier.features(images), k).items():
                    per_seed.setdefault(figure_key(metric, name, temperature), []).append(value)
    for key, values in per_seed.items():
        figures[key] = float(np.mean(values))
    figures["spread"] = {
        key: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for key, v in per_seed.items()
    }
    figures["per_seed"] = per_seed
    served = [name for name in samplers if name in SERVED_PRIORS]
    figures["recommended"] = recommend(figures, served, temperatures)
    figures["seconds"] = round(time.perf_counter() - started, 1)
    update_metrics(run_dir, "quality", figures)
    return figures

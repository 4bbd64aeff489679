"""The learned mixture prior: a Gaussian mixture fitted after training to the aggregate posterior
q(z) = mean over training images of q(z | x) (ex-post density estimation, Ghosh et al. 2020, section
4), written beside the checkpoint as `<checkpoint>.prior.npz` of plain arrays.

Decoding draws from N(0, I) leaves the regions that the aggregate posterior never fills, and a plain
autoencoder's codes are not N(0, I) at all; a mixture fitted to where the codes actually are answers
both. Ghosh et al. fit the posterior *means*; for a VAE that drops the spread of each q(z | x) that
the decoder was trained on, and the mixture then samples the modes and misses the tails (recall falls,
reports/sample-quality). So by default the mixture is fitted to several draws z ~ q(z | x) of every
training image ("draws"); "means" is the earlier fit, kept as the baseline. `vae-export` copies the
file into the model's repository version (server/repository.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.checkpoint import load_checkpoint, model_from_checkpoint, sha256_file
from training.codes import Codes, split_codes

COVARIANCE_TYPES = ("full", "diag")
DEFAULT_COMPONENTS = 10  # Ghosh et al. 2020 fit a 10-component GMM for their ex-post priors
# What the mixture is fitted to: draws from each image's q(z | x) (the aggregate posterior), or the
# posterior means alone (Ghosh et al.'s fit, the baseline of reports/sample-quality).
FIT_TARGETS = ("draws", "means")
# Draws per training image: 4 x 55,000 Fashion-MNIST images is 220,000 points for a 10-component
# mixture in 20-D, enough that the fit's own sampling noise is small next to the seed spread.
DEFAULT_DRAWS = 4


def prior_path(checkpoint: Path) -> Path:
    """Where the mixture of `checkpoint` lives: runs/x/best.pt -> runs/x/best.prior.npz."""
    return checkpoint.with_suffix(".prior.npz")


@contextmanager
def one_thread() -> Iterator[None]:
    """torch, BLAS and OpenMP on one thread each, restored afterwards. How a sum is split between
    threads changes its last bits, and the mixture (k-means initialisation, then EM) carries them
    on; on one thread the fit gives the same arrays whatever the process set before (training's
    --threads, another command's, the machine's core count), so `vae-train prior` refits exactly
    what training wrote."""
    from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)


def fit_points(codes: Codes, fit_to: str, draws: int, seed: int) -> tuple[np.ndarray, str, int]:
    """The points a mixture is fitted to (M, D), what they are ("draws" or "means": an autoencoder
    has no posterior spread, so its draws are its means) and how many per image."""
    if fit_to not in FIT_TARGETS:
        raise ValueError(f"fit_to {fit_to!r} is not one of {FIT_TARGETS}")
    if fit_to == "means" or codes.log_variances is None:
        return codes.means, "means", 1
    return codes.draws(draws, np.random.default_rng(seed)), "draws", draws


@dataclass
class FittedMixture:
    """A fitted mixture as plain arrays, and how it was chosen."""

    weights: np.ndarray  # (K,)
    means: np.ndarray  # (K, D)
    scale_tril: np.ndarray  # (K, D, D), lower-triangular Cholesky factors of the covariances
    covariance_type: str
    fit_images: int  # training images (each gives draws_per_image points)
    heldout_images: int
    heldout_log_likelihood: float | None  # mean log-density per held-out code (nats); None: none
    candidates: list[int] = field(default_factory=list)  # component counts tried
    candidate_log_likelihoods: list[float] = field(default_factory=list)
    seconds: float = 0.0
    fit_to: str = "means"  # "draws" from each q(z | x), or the posterior "means" alone
    draws_per_image: int = 1

    @property
    def components(self) -> int:
        return len(self.weights)

    def summary(self) -> dict[str, Any]:
        return {
            "components": self.components,
            "covariance_type": self.covariance_type,
            "fit_to": self.fit_to,
            "draws_per_image": self.draws_per_image,
            "fit_images": self.fit_images,
            "heldout_images": self.heldout_images,
            "heldout_log_likelihood": self.heldout_log_likelihood,
            "candidates": self.candidates,
            "candidate_log_likelihoods": self.candidate_log_likelihoods,
            "seconds": round(self.seconds, 2),
        }


def _scale_tril(gmm: Any, dim: int) -> np.ndarray:
    """Cholesky factors (K, D, D) of scikit-learn's covariances, whatever their type."""
    if gmm.covariance_type == "full":
        covariances = gmm.covariances_
    else:  # diag: (K, D) variances
        covariances = np.stack([np.diag(v) for v in gmm.covariances_])
    return np.linalg.cholesky(covariances.reshape(-1, dim, dim))


def fit_mixture(
    codes: np.ndarray,
    heldout: np.ndarray,
    components: Sequence[int] = (DEFAULT_COMPONENTS,),
    covariance_type: str = "full",
    seed: int = 0,
) -> FittedMixture:
    """Fit a Gaussian mixture to `codes` (N, D) for each count in `components`, and keep the one
    whose mean log-likelihood on `heldout` (M, D) is highest (with a single count, that one)."""
    from sklearn.mixture import GaussianMixture

    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(f"covariance_type {covariance_type!r} is not one of {COVARIANCE_TYPES}")
    if not components or min(components) < 1:
        raise ValueError(f"component counts must be positive, got {list(components)}")
    if max(components) > len(codes):
        raise ValueError(
            f"{max(components)} components need at least as many codes, got {len(codes)}"
        )
    started = time.perf_counter()
    best, best_score, scores = None, -np.inf, []
    for count in components:
        # reg_covar keeps collapsed latent dimensions (a beta-VAE's unused units) positive definite.
        gmm = GaussianMixture(
            count, covariance_type=covariance_type, reg_covar=1e-6, max_iter=200,
            random_state=seed,
        )  # fmt: skip
        gmm.fit(codes)
        score = float(gmm.score(heldout))  # mean log-density per held-out code
        scores.append(score)
        if score > best_score:
            best, best_score = gmm, score
    assert best is not None
    return FittedMixture(
        weights=best.weights_.astype(np.float64),
        means=best.means_.astype(np.float64),
        scale_tril=_scale_tril(best, codes.shape[1]),
        covariance_type=covariance_type,
        fit_images=len(codes),
        heldout_images=len(heldout),
        heldout_log_likelihood=best_score,
        candidates=[int(c) for c in components],
        candidate_log_likelihoods=scores,
        seconds=time.perf_counter() - started,
    )


def save_mixture(path: Path, mixture: FittedMixture, checkpoint_sha256: str) -> None:
    """Write the run's mixture as plain arrays (np.load(allow_pickle=False) reads it back)."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        np.savez(
            handle,
            weights=mixture.weights,
            means=mixture.means,
            scale_tril=mixture.scale_tril,
            checkpoint_sha256=np.array(checkpoint_sha256),
            summary=np.array(json.dumps(mixture.summary())),
        )
    temporary.replace(path)


def load_mixture(path: Path) -> tuple[dict[str, np.ndarray], str, dict[str, Any]]:
    """The arrays (weights, means, scale_tril), the checkpoint sha256 and the fit's summary."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in ("weights", "means", "scale_tril")}
        return arrays, str(npz["checkpoint_sha256"]), json.loads(str(npz["summary"]))


def sample_mixture(
    arrays: dict[str, np.ndarray], count: int, seed: int, temperature: float = 1.0
) -> np.ndarray:
    """`count` draws (count, D) float32 of means[k] + temperature * scale_tril[k] @ eps, k ~ weights.

    The same distribution the server draws from (server/dataplane/latent_space.py), from another random stream.
    """
    rng = np.random.default_rng(seed)
    weights = arrays["weights"] / arrays["weights"].sum()
    component = rng.choice(len(weights), size=count, p=weights)
    eps = rng.standard_normal((count, arrays["means"].shape[1]))
    z = arrays["means"][component] + temperature * np.einsum(
        "nij,nj->ni", arrays["scale_tril"][component], eps
    )
    return z.astype(np.float32)


def fit_codes_prior(
    codes: Codes,
    heldout: Codes | None,
    components: Sequence[int] = (DEFAULT_COMPONENTS,),
    covariance_type: str = "full",
    seed: int = 0,
    fit_to: str = "draws",
    draws: int = DEFAULT_DRAWS,
) -> FittedMixture:
    """Fit the mixture to the training codes' `fit_to` points, choosing the component count by the
    mean log-likelihood of the held-out codes' points (drawn alike, from another stream)."""
    points, fitted_to, per_image = fit_points(codes, fit_to, draws, seed)
    if heldout is None and len(components) > 1:
        raise ValueError(
            "choosing the number of components needs held-out codes, and the run has no "
            "validation split (val_size 0); give one component count"
        )
    heldout_points = points if heldout is None else fit_points(heldout, fit_to, draws, seed + 1)[0]
    mixture = fit_mixture(points, heldout_points, components, covariance_type, seed)
    mixture.fit_images, mixture.fit_to, mixture.draws_per_image = len(codes), fitted_to, per_image
    if heldout is None:  # scored on its own training points: not a held-out figure
        mixture.heldout_images, mixture.heldout_log_likelihood = 0, None
    else:
        mixture.heldout_images = len(heldout)
    return mixture


def fit_checkpoint_prior(
    checkpoint: Path,
    data,
    components: Sequence[int] = (DEFAULT_COMPONENTS,),
    covariance_type: str = "full",
    seed: int = 0,
    device: torch.device | str = "cpu",
    fit_to: str = "draws",
    draws: int = DEFAULT_DRAWS,
    output: Path | None = None,
) -> tuple[Path, FittedMixture]:
    """Fit the mixture prior of `checkpoint` to the posteriors of `data` (the run's DataBundle): the
    training split's, with the validation split's held out; write it beside the checkpoint (or to
    `output`)."""
    model = model_from_checkpoint(load_checkpoint(checkpoint)).to(device)
    with one_thread():
        codes, heldout = split_codes(model, data)
        mixture = fit_codes_prior(codes, heldout, components, covariance_type, seed, fit_to, draws)
    path = output or prior_path(checkpoint)
    save_mixture(path, mixture, sha256_file(checkpoint))
    return path, mixture


def update_metrics(run_dir: Path, key: str, block: dict[str, Any]) -> None:
    """Set `key` in the run's metrics.json to `block`, keeping everything else."""
    path = run_dir / "metrics.json"
    metrics = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    metrics[key] = block
    path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")

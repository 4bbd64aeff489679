"""The learned prior: a Gaussian mixture fitted to the training set's posterior means after training
(ex-post density estimation, Ghosh et al. 2020, "From Variational to Deterministic Autoencoders",
section 4), written beside the checkpoint as `<checkpoint>.prior.npz` of plain arrays.

Decoding draws from N(0, I) leaves the regions that the aggregate posterior never fills, and a plain
autoencoder's codes are not N(0, I) at all; a mixture fitted to where the codes actually are answers
both. `vae-export` copies the file into the model's repository version (server/repository.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.checkpoint import load_checkpoint, model_from_checkpoint, sha256_file
from training.config import TrainConfig
from training.models import GenerativeModel

COVARIANCE_TYPES = ("full", "diag")
DEFAULT_COMPONENTS = 10  # Ghosh et al. 2020 fit a 10-component GMM for their ex-post priors
Batch = tuple[torch.Tensor, torch.Tensor]


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


@torch.no_grad()
def posterior_means(model: GenerativeModel, batches: Iterable[Batch]) -> np.ndarray:
    """E_q[z | x] of every image of `batches` (the code itself for an autoencoder): (N, D) float64."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chunks = []
    for images, labels in batches:
        images, labels = images.to(device), labels.to(device)
        chunks.append(model.encode(images, model.condition_labels(labels))[0].double().cpu())
    model.train(was_training)
    return torch.cat(chunks).numpy()


@dataclass
class FittedMixture:
    """A fitted mixture as plain arrays, and how it was chosen."""

    weights: np.ndarray  # (K,)
    means: np.ndarray  # (K, D)
    scale_tril: np.ndarray  # (K, D, D), lower-triangular Cholesky factors of the covariances
    covariance_type: str
    fit_images: int
    heldout_images: int
    heldout_log_likelihood: float | None  # mean log-density per held-out code (nats); None: none
    candidates: list[int] = field(default_factory=list)  # component counts tried
    candidate_log_likelihoods: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def components(self) -> int:
        return len(self.weights)

    def summary(self) -> dict[str, Any]:
        return {
            "components": self.components,
            "covariance_type": self.covariance_type,
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


def _fit_batches(data) -> tuple[Iterable[Batch], Iterable[Batch] | None]:
    """Every row of the training split (in order, whatever the shuffling and sharding of training)
    and the validation split, or None without one, from a run's DataBundle."""
    from training.batching import TensorBatches

    if isinstance(data.train, TensorBatches):
        train = TensorBatches(data.train.data, 1000, shuffle=False).epoch()
    else:  # an image folder: this process's share of it
        train = data.train.epoch(0)
    return train, (data.val.epoch() if data.val is not None else None)


def fit_checkpoint_prior(
    checkpoint: Path,
    data,
    components: Sequence[int] = (DEFAULT_COMPONENTS,),
    covariance_type: str = "full",
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[Path, FittedMixture]:
    """Fit the mixture prior of `checkpoint` to the codes of `data` (the run's DataBundle): the
    training split's posterior means, the validation split held out; write it beside the checkpoint.
    """
    model = model_from_checkpoint(load_checkpoint(checkpoint)).to(device)
    train, heldout = _fit_batches(data)
    if heldout is None and len(components) > 1:
        raise ValueError(
            "choosing the number of components needs held-out codes, and the run has no "
            "validation split (val_size 0); give one component count"
        )
    with one_thread():
        codes = posterior_means(model, train)
        heldout_codes = codes if heldout is None else posterior_means(model, heldout)
        mixture = fit_mixture(codes, heldout_codes, components, covariance_type, seed)
    if heldout is None:  # scored on its own training codes: not a held-out figure
        mixture.heldout_images, mixture.heldout_log_likelihood = 0, None
    path = prior_path(checkpoint)
    save_mixture(path, mixture, sha256_file(checkpoint))
    return path, mixture


def fit_training_prior(config: TrainConfig, model: GenerativeModel, data, run_dir: Path) -> dict:
    """After training (called by training/train.py): the mixture prior of `<run_dir>/best.pt` with
    the run's component count(s), its summary recorded under `prior` in metrics.json; {} when the
    run asked for none (prior_components 0 and no candidates)."""
    if config.prior_components <= 0 and not config.prior_candidates:
        return {}
    components = config.prior_candidates or (config.prior_components,)
    device = next(model.parameters()).device
    path, mixture = fit_checkpoint_prior(
        run_dir / "best.pt", data, components, seed=config.seed, device=device
    )
    block = {"checkpoint": "best.pt", **mixture.summary()}
    update_metrics(run_dir, "prior", block)
    print(
        f"mixture prior: {mixture.components} components on {mixture.fit_images} training "
        f"codes -> {path}",
        flush=True,
    )
    return block


def fit_run_prior(
    run_dir: Path,
    which: str = "best",
    components: Sequence[int] = (DEFAULT_COMPONENTS,),
    covariance_type: str = "full",
    data_dir: str | None = None,
    device: str = "cpu",
) -> tuple[Path, FittedMixture]:
    """`vae-train prior`: fit the mixture of `<run_dir>/<which>.pt` on the run's own data splits and
    record its summary in the run's metrics.json."""
    from training.batching import load_data

    checkpoint = run_dir / f"{which}.pt"
    document = load_checkpoint(checkpoint)
    config = TrainConfig.from_dict(document.get("train_config", {}))
    if data_dir is not None:
        config.data_dir = data_dir
    data = load_data(config, torch.device(device))
    path, mixture = fit_checkpoint_prior(
        checkpoint, data, components, covariance_type, config.seed, device
    )
    update_metrics(run_dir, "prior", {"checkpoint": checkpoint.name, **mixture.summary()})
    return path, mixture


def update_metrics(run_dir: Path, key: str, block: dict[str, Any]) -> None:
    """Set `key` in the run's metrics.json to `block`, keeping everything else."""
    path = run_dir / "metrics.json"
    metrics = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    metrics[key] = block
    path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")

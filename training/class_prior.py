"""The mixture prior of a conditional model, one mixture per class, written beside the checkpoint as
`<checkpoint>.class_prior.npz` of plain arrays with a leading class axis.

A CVAE's encoder sees the label, yet its codes keep much of the class: pooled over classes they are
close to N(0, I) (a mixture fitted to all of them scores like N(0, I)), while each class's codes sit
in their own region, so a pooled draw decoded with label c is mostly a draw from another class's
region. Fitting one mixture to each class's codes (as training/prior.py fits one to all) and drawing
from the requested label's mixture answers that (reports/sample-quality measures both).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.checkpoint import load_checkpoint, model_from_checkpoint, sha256_file
from training.codes import Codes, split_codes
from training.prior import (
    DEFAULT_COMPONENTS,
    DEFAULT_DRAWS,
    FittedMixture,
    fit_codes_prior,
    one_thread,
    sample_mixture,
)

ARRAYS = ("weights", "means", "scale_tril")  # (L, K), (L, K, D), (L, K, D, D)


def class_prior_path(checkpoint: Path) -> Path:
    """runs/x/best.pt -> runs/x/best.class_prior.npz."""
    return checkpoint.with_suffix(".class_prior.npz")


def mixture_file(checkpoint: Path) -> Path:
    """The file behind a run's PRIOR_MIXTURE: the per-class mixtures where the run has them (a
    conditional model), else the mixture (training/prior.py)."""
    per_class = class_prior_path(checkpoint)
    return per_class if per_class.is_file() else checkpoint.with_suffix(".prior.npz")


@dataclass
class ClassMixtures:
    """One fitted mixture per class, all with the same component count, and how it was chosen."""

    mixtures: list[FittedMixture]  # index = class label
    candidates: list[int]
    candidate_log_likelihoods: list[float]  # held-out, averaged over every class's codes

    @property
    def components(self) -> int:
        return self.mixtures[0].components

    def arrays(self) -> dict[str, np.ndarray]:
        """weights (L, K), means (L, K, D), scale_tril (L, K, D, D), float64."""
        return {
            "weights": np.stack([m.weights for m in self.mixtures]),
            "means": np.stack([m.means for m in self.mixtures]),
            "scale_tril": np.stack([m.scale_tril for m in self.mixtures]),
        }

    def summary(self) -> dict[str, Any]:
        first = self.mixtures[0]
        scores = [m.heldout_log_likelihood for m in self.mixtures]
        return {
            "classes": len(self.mixtures),
            "components": self.components,
            "covariance_type": first.covariance_type,
            "fit_to": first.fit_to,
            "draws_per_image": first.draws_per_image,
            "fit_images": [m.fit_images for m in self.mixtures],
            "heldout_images": [m.heldout_images for m in self.mixtures],
            "heldout_log_likelihood": None
            if None in scores
            else self.candidate_log_likelihoods[self.candidates.index(self.components)],
            "candidates": self.candidates,
            "candidate_log_likelihoods": self.candidate_log_likelihoods,
            "seconds": round(sum(m.seconds for m in self.mixtures), 2),
        }


def fit_class_priors(
    codes: Codes,
    heldout: Codes | None,
    num_classes: int,
    components: Sequence[int] = (DEFAULT_COMPONENTS,),
    covariance_type: str = "full",
    seed: int = 0,
    fit_to: str = "draws",
    draws: int = DEFAULT_DRAWS,
) -> ClassMixtures:
    """A mixture per class c fitted to the codes labelled c (training/prior.py's fit); with several
    counts, the one whose held-out log-likelihood, averaged over all held-out codes, is highest."""
    if codes.labels is None or num_classes < 1:
        raise ValueError("a per-class prior needs labelled codes and at least one class")
    missing = [c for c in range(num_classes) if not np.any(codes.labels == c)]
    if missing:
        raise ValueError(f"classes {missing} have no training codes; a per-class prior needs each")
    best: list[FittedMixture] | None = None
    best_score, scores = -np.inf, []
    for count in components:
        fitted = []
        for label in range(num_classes):
            own = heldout.of_class(label) if heldout is not None else None
            own = own if own is not None and len(own) else None
            mixture = fit_codes_prior(
                codes.of_class(label), own, (count,), covariance_type, seed + label, fit_to, draws
            )
            fitted.append(mixture)
        if any(m.heldout_log_likelihood is None for m in fitted):
            score = -np.inf if len(components) > 1 else 0.0
        else:
            total = sum(m.heldout_images for m in fitted)
            score = sum(m.heldout_log_likelihood * m.heldout_images for m in fitted) / total
        scores.append(float(score))
        if best is None or score > best_score:
            best, best_score = fitted, score
    assert best is not None
    return ClassMixtures(best, [int(c) for c in components], scores)


def save_class_mixtures(path: Path, fitted: ClassMixtures, checkpoint_sha256: str) -> None:
    """Write the per-class mixtures as plain arrays (np.load(allow_pickle=False) reads them)."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        np.savez(
            handle,
            **fitted.arrays(),
            checkpoint_sha256=np.array(checkpoint_sha256),
            summary=np.array(json.dumps(fitted.summary())),
        )
    temporary.replace(path)


def load_class_mixtures(path: Path) -> tuple[dict[str, np.ndarray], str, dict[str, Any]]:
    """The stacked arrays (weights, means, scale_tril), the checkpoint sha256, the fit's summary."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in ARRAYS}
        return arrays, str(npz["checkpoint_sha256"]), json.loads(str(npz["summary"]))


def sample_class_mixture(
    arrays: dict[str, np.ndarray], labels: np.ndarray, seed: int, temperature: float = 1.0
) -> np.ndarray:
    """One draw (N, D) float32 per label of `labels` (N,), from that label's mixture."""
    z = np.empty((len(labels), arrays["means"].shape[2]), dtype=np.float32)
    for label in np.unique(labels):
        rows = labels == label
        one = {name: arrays[name][label] for name in ARRAYS}
        z[rows] = sample_mixture(one, int(rows.sum()), seed * 1000 + int(label), temperature)
    return z


def fit_checkpoint_class_prior(
    checkpoint: Path,
    data: Any,
    components: Sequence[int] = (DEFAULT_COMPONENTS,),
    covariance_type: str = "full",
    seed: int = 0,
    device: torch.device | str = "cpu",
    fit_to: str = "draws",
    draws: int = DEFAULT_DRAWS,
) -> tuple[Path, ClassMixtures]:
    """Fit the per-class mixtures of a conditional `checkpoint` to the posteriors of `data` (the
    run's DataBundle), the validation split held out; write them beside the checkpoint."""
    model = model_from_checkpoint(load_checkpoint(checkpoint)).to(device)
    with one_thread():  # the same arrays whatever the thread count (training/prior.py)
        codes, heldout = split_codes(model, data)
        fitted = fit_class_priors(
            codes, heldout, model.config.num_classes, components, covariance_type, seed, fit_to,
            draws,
        )  # fmt: skip
    path = class_prior_path(checkpoint)
    save_class_mixtures(path, fitted, sha256_file(checkpoint))
    return path, fitted

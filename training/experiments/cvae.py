"""Study: the conditional VAE (Sohn et al. 2015): samples per class and paths between classes."""

from __future__ import annotations

from pathlib import Path

import torch

from training.data import TensorDataset
from training.experiments.common import (
    ExperimentSettings,
    active_units,
    elbo_figures,
    load_test_set,
    model_config,
    posterior_means,
    train_run,
)
from training.experiments.plots import save_image_panels
from training.experiments.report import StudyResult
from training.models import GenerativeModel
from training.models.mlp import MLPVAE

STUDY = "cvae"
SAMPLES_PER_CLASS = 8
CLASS_PAIRS = ((0, 9), (1, 8), (2, 7), (3, 5))  # start and end class of each interpolation row
COLUMNS = (
    ("class", "class", ""),
    ("sample_agreement", "samples nearest their class mean", ".3f"),
    ("test_agreement", "test images nearest their class mean", ".3f"),
)


def nearest_class_mean(images: torch.Tensor, class_means: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W), (K, C*H*W) -> (N,) index of the nearest class mean in pixel space."""
    return torch.cdist(images.flatten(1), class_means).argmin(dim=1)


@torch.no_grad()
def decode_mixed_class(model: GenerativeModel, z: torch.Tensor, condition: torch.Tensor):
    """Decode (N, D) codes with soft class vectors (N, K) in place of one-hot labels."""
    if not isinstance(model, MLPVAE):
        raise TypeError("class interpolation feeds soft labels to the MLP decoder; got "
                        f"{type(model).__name__}: run the cvae study with the MLP")  # fmt: skip
    logits = model.decoder_body(torch.cat([z, condition], dim=1))  # (N, C*H*W)
    return torch.sigmoid(logits).view(-1, *model.config.image_shape)


def class_paths(model: GenerativeModel, classes: int, steps: int = 10) -> torch.Tensor:
    """For each class pair: one prior code, its class vector moved linearly from one to the other."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        z = torch.randn(len(CLASS_PAIRS), model.config.latent_dim)  # (P, D)
    weights = torch.linspace(0, 1, steps).view(1, steps, 1)  # (1, S, 1)
    eye = torch.eye(classes)
    start = eye[[a for a, _ in CLASS_PAIRS]].unsqueeze(1)  # (P, 1, K)
    end = eye[[b for _, b in CLASS_PAIRS]].unsqueeze(1)
    condition = torch.lerp(start, end, weights).reshape(-1, classes)  # (P*S, K)
    return decode_mixed_class(model, z.repeat_interleave(steps, dim=0), condition)


def run(settings: ExperimentSettings, folder: Path) -> StudyResult:
    test: TensorDataset = load_test_set(settings)
    classes = len(test.class_names)
    config = model_config(settings, kind="cvae", num_classes=classes)
    trained = train_run(settings, STUDY, "cvae", config)
    model = trained.model
    labels = torch.arange(classes).repeat_interleave(SAMPLES_PER_CLASS)  # one row per class
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        samples = model.sample(len(labels), labels)  # (K*8, C, H, W)
        many_labels = torch.arange(classes).repeat(50)
        many = model.sample(len(many_labels), many_labels)
    class_means = torch.stack(
        [test.images[test.labels == k].flatten(1).mean(dim=0) for k in range(classes)]
    )  # (K, C*H*W)
    sample_hits = nearest_class_mean(many, class_means) == many_labels
    test_hits = nearest_class_mean(test.images, class_means) == test.labels
    rows = []
    for k, name in enumerate(test.class_names):
        rows.append({
            "class": name,
            "sample_agreement": float(sample_hits[many_labels == k].float().mean()),
            "test_agreement": float(test_hits[test.labels == k].float().mean()),
        })  # fmt: skip
    overall = {
        "class": "all",
        "sample_agreement": float(sample_hits.float().mean()),
        "test_agreement": float(test_hits.float().mean()),
        **elbo_figures(trained),
        "active_units": active_units(posterior_means(model, test)),
        "latent_dim": model.config.latent_dim,
    }
    rows.append(overall)
    pair_names = ", ".join(
        f"{test.class_names[a]} -> {test.class_names[b]}" for a, b in CLASS_PAIRS
    )
    plots = [
        save_image_panels(
            folder / "samples_per_class.png",
            [
                ("one row per class", samples, SAMPLES_PER_CLASS),
            ],
        ),
        save_image_panels(
            folder / "class_interpolation.png",
            [
                ("fixed z, class vector moved", class_paths(model, classes), 10),
            ],
        ),
    ]
    notes = [
        f"cvae test -ELBO {overall['test_neg_elbo']:.2f}, reconstruction "
        f"{overall['test_reconstruction']:.2f}, KL {overall['test_kl']:.2f}"
        + (f", IWAE NLL {overall['test_iwae_nll']:.2f}" if "test_iwae_nll" in overall else "")
        + f"; active units {overall['active_units']} of {overall['latent_dim']}.",
        "agreement: a nearest-class-mean classifier in pixel space (class means of the test set) "
        f"applied to {len(many_labels)} samples ({len(many_labels) // classes} per class) and, "
        "for reference, to the test images themselves; a crude check that the label steers the "
        "decoder, not a measure of sample quality.",
        f"class interpolation rows: {pair_names}; the code z is one prior draw per row.",
    ]
    return StudyResult(STUDY, "Conditional VAE", rows, COLUMNS, plots, notes)

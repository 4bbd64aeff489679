"""Pictures written to the run directory: reconstructions beside originals, prior samples, the
latent scatter coloured by class (PCA to 2-D for wider latents), interpolations between test
images, the 2-D latent manifold grid, and loss curves."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from training.models import GenerativeModel


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    return plt


def pca_2d(points: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N, 2): projection on the two leading principal components (identity for D = 2)."""
    if points.shape[1] <= 2:
        return points
    centred = points - points.mean(dim=0, keepdim=True)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)  # v: (D, D), rows are components
    return centred @ v[:2].T  # (N, 2)


def gaussian_quantiles(count: int) -> torch.Tensor:
    """`count` evenly spaced quantiles of N(0, 1) between 5% and 95%: sqrt(2) * erfinv(2p - 1)."""
    p = torch.linspace(0.05, 0.95, count)
    return math.sqrt(2.0) * torch.erfinv(2 * p - 1)


def reconstructions(model, images, labels, path: Path) -> None:
    from torchvision.utils import save_image

    originals, labels = images[:8], labels[:8]
    mean, _ = model.encode(originals, model.condition_labels(labels))
    rebuilt = model.decode(mean, model.condition_labels(labels))
    save_image(torch.cat([originals, rebuilt]).cpu(), path, nrow=len(originals))  # originals above


def samples(model, path: Path, count: int = 64) -> None:
    from torchvision.utils import save_image

    labels = None
    if model.config.num_classes:  # one row per class
        device = next(model.parameters()).device
        labels = torch.arange(count, device=device) // 8 % model.config.num_classes
    save_image(model.sample(count, labels).cpu(), path, nrow=8)


def interpolations(model, images, labels, path: Path, pairs: int = 4, steps: int = 10) -> None:
    """Rows of decoded points on the line between the posterior means of two test images."""
    from torchvision.utils import save_image

    pairs = min(pairs, len(images) // 2)
    start, end = images[:pairs], images[pairs : 2 * pairs]
    start_labels = labels[:pairs]
    z_start, _ = model.encode(start, model.condition_labels(start_labels))
    z_end, _ = model.encode(end, model.condition_labels(labels[pairs : 2 * pairs]))
    weights = torch.linspace(0, 1, steps, device=images.device).view(1, steps, 1)
    z = torch.lerp(z_start.unsqueeze(1), z_end.unsqueeze(1), weights)  # (pairs, steps, D)
    row_labels = start_labels.repeat_interleave(steps)
    decoded = model.decode(z.reshape(pairs * steps, -1), model.condition_labels(row_labels))
    save_image(decoded.cpu(), path, nrow=steps)


def manifold(model, path: Path, side: int = 20) -> None:
    """For 2-D latents: decode a side x side grid of N(0, I) quantiles (Kingma & Welling 2014, fig. 4)."""
    from torchvision.utils import save_image

    device = next(model.parameters()).device
    q = gaussian_quantiles(side).to(device)
    grid = torch.stack(torch.meshgrid(q.flip(0), q, indexing="ij"), dim=-1)  # (side, side, 2)
    z = grid.reshape(-1, 2)[:, [1, 0]]  # x along the row, y up the page
    labels = None
    if model.config.num_classes:
        labels = torch.zeros(len(z), dtype=torch.int64, device=device)
    save_image(model.decode(z, labels).cpu(), path, nrow=side)


def latent_scatter(model, images, labels, class_names, path: Path) -> None:
    mean, _ = model.encode(images, model.condition_labels(labels))
    points = pca_2d(mean.float().cpu())
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 6))
    scatter = axes.scatter(points[:, 0], points[:, 1], c=labels.cpu(), cmap="tab10", s=3)
    if class_names:
        handles, _ = scatter.legend_elements()
        axes.legend(handles, class_names, fontsize=7, markerscale=0.8, loc="best")
    kind = "latent means" if mean.shape[1] == 2 else f"PCA of {mean.shape[1]}-D latent means"
    axes.set_title(f"{kind}, {len(points)} test images")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def loss_curves(history: list[dict[str, Any]], path: Path) -> None:
    plt = _pyplot()
    epochs = [record["epoch"] for record in history]
    figure, panels = plt.subplots(1, 3, figsize=(13, 3.8))
    for panel, term in zip(panels, ("loss", "reconstruction", "kl"), strict=True):
        for split in ("train", "val", "test"):
            key = f"{split}_{term}"
            if all(key in record for record in history):
                panel.plot(epochs, [record[key] for record in history], marker=".", label=split)
        panel.set_title(term)
        panel.set_xlabel("epoch")
        panel.legend()
    panels[0].set_ylabel("nats per image")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


@torch.no_grad()
def save_all(
    model: GenerativeModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: tuple[str, ...],
    history: list[dict[str, Any]],
    run_dir: Path,
) -> list[str]:
    """Every picture that applies to this model; returns the file names written."""
    model.eval()
    names = ("reconstructions", "interpolation", "latent_scatter", "loss_curves", "samples")
    written = [f"{name}.png" for name in names]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        reconstructions(model, images, labels, run_dir / written[0])
        interpolations(model, images, labels, run_dir / written[1])
        latent_scatter(model, images, labels, class_names, run_dir / written[2])
        loss_curves(history, run_dir / written[3])
        # For the plain autoencoder these prior draws show why it is a poor generator.
        samples(model, run_dir / written[4])
        if model.config.latent_dim == 2:
            manifold(model, run_dir / "manifold.png")
            written.append("manifold.png")
    return written

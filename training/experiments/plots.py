"""Small PNGs for the reports: panels of image grids and line plots (matplotlib, Agg, low dpi)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

DPI = 72  # keeps a committed figure well under 100 KB


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> str:
    """Save at low dpi, then re-encode with a 32-colour palette: about a quarter of the RGBA size."""
    from PIL import Image

    figure.savefig(path, dpi=DPI)
    with Image.open(path) as image:
        palette = image.convert("RGB").quantize(colors=32)
    palette.save(path, optimize=True)
    return path.name


def image_grid(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] -> (H', W', C) for imshow, with a 1-pixel gap between images."""
    from torchvision.utils import make_grid

    grid = make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=1, pad_value=1.0)
    return grid.permute(1, 2, 0)  # (H', W', C)


def save_image_panels(
    path: Path, panels: Sequence[tuple[str, torch.Tensor, int]], title: str = ""
) -> str:
    """One row of titled image grids: each panel is (title, images (N, C, H, W), images per row)."""
    plt = _pyplot()
    grids = [image_grid(images, nrow) for _, images, nrow in panels]
    width = 2.6 if max(g.shape[1] / g.shape[0] for g in grids) < 1.5 else 4.2  # inches per panel
    height = width * max(g.shape[0] / g.shape[1] for g in grids) + 0.4  # room for the titles
    figure, axes = plt.subplots(
        1, len(panels), figsize=(width * len(panels), height), squeeze=False
    )
    for axis, (name, _, _), grid in zip(axes[0], panels, grids, strict=True):
        axis.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1)
        axis.set_title(name, fontsize=9)
        axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    name = _save(figure, path)
    plt.close(figure)
    return name


def sweep_curves(
    settings: Sequence[float], rows: Sequence[dict], panels: Sequence[tuple[str, str]]
) -> dict[str, dict[str, tuple[Sequence[float], list[float]]]]:
    """One single-line panel per (title, row key): the figure against the swept setting."""
    return {title: {"": (settings, [row[key] for row in rows])} for title, key in panels}


def save_line_panels(
    path: Path,
    x_label: str,
    panels: dict[str, dict[str, tuple[Sequence[float], Sequence[float]]]],
    log_x: bool = False,
) -> str:
    """Side-by-side line plots: panel title -> series label -> (x values, y values)."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 2.9), squeeze=False)
    for axis, (name, series) in zip(axes[0], panels.items(), strict=True):
        for label, (xs, ys) in series.items():
            axis.plot(list(xs), list(ys), marker="o", markersize=3, label=label)
        axis.set_title(name, fontsize=9)
        axis.set_xlabel(x_label, fontsize=8)
        axis.tick_params(labelsize=7)
        if log_x:
            axis.set_xscale("log")
        if len(series) > 1:
            axis.legend(fontsize=7)
    figure.tight_layout()
    name = _save(figure, path)
    plt.close(figure)
    return name

"""Study: Bernoulli (BCE) against Gaussian (MSE) decoders: curves, figures, reconstructions."""

from __future__ import annotations

from pathlib import Path

import torch

from training.experiments.common import (
    ExperimentSettings,
    load_test_set,
    model_config,
    reconstruction_errors,
    standard_figures,
    train_run,
)
from training.experiments.plots import save_image_panels, save_line_panels
from training.experiments.report import StudyResult

STUDY = "likelihood"
LIKELIHOODS = ("bernoulli", "gaussian")
COLUMNS = (
    ("likelihood", "likelihood", ""),
    ("test_neg_elbo", "test loss (own units)", ".2f"),
    ("test_kl", "test KL", ".2f"),
    ("mean_code_bce", "BCE of reconstructions", ".2f"),
    ("mean_code_sse", "squared error of reconstructions", ".2f"),
    ("test_iwae_nll", "test IWAE NLL", ".2f"),
    ("active_units", "active units", "d"),
    ("sample_rms_to_nearest", "prior sample RMS to nearest", ".4f"),
)


def run(settings: ExperimentSettings, folder: Path) -> StudyResult:
    test = load_test_set(settings)
    rows, runs = [], []
    for likelihood in LIKELIHOODS:
        trained = train_run(
            settings, STUDY, likelihood, model_config(settings, likelihood=likelihood)
        )
        runs.append(trained)
        row = {"likelihood": likelihood, **standard_figures(trained, test)}
        rows.append({**row, **reconstruction_errors(trained.model, test)})
    panels: dict[str, dict] = {}
    for trained in runs:
        epochs = [record["epoch"] for record in trained.history]
        panels[f"{trained.name}: loss (own units)"] = {
            split: (epochs, [record[f"{split}_loss"] for record in trained.history])
            for split in ("train", "test")
        }
    panels["test KL (nats)"] = {
        trained.name: (
            [r["epoch"] for r in trained.history],
            [r["test_kl"] for r in trained.history],
        )
        for trained in runs
    }
    originals = test.images[:8]  # shown as 2 rows of 4
    with torch.no_grad():
        rebuilt = [t.model.decode(t.model.encode(originals)[0]) for t in runs]
    plots = [
        save_line_panels(folder / "curves.png", "epoch", panels),
        save_image_panels(
            folder / "reconstructions.png",
            [
                ("test images", originals, 4),
                *[
                    (f"{t.name} decoder", images, 4)
                    for t, images in zip(runs, rebuilt, strict=True)
                ],
            ],
        ),
    ]
    notes = [
        "test loss is each model's own -ELBO: BCE + KL for bernoulli, squared error + KL for "
        "gaussian (a Gaussian with variance 1/2, up to a constant; see training/losses.py), so "
        "the two columns are not comparable; the BCE and squared-error columns measure the decoded "
        "posterior means of both models on the same scale.",
        "IWAE NLL needs a density on the pixels: only the bernoulli model has one.",
    ]
    return StudyResult(STUDY, "BCE vs MSE", rows, COLUMNS, plots, notes)

"""Study: the deterministic autoencoder against the VAE of the same size, as generators."""

from __future__ import annotations

from pathlib import Path

from training.experiments.common import (
    ExperimentSettings,
    interpolation_frames,
    interpolation_smoothness,
    load_test_set,
    model_config,
    prior_samples,
    standard_figures,
    train_run,
)
from training.experiments.plots import save_image_panels
from training.experiments.report import StudyResult

STUDY = "ae-vs-vae"
COLUMNS = (
    ("model", "model", ""),
    ("test_reconstruction", "test recon.", ".2f"),
    ("test_kl", "test KL", ".2f"),
    ("active_units", "active units", "d"),
    ("code_mean_abs", "mean abs code mean", ".3f"),
    ("code_std", "mean code std", ".3f"),
    ("aggregate_kl", "codes' KL to N(0,I)", ".1f"),
    ("sample_rms_to_nearest", "prior sample RMS to nearest test image", ".4f"),
    ("interp_step_mean", "interp. step", ".4f"),
    ("interp_step_cv", "interp. step CV", ".3f"),
)


def run(settings: ExperimentSettings, folder: Path) -> StudyResult:
    test = load_test_set(settings)
    rows, sample_panels, path_panels = [], [], []
    for kind in ("ae", "vae"):
        trained = train_run(settings, STUDY, kind, model_config(settings, kind=kind))
        row = {"model": kind, **standard_figures(trained, test)}
        row.update(interpolation_smoothness(trained.model, test, settings.interpolation_pairs))
        if kind == "ae":  # no posterior: the "loss" is the reconstruction alone, not an ELBO
            row.update(test_kl=None, test_neg_elbo=None)
        rows.append(row)
        sample_panels.append((f"{kind}: decoded N(0, I)", prior_samples(trained.model), 8))
        frames = interpolation_frames(trained.model, test, pairs=4)  # (4, 10, C, H, W)
        path_panels.append((f"{kind}: interpolations", frames.flatten(0, 1), frames.shape[1]))
    plots = [
        save_image_panels(folder / "samples.png", sample_panels),
        save_image_panels(folder / "interpolations.png", path_panels),
    ]
    notes = [
        "active units: latent dimensions whose posterior mean varies across the test set with "
        "variance > 0.01 (Burda et al. 2015, section 5.2).",
        "codes' KL to N(0,I): the test codes moment-matched by a diagonal Gaussian, its KL to the "
        "prior; 0 when the codes fill the prior the decoder is sampled from.",
        "prior sample RMS: root-mean-square pixel distance from 256 decoded N(0, I) draws to their "
        "nearest test image; lower means closer to some real image (a crude figure: it also "
        "rewards dark, low-contrast images).",
        "interp. step: mean absolute pixel change between consecutive frames of a 10-frame "
        "straight-line path between two test codes; CV is its standard deviation over the path "
        "divided by its mean (0: perfectly even change), averaged over "
        f"{settings.interpolation_pairs} pairs.",
    ]
    return StudyResult(STUDY, "AE vs VAE", rows, COLUMNS, plots, notes)

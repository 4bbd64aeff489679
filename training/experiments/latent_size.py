"""Study: the latent size in {2, 10, 20, 50, 100}: reconstruction against KL against samples."""

from __future__ import annotations

from pathlib import Path

from training.experiments.common import (
    ExperimentSettings,
    load_test_set,
    model_config,
    prior_samples,
    standard_figures,
    train_run,
)
from training.experiments.plots import save_image_panels, save_line_panels, sweep_curves
from training.experiments.report import StudyResult

STUDY = "latent-size"
LATENT_SIZES = (2, 10, 20, 50, 100)  # the values; 20 is the classic example's
COLUMNS = (
    ("latent_dim", "latent size", "d"),
    ("test_reconstruction", "test recon.", ".2f"),
    ("test_kl", "test KL", ".2f"),
    ("test_neg_elbo", "test -ELBO", ".2f"),
    ("test_iwae_nll", "test IWAE NLL", ".2f"),
    ("active_units", "active units", "d"),
    ("sample_rms_to_nearest", "prior sample RMS to nearest", ".4f"),
)


def run(settings: ExperimentSettings, folder: Path) -> StudyResult:
    test = load_test_set(settings)
    rows, panels = [], []
    for size in LATENT_SIZES:
        config = model_config(settings, latent_dim=size)
        trained = train_run(settings, STUDY, f"latent-{size}", config)
        rows.append(standard_figures(trained, test))
        panels.append((f"latent {size}", prior_samples(trained.model, 36), 6))
    curves = sweep_curves(
        LATENT_SIZES,
        rows,
        (
            ("test reconstruction (nats)", "test_reconstruction"),
            ("test KL (nats)", "test_kl"),
            ("test -ELBO (nats)", "test_neg_elbo"),
            ("active units", "active_units"),
        ),
    )
    plots = [
        save_line_panels(folder / "figures_vs_size.png", "latent size", curves, log_x=True),
        save_image_panels(folder / "samples.png", panels),
    ]
    notes = [
        "active units: Var_x(E_q[z_u | x]) > 0.01 (Burda et al. 2015, section 5.2); at most the "
        "latent size.",
    ]
    return StudyResult(STUDY, "Latent size", rows, COLUMNS, plots, notes)

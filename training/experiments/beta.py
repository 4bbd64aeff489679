"""Study: beta-VAE, the KL term weighted by beta in {0.5, 1, 2, 4} (Higgins et al. 2017)."""

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

STUDY = "beta"
BETAS = (0.5, 1.0, 2.0, 4.0)  # the values: below, at and above the ELBO's beta = 1
COLUMNS = (
    ("beta", "beta", ""),
    ("test_reconstruction", "test recon.", ".2f"),
    ("test_kl", "test KL", ".2f"),
    ("test_neg_elbo", "test -ELBO (beta=1)", ".2f"),
    ("test_iwae_nll", "test IWAE NLL", ".2f"),
    ("active_units", "active units", "d"),
    ("sample_rms_to_nearest", "prior sample RMS to nearest", ".4f"),
)


def run(settings: ExperimentSettings, folder: Path) -> StudyResult:
    test = load_test_set(settings)
    rows, panels = [], []
    for beta in BETAS:
        trained = train_run(settings, STUDY, f"beta-{beta:g}", model_config(settings), beta=beta)
        rows.append({"beta": beta, **standard_figures(trained, test)})
        panels.append((f"beta = {beta:g}", prior_samples(trained.model, 36), 6))
    curves = sweep_curves(
        BETAS,
        rows,
        (
            ("test reconstruction (nats)", "test_reconstruction"),
            ("test KL (nats)", "test_kl"),
            ("active units", "active_units"),
        ),
    )
    plots = [
        save_line_panels(folder / "figures_vs_beta.png", "beta", curves, log_x=True),
        save_image_panels(folder / "samples.png", panels),
    ]
    notes = [
        "Each model is trained on reconstruction + beta * KL; the test columns are measured with "
        "beta = 1, so the -ELBO column is the same bound for every row.",
        "active units: Var_x(E_q[z_u | x]) > 0.01 (Burda et al. 2015, section 5.2).",
    ]
    return StudyResult(STUDY, "beta-VAE", rows, COLUMNS, plots, notes)

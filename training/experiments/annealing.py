"""Study: KL annealing: none, linear warm-up (Bowman et al. 2016), cyclical (Fu et al. 2019)."""

from __future__ import annotations

from pathlib import Path

from training.experiments.common import (
    ExperimentSettings,
    load_test_set,
    model_config,
    standard_figures,
    train_run,
)
from training.experiments.plots import save_line_panels
from training.experiments.report import StudyResult

STUDY = "annealing"
COLUMNS = (
    ("schedule", "schedule", ""),
    ("test_neg_elbo", "test -ELBO", ".2f"),
    ("test_reconstruction", "test recon.", ".2f"),
    ("test_kl", "test KL", ".2f"),
    ("test_iwae_nll", "test IWAE NLL", ".2f"),
    ("active_units", "active units", "d"),
)


def schedules(epochs: int) -> dict[str, dict]:
    """TrainConfig overrides per schedule; the linear warm-up takes the first half of training."""
    return {
        "none": {"kl_anneal": "none"},
        "linear": {
            "kl_anneal": "linear",
            "kl_warmup": max(1, epochs // 2),
            "kl_warmup_unit": "epoch",
        },
        "cyclical": {
            "kl_anneal": "cyclical",
            "kl_cycles": 4,
            "kl_cycle_ratio": 0.5,
        },  # Fu et al.'s M, R
    }


def run(settings: ExperimentSettings, folder: Path) -> StudyResult:
    test = load_test_set(settings)
    rows, runs = [], []
    for name, overrides in schedules(settings.epochs).items():
        trained = train_run(settings, STUDY, name, model_config(settings), **overrides)
        runs.append(trained)
        rows.append({"schedule": name, **overrides, **standard_figures(trained, test)})

    def series(key: str) -> dict:
        return {
            t.name: ([r["epoch"] for r in t.history], [r[key] for r in t.history]) for t in runs
        }

    plots = [
        save_line_panels(
            folder / "curves.png",
            "epoch",
            {
                "test -ELBO (nats)": series("test_loss"),
                "test KL (nats)": series("test_kl"),
                "KL weight at epoch end": series("kl_weight"),
            },
        ),
    ]
    notes = [
        "All test figures use beta = 1 whatever the schedule; the KL weight only shapes training.",
        "linear: the weight rises from 0 to 1 over the first half of the epochs; cyclical: 4 "
        "cycles, each rising over its first half and then held at 1 (Fu et al. 2019).",
        "active units: Var_x(E_q[z_u | x]) > 0.01 (Burda et al. 2015, section 5.2).",
    ]
    return StudyResult(STUDY, "KL annealing", rows, COLUMNS, plots, notes)

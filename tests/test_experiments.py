"""The experiment studies: each one's quick path on tiny settings, the figures, and the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from training.experiments.common import active_units, latent_statistics
from training.experiments.report import markdown_table
from training.experiments.runner import (
    STUDIES,
    UnknownStudy,
    main,
    parse_settings,
    run_study,
)

TINY_FLAGS = [
    "--dataset", "mnist", "--epochs", "1", "--train-subset", "300", "--max-steps", "5",
    "--hidden-dims", "32", "--latent-dim", "4", "--val-size", "200", "--iwae-samples", "5",
    "--iwae-images", "100", "--analysis-images", "300", "--interpolation-pairs", "10",
]  # fmt: skip
TINY_LATENT = 4
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    """Every study run once through `main`, a handful of steps each, on real MNIST."""
    root = tmp_path_factory.mktemp("experiments")
    flags = [*TINY_FLAGS, "--data-dir", str(mnist_dir)]
    flags += ["--out", str(root / "reports"), "--runs-dir", str(root / "runs")]
    assert main(["all", *flags]) == 0
    return root / "reports"


def results(reports: Path, study: str) -> dict:
    return json.loads((reports / study / "results.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("study", list(STUDIES))
def test_study_writes_its_table_and_small_pngs(reports: Path, study: str) -> None:
    document = results(reports, study)
    readme = (reports / study / "README.md").read_text(encoding="utf-8")
    assert document["plots"], f"{study} drew no plots"
    for name in document["plots"]:
        data = (reports / study / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) < 100_000, name
        assert f"![{name}]({name})" in readme
    assert readme.count("\n| ") == len(document["rows"]) + 1  # header plus one line per row
    assert document["command"].startswith(f"python -m training.experiments {study} ")


@pytest.mark.parametrize(
    ("study", "key", "expected"),
    [
        ("ae-vs-vae", "model", ["ae", "vae"]),
        ("beta", "beta", [0.5, 1.0, 2.0, 4.0]),
        ("latent-size", "latent_dim", [2, 10, 20, 50, 100]),
        ("likelihood", "likelihood", ["bernoulli", "gaussian"]),
        ("annealing", "schedule", ["none", "linear", "cyclical"]),
        ("cvae", "class", [*(str(d) for d in range(10)), "all"]),
    ],
)
def test_rows_follow_the_study_design(reports: Path, study: str, key: str, expected: list) -> None:
    assert [row[key] for row in results(reports, study)["rows"]] == expected


def test_numeric_figures_are_finite(reports: Path) -> None:
    for study in STUDIES:
        for row in results(reports, study)["rows"]:
            for key, value in row.items():
                if isinstance(value, float):
                    assert math.isfinite(value), f"{study}: {key} = {value}"


def test_active_units_lie_within_the_latent_size(reports: Path) -> None:
    counted = 0
    for study in STUDIES:
        for row in results(reports, study)["rows"]:
            if "active_units" in row:
                assert 0 <= row["active_units"] <= row["latent_dim"], (study, row)
                counted += 1
    assert counted == 2 + 4 + 5 + 1 + 2 + 3  # every trained model reports them


def test_the_autoencoder_has_no_kl_and_the_vae_a_positive_one(reports: Path) -> None:
    ae, vae = results(reports, "ae-vs-vae")["rows"]
    assert ae["test_kl"] is None and ae["test_neg_elbo"] is None
    assert vae["test_kl"] > 0 and vae["test_neg_elbo"] > vae["test_reconstruction"]


def test_only_the_bernoulli_decoder_gets_an_iwae_bound(reports: Path) -> None:
    bernoulli, gaussian = results(reports, "likelihood")["rows"]
    assert bernoulli["test_iwae_nll"] > 0
    assert "test_iwae_nll" not in gaussian


def test_agreement_figures_are_fractions(reports: Path) -> None:
    for row in results(reports, "cvae")["rows"]:
        assert 0.0 <= row["sample_agreement"] <= 1.0 and 0.0 <= row["test_agreement"] <= 1.0


def test_settings_are_recorded_with_the_figures(reports: Path) -> None:
    settings = results(reports, "beta")["settings"]
    assert settings["dataset"] == "mnist" and settings["max_steps"] == 5
    assert settings["hidden_dims"] == [32] and settings["quick"] is False


def test_active_units_count_dimensions_whose_means_vary() -> None:
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(2000, 3, generator=generator)
    means = noise * torch.tensor([1.0, 0.5, 0.01])  # variances about 1, 0.25 and 1e-4
    assert active_units(means) == 2


def test_latent_statistics_are_near_zero_kl_for_prior_codes() -> None:
    generator = torch.Generator().manual_seed(0)
    prior_codes = torch.randn(20_000, TINY_LATENT, generator=generator)
    assert latent_statistics(prior_codes)["aggregate_kl"] < 0.01
    assert latent_statistics(prior_codes * 3 + 2)["aggregate_kl"] > 10


def test_markdown_table_shows_missing_figures_as_a_dash() -> None:
    table = markdown_table([{"a": 1.23456, "b": None}], [("a", "A", ".2f"), ("b", "B", ".2f")])
    assert table.splitlines() == ["| A | B |", "|---|---|", "| 1.23 | — |"]


def test_quick_mode_sets_the_small_run_and_flags_override_it() -> None:
    quick = parse_settings(["beta", "--quick"])[1]
    assert (quick.quick, quick.epochs, quick.train_subset) == (True, 2, 10_000)
    custom = parse_settings(["beta", "--quick", "--epochs", "3"])[1]
    assert custom.epochs == 3
    full = parse_settings(["beta"])[1]
    assert (full.quick, full.epochs, full.train_subset) == (False, 10, 0)


def test_an_unknown_study_is_refused_with_the_allowed_names(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["betas"])
    assert (
        "ae-vs-vae, beta, latent-size, cvae, likelihood, annealing, all" in capsys.readouterr().err
    )
    with pytest.raises(UnknownStudy, match="latent-size"):
        run_study("betas", parse_settings(["beta"])[1])


def test_vae_train_experiment_refuses_an_unknown_study_and_lists_the_studies(capsys):
    from training.cli import main as vae_train

    with pytest.raises(SystemExit) as exit_info:
        vae_train(["experiment", "nope"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "unknown study 'nope'" in message and "latent-size" in message

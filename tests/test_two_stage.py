"""The two-stage prior (Dai & Wipf 2019): a second VAE trained on a run's latent codes, whose decoder
maps noise to codes; trained by `vae-train prior --kind two-stage` and at the end of training."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from tests.conftest import tiny_train_config
from training.checkpoint import CheckpointError, sha256_file
from training.cli import main as vae_train
from training.codes import Codes
from training.two_stage import (
    TwoStageConfig,
    load_two_stage,
    noise,
    sample_two_stage,
    save_two_stage,
    train_two_stage,
)

CENTRE, SCALE = np.array([3.0, -2.0, 0.5]), np.array([2.0, 0.5, 1.0])
SMALL = TwoStageConfig(
    hidden_dims=(32, 32), epochs=15, batch_size=128, learning_rate=3e-3, kl_warmup_epochs=3
)


def _gaussian_codes(count: int, seed: int) -> Codes:
    """Codes whose aggregate posterior is N(CENTRE, diag(SCALE^2 + 0.01)): far from N(0, I)."""
    rng = np.random.default_rng(seed)
    means = CENTRE + SCALE * rng.standard_normal((count, 3))
    return Codes(means, np.full((count, 3), np.log(0.01)))


def _two_clusters(count: int, seed: int) -> Codes:
    """Codes in two tight clusters at (-4, 0) and (4, 0): structure a second stage has to learn."""
    rng = np.random.default_rng(seed)
    means = np.array([[-4.0, 0.0], [4.0, 0.0]])[rng.integers(0, 2, count)]
    return Codes(means + 0.3 * rng.standard_normal((count, 2)), np.full((count, 2), np.log(0.01)))


@pytest.fixture(scope="module")
def fitted():
    torch.manual_seed(0)
    return train_two_stage(_gaussian_codes(4000, 0), _gaussian_codes(1000, 1), SMALL)


def test_its_decoder_maps_noise_to_the_codes_moments(fitted):
    z = sample_two_stage(fitted.model, 4000, seed=0)
    assert np.allclose(z.mean(axis=0), CENTRE, atol=0.1 * SCALE.max())
    assert np.allclose(z.std(axis=0), np.sqrt(SCALE**2 + 0.01), rtol=0.1)


def test_training_lowers_the_held_out_loss_on_structured_codes():
    fitted = train_two_stage(_two_clusters(4000, 0), _two_clusters(1000, 1), SMALL)
    # Held-out: the full -ELBO every epoch (the training loss has the KL warm-up in it).
    assert fitted.heldout_losses[-1] < fitted.heldout_losses[0] - 0.5
    assert fitted.heldout_nelbo == min(fitted.heldout_losses)  # the best epoch is the one kept


def test_the_same_seed_and_temperature_give_the_same_latents(fitted):
    first = sample_two_stage(fitted.model, 64, seed=7, temperature=1.3)
    assert np.array_equal(first, sample_two_stage(fitted.model, 64, seed=7, temperature=1.3))
    assert not np.array_equal(first, sample_two_stage(fitted.model, 64, seed=8, temperature=1.3))


def test_the_noise_is_drawn_as_the_server_draws_n01_latents():
    from server.dataplane.latent_space import sample_prior

    assert np.array_equal(noise(5, 6, seed=3, temperature=0.7), sample_prior(5, 6, 3, 0.7))


def test_a_saved_second_stage_loads_back_with_weights_only(fitted, tmp_path):
    path = tmp_path / "best.two_stage.pt"
    save_two_stage(path, fitted, "a" * 64)
    model, fitted_to, summary = load_two_stage(path)
    assert fitted_to == "a" * 64 and summary["latent_dim"] == 3
    assert np.array_equal(sample_two_stage(model, 16, 0), sample_two_stage(fitted.model, 16, 0))


def test_a_file_that_is_not_a_second_stage_is_refused(tmp_path):
    path = tmp_path / "best.two_stage.pt"
    torch.save({"format": "something else"}, path)
    with pytest.raises(CheckpointError, match="not a two-stage prior written by vae-train"):
        load_two_stage(path)


def test_bad_training_settings_are_refused():
    with pytest.raises(ValueError, match="needs epochs >= 1"):
        train_two_stage(_gaussian_codes(100, 0), None, TwoStageConfig(epochs=0))


# --- vae-train prior --kind two-stage, and at the end of training -------------------------------


def test_vae_train_prior_two_stage_trains_it_beside_the_checkpoint(trained_runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_runs.vae, run)
    argv = ["prior", str(run), "--kind", "two-stage", "--epochs", "2", "--hidden-dims", "16"]
    assert vae_train(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["output"] == str(run / "best.two_stage.pt") and result["epochs"] == 2
    model, fitted_to, _ = load_two_stage(run / "best.two_stage.pt")
    assert fitted_to == sha256_file(run / "best.pt") and model.dim == 8
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["two_stage"]["train_images"] == 1000
    assert metrics["two_stage"]["heldout_images"] == 500


def test_training_fits_both_learned_priors_by_default(mnist_dir, tmp_path):
    from training.train import train

    config = tiny_train_config(tmp_path / "run", mnist_dir)
    config.prior_two_stage, config.two_stage_epochs = True, 2
    summary = train(config)
    assert (tmp_path / "run" / "best.prior.npz").is_file()
    assert (tmp_path / "run" / "best.two_stage.pt").is_file()
    assert summary["prior"]["fit_to"] == "draws" and summary["two_stage"]["epochs"] == 2


def test_a_bad_prior_setting_is_refused_before_training(mnist_dir, tmp_path):
    from training.train import train

    config = tiny_train_config(tmp_path / "run", mnist_dir)
    config.prior_fit = "modes"
    with pytest.raises(ValueError, match="prior_fit 'modes' is not one of"):
        train(config)
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize(
    ("command", "variable", "value", "flag", "allowed"),
    [
        ("prior", "VAE_PRIOR_KIND", "flow", "--kind", "one of mixture, two-stage"),
        ("prior", "VAE_PRIOR_FIT", "modes", "--fit-to", "one of draws, means"),
        ("prior", "VAE_TWO_STAGE_EPOCHS", "many", "--epochs", "an integer of at least 1"),
        ("quality", "VAE_QUALITY_SEEDS", "a b", "--seeds", "one or more integers"),
        ("quality", "VAE_QUALITY_TEMPERATURES", "hot", "--temperatures", "positive numbers"),
    ],
)
def test_a_bad_variable_exits_2_with_one_line_naming_it(
    monkeypatch, capsys, command, variable, value, flag, allowed
):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exit_info:
        vae_train([command, "runs/none"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error
    assert error.startswith(f"vae-train {command}: {variable}={value!r} (for {flag}): expected")
    assert allowed in error


def test_the_command_lines_defaults_are_the_trainers():
    """vae-train's parser keeps its own copies (parsing imports no torch): they must agree."""
    from training import prior, subcommands
    from training.two_stage import TwoStageConfig

    config = TwoStageConfig()
    assert {
        "hidden_dims": config.hidden_dims,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
    } == subcommands.TWO_STAGE_DEFAULTS
    assert subcommands.DEFAULT_DRAWS == prior.DEFAULT_DRAWS
    assert subcommands.DEFAULT_COMPONENTS == prior.DEFAULT_COMPONENTS

"""The mixture prior fitted after training: chosen by held-out likelihood, written beside the
checkpoint as plain arrays, refitted by `vae-train prior`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from training import prior as prior_module
from training.checkpoint import sha256_file
from training.cli import main as vae_train
from training.config import TrainConfig
from training.prior import fit_mixture, load_mixture, sample_mixture


def _clusters(count: int, seed: int) -> np.ndarray:
    """Three well-separated 2-D clusters."""
    rng = np.random.default_rng(seed)
    centres = np.array([[-6.0, 0.0], [0.0, 6.0], [6.0, 0.0]])
    return centres[rng.integers(0, 3, count)] + rng.normal(scale=0.5, size=(count, 2))


def test_the_component_count_is_chosen_by_held_out_log_likelihood():
    mixture = fit_mixture(_clusters(1500, 0), _clusters(500, 1), components=(1, 3))
    assert mixture.components == 3 and mixture.candidates == [1, 3]
    assert mixture.candidate_log_likelihoods[1] > mixture.candidate_log_likelihoods[0]
    assert mixture.heldout_log_likelihood == mixture.candidate_log_likelihoods[1]


def test_a_fitted_mixture_samples_where_its_codes_are():
    codes = _clusters(2000, 0)
    mixture = fit_mixture(codes, _clusters(300, 1), components=(3,))
    arrays = {"weights": mixture.weights, "means": mixture.means, "scale_tril": mixture.scale_tril}
    z = sample_mixture(arrays, 5000, seed=0)
    assert np.allclose(z.mean(axis=0), codes.mean(axis=0), atol=0.2)
    nearest = np.min(np.linalg.norm(z[:, None] - mixture.means[None], axis=2), axis=1)
    assert np.mean(nearest < 2.0) > 0.97  # almost every draw sits in one of the three clusters


def test_more_components_than_codes_is_refused():
    with pytest.raises(ValueError, match="need at least as many codes"):
        fit_mixture(_clusters(5, 0), _clusters(5, 1), components=(10,))


def test_training_writes_the_mixture_of_best_pt_beside_it(trained_runs):
    path = trained_runs.vae / "best.prior.npz"
    arrays, fitted_to, summary = load_mixture(path)
    assert fitted_to == sha256_file(trained_runs.vae / "best.pt")
    assert arrays["means"].shape == (10, 8) and arrays["scale_tril"].shape == (10, 8, 8)
    assert summary["components"] == 10 and summary["fit_images"] == 1000
    metrics = json.loads((trained_runs.vae / "metrics.json").read_text())
    assert metrics["prior"]["components"] == 10 and metrics["prior"]["heldout_images"] == 500


def test_the_mixture_file_holds_no_pickle(trained_runs):
    with np.load(trained_runs.ae / "best.prior.npz", allow_pickle=False) as npz:
        assert {"weights", "means", "scale_tril", "checkpoint_sha256"} <= set(npz.files)


def test_vae_train_prior_refits_with_the_best_of_several_counts(trained_runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_runs.ae, run)
    assert vae_train(["prior", str(run), "--components", "1", "2", "4"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["candidates"] == [1, 2, 4]
    best = result["candidates"][int(np.argmax(result["candidate_log_likelihoods"]))]
    assert result["components"] == best
    assert load_mixture(run / "best.prior.npz")[0]["weights"].shape == (best,)


def test_vae_train_prior_without_a_checkpoint_says_so(tmp_path, capsys):
    assert vae_train(["prior", str(tmp_path)]) == 2
    assert "no such checkpoint file" in capsys.readouterr().err


def test_train_config_round_trips_through_its_dict():
    config = TrainConfig(epochs=3, prior_candidates=(2, 5))
    again = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config


def test_vae_train_prior_refits_exactly_the_mixture_training_wrote(trained_runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_runs.vae, run)
    assert vae_train(["prior", str(run)]) == 0
    refit, _, _ = load_mixture(run / "best.prior.npz")
    written, _, _ = load_mixture(trained_runs.vae / "best.prior.npz")
    assert all(np.array_equal(refit[name], written[name]) for name in written)


def test_the_fit_runs_on_one_thread_whatever_the_process_set(trained_runs, tmp_path, monkeypatch):
    """How a sum is split between threads changes its last bits, so the fit holds torch, BLAS and
    OpenMP to one thread each, and gives back the thread count it found."""
    from threadpoolctl import threadpool_info

    seen = []
    real_fit = prior_module.fit_mixture

    def watched_fit(*args, **kwargs):
        seen.append((torch.get_num_threads(), {pool["num_threads"] for pool in threadpool_info()}))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(prior_module, "fit_mixture", watched_fit)
    run = tmp_path / "run"
    shutil.copytree(trained_runs.vae, run)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert vae_train(["prior", str(run)]) == 0
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert seen == [(1, {1})] and after == 2

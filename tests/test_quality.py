"""The sample-quality score: Fréchet distance and precision/recall on classifier features, the
cached classifier, and `vae-train quality` writing a run's figures where vae-export finds them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from export.pipeline import export_checkpoint
from server.repository import read_metadata
from training.classifier import ClassifierError, load_classifier, save_classifier, train_classifier
from training.cli import main as vae_train
from training.data import load_idx_split
from training.quality import frechet_distance, precision_recall


@pytest.fixture(scope="module")
def classifier_file(mnist_dir, tmp_path_factory):
    """A classifier trained for a few dozen steps on real MNIST images: seconds, not minutes."""
    classifier, info = train_classifier("mnist", mnist_dir, max_steps=40, train_subset=3000)
    path = tmp_path_factory.mktemp("classifier") / "mnist.pt"
    save_classifier(path, classifier, info)
    return path


@pytest.fixture(scope="module")
def test_features(classifier_file, mnist_dir):
    images = load_idx_split("mnist", "test", mnist_dir).images[:1000]
    return load_classifier(classifier_file, "mnist"), images


# --- Fréchet distance ---------------------------------------------------------------------------


def test_frechet_distance_of_a_set_to_itself_is_zero(test_features):
    classifier, images = test_features
    features = classifier.features(images)
    assert abs(frechet_distance(features, features)) < 1e-6 * float(features.var(0).sum())


def test_frechet_distance_grows_with_added_noise(test_features):
    classifier, images = test_features
    real = classifier.features(images)
    generator = torch.Generator().manual_seed(0)
    distances = []
    for sigma in (0.05, 0.2, 0.5):
        noisy = (images + sigma * torch.randn(images.shape, generator=generator)).clamp(0, 1)
        distances.append(frechet_distance(real, classifier.features(noisy)))
    assert 0 < distances[0] < distances[1] < distances[2]


def test_frechet_distance_of_shifted_gaussians_is_the_squared_shift():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((20_000, 4))
    b = rng.standard_normal((20_000, 4)) + np.array([3.0, 0.0, 0.0, 4.0])
    assert frechet_distance(a, b) == pytest.approx(25.0, rel=0.02)


def test_frechet_distance_of_scaled_gaussians_has_the_closed_form():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((20_000, 3)), 2.0 * rng.standard_normal((20_000, 3))
    assert frechet_distance(a, b) == pytest.approx(3 * (1 + 4 - 2 * 2), rel=0.05)  # sum (s1-s2)^2


def test_feature_sets_of_different_widths_are_refused():
    with pytest.raises(ValueError, match="same F"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))


# --- precision and recall -----------------------------------------------------------------------


def test_a_set_has_full_precision_and_recall_against_itself():
    points = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    assert precision_recall(points, points, k=3) == (1.0, 1.0)


def test_samples_of_one_mode_are_precise_but_miss_the_other_mode():
    generator = torch.Generator().manual_seed(0)
    real = torch.cat([torch.randn(500, 2, generator=generator) + c for c in (-10.0, 10.0)])
    one_mode = torch.randn(1000, 2, generator=generator) - 10.0
    precision, recall = precision_recall(real, one_mode, k=3)
    assert precision > 0.9 and 0.4 < recall < 0.6


def test_samples_off_the_data_have_no_precision():
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(500, 2, generator=generator)
    far = torch.randn(500, 2, generator=generator) + 50.0
    assert precision_recall(real, far, k=3) == (0.0, 0.0)


# --- the classifier checkpoint ------------------------------------------------------------------


def test_the_classifier_loads_with_weights_only_and_beats_chance(classifier_file):
    document = torch.load(classifier_file, weights_only=True)
    assert document["dataset"] == "mnist" and document["test_accuracy"] > 0.3


def test_a_classifier_of_another_data_set_is_refused(classifier_file):
    with pytest.raises(ClassifierError, match="trained on mnist, the run on fashion-mnist"):
        load_classifier(classifier_file, "fashion-mnist")


def test_a_missing_classifier_says_how_to_train_one(tmp_path):
    with pytest.raises(ClassifierError, match="vae-train classifier --dataset mnist"):
        load_classifier(tmp_path / "nope.pt", "mnist")


# --- vae-train quality, carried into model.json --------------------------------------------------


@pytest.fixture(scope="module")
def measured_run(trained_runs, classifier_file, tmp_path_factory):
    run = tmp_path_factory.mktemp("quality") / "tiny-vae"
    shutil.copytree(trained_runs.vae, run)
    argv = ["quality", str(run), "--classifier", str(classifier_file), "--samples", "500"]
    assert vae_train(argv) == 0
    return run


def test_quality_writes_figures_for_both_priors_into_metrics_json(measured_run):
    quality = json.loads((measured_run / "metrics.json").read_text())["quality"]
    for prior in ("standard_normal", "mixture"):
        assert quality[f"fd_{prior}"] > 0
        assert 0 <= quality[f"precision_{prior}"] <= 1 and 0 <= quality[f"recall_{prior}"] <= 1
    assert quality["samples"] == 500 and quality["k"] == 3 and quality["checkpoint"] == "best.pt"


def test_export_carries_the_quality_figures_into_model_json(measured_run, mnist_dir, tmp_path):
    result = export_checkpoint(measured_run / "best.pt", tmp_path, data_dir=mnist_dir)
    assert result.status == "exported", result.detail
    meta = read_metadata(tmp_path / "tiny-vae" / "1")
    quality = json.loads((measured_run / "metrics.json").read_text())["quality"]
    assert meta.metrics["fd_mixture"] == quality["fd_mixture"]
    assert meta.metrics["recall_standard_normal"] == quality["recall_standard_normal"]
    assert meta.mixture["components"] == 10 and meta.priors == ("standard_normal", "mixture")


def test_figures_of_a_refitted_mixture_are_left_out_of_the_export(
    measured_run, mnist_dir, tmp_path
):
    run = tmp_path / "tiny-vae"
    shutil.copytree(measured_run, run)
    assert vae_train(["prior", str(run), "--components", "3"]) == 0
    assert export_checkpoint(run / "best.pt", tmp_path / "repo", data_dir=mnist_dir).version == 1
    meta = read_metadata(tmp_path / "repo" / "tiny-vae" / "1")
    assert "fd_standard_normal" in meta.metrics and "fd_mixture" not in meta.metrics
    assert meta.mixture["components"] == 3


def test_quality_without_a_classifier_says_how_to_train_one(trained_runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_runs.vae, run)
    assert vae_train(["quality", str(run), "--classifier", str(tmp_path / "none.pt")]) == 2
    assert "vae-train classifier --dataset mnist" in capsys.readouterr().err


# --- every prior, several temperatures, the recommendation ---------------------------------------


@pytest.fixture(scope="module")
def run_with_every_prior(trained_runs, classifier_file, tmp_path_factory):
    """The tiny VAE with its mixture, a two-stage prior and a means-only mixture to compare, scored
    at temperatures 1 and 1.5 over two sampling seeds."""
    from training.two_stage import TwoStageConfig, fit_run_two_stage

    run = tmp_path_factory.mktemp("every-prior") / "tiny-vae"
    shutil.copytree(trained_runs.vae, run)
    fit_run_two_stage(run, config=TwoStageConfig(hidden_dims=(16,), epochs=2))
    means = run / "best.means.prior.npz"
    assert vae_train(["prior", str(run), "--fit-to", "means", "--output", str(means)]) == 0
    argv = ["quality", str(run), "--classifier", str(classifier_file), "--samples", "300"]
    argv += ["--seeds", "0", "1", "--temperatures", "1.5", "--extra-mixture", f"means={means}"]
    assert vae_train(argv) == 0
    return run


def test_quality_scores_every_prior_at_every_temperature(run_with_every_prior):
    quality = json.loads((run_with_every_prior / "metrics.json").read_text())["quality"]
    assert quality["priors"] == ["standard_normal", "mixture", "means", "two_stage"]
    for prior in ("standard_normal", "mixture", "two_stage"):
        for suffix in ("", "_t1.5"):
            assert quality[f"fd_{prior}{suffix}"] > 0
            assert len(quality["per_seed"][f"recall_{prior}{suffix}"]) == 2
    assert "fd_means" in quality and "fd_means_t1.5" not in quality  # a comparison: 1 only
    assert quality["fd_mixture"] == pytest.approx(np.mean(quality["per_seed"]["fd_mixture"]))


def test_the_recommended_prior_follows_the_rule(run_with_every_prior):
    quality = json.loads((run_with_every_prior / "metrics.json").read_text())["quality"]
    chosen = quality["recommended"]
    qualifying = [c for c in chosen["candidates"] if c["qualifies"]]
    assert chosen["fd"] == min(c["fd"] for c in qualifying)
    assert chosen["recall"] >= 0.8 * quality["recall_standard_normal"]
    assert chosen["precision"] >= quality["precision_standard_normal"]
    assert "means" not in {c["prior"] for c in chosen["candidates"]}  # never recommended


def test_export_carries_the_recommendation_and_the_served_priors_figures(
    run_with_every_prior, mnist_dir, tmp_path
):
    assert export_checkpoint(run_with_every_prior / "best.pt", tmp_path, data_dir=mnist_dir).version
    meta = read_metadata(tmp_path / "tiny-vae" / "1")
    chosen = json.loads((run_with_every_prior / "metrics.json").read_text())["quality"][
        "recommended"
    ]
    assert (meta.recommended_prior, meta.recommended_temperature) == (
        chosen["prior"], chosen["temperature"],
    )  # fmt: skip
    assert "fd_two_stage_t1.5" in meta.metrics and "fd_means" not in meta.metrics


def test_a_refitted_two_stage_prior_drops_its_figures_and_the_recommendation(
    run_with_every_prior, mnist_dir, tmp_path
):
    run = tmp_path / "tiny-vae"
    shutil.copytree(run_with_every_prior, run)
    argv = ["prior", str(run), "--kind", "two-stage", "--epochs", "1", "--hidden-dims", "8"]
    assert vae_train(argv) == 0
    assert export_checkpoint(run / "best.pt", tmp_path / "repo", data_dir=mnist_dir).version == 1
    meta = read_metadata(tmp_path / "repo" / "tiny-vae" / "1")
    assert "fd_two_stage" not in meta.metrics and "fd_mixture" in meta.metrics
    assert meta.recommended_prior == "" and meta.two_stage["epochs"] == 1

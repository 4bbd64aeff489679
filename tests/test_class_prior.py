"""A conditional model's mixture prior per class: fitted to each label's codes at the end of training,
exported as class_prior.npz, read back (and refused alone when bad) by the repository format."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from export.pipeline import export_checkpoint
from server.repository import (
    CLASS_MIXTURE_FILE,
    RepositoryError,
    read_class_mixtures,
    read_metadata,
)
from training.checkpoint import sha256_file
from training.class_prior import fit_class_priors, load_class_mixtures, sample_class_mixture
from training.cli import main as vae_train
from training.codes import Codes

CENTRES = np.array([[-5.0, 0.0], [5.0, 0.0], [0.0, 5.0]])


def _labelled(count: int, seed: int) -> Codes:
    """Codes whose class c sits around CENTRES[c]: pooled, they are three clusters."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, count)
    means = CENTRES[labels] + 0.5 * rng.standard_normal((count, 2))
    return Codes(means, np.full((count, 2), np.log(0.04)), labels)


def test_each_class_mixture_draws_where_that_class_codes_are():
    fitted = fit_class_priors(_labelled(3000, 0), _labelled(600, 1), 3, components=(2,))
    labels = np.arange(3000) % 3
    z = sample_class_mixture(fitted.arrays(), labels, seed=0)
    for label in range(3):
        assert np.allclose(z[labels == label].mean(axis=0), CENTRES[label], atol=0.2)
    assert fitted.summary()["classes"] == 3 and fitted.components == 2


def test_the_component_count_is_chosen_over_every_class():
    fitted = fit_class_priors(_labelled(3000, 0), _labelled(600, 1), 3, components=(1, 3))
    scores = fitted.candidate_log_likelihoods
    assert fitted.components == fitted.candidates[int(np.argmax(scores))]


def test_a_class_without_codes_is_refused():
    codes = _labelled(300, 0)
    with pytest.raises(ValueError, match=r"classes \[3\] have no training codes"):
        fit_class_priors(codes, None, 4, components=(1,))


def test_training_a_conditional_model_fits_one_mixture_per_class(trained_runs):
    arrays, fitted_to, summary = load_class_mixtures(trained_runs.cvae / "best.class_prior.npz")
    assert fitted_to == sha256_file(trained_runs.cvae / "best.pt")
    assert arrays["means"].shape == (10, 10, 8) and arrays["scale_tril"].shape == (10, 10, 8, 8)
    assert np.allclose(arrays["weights"].sum(axis=1), 1.0) and summary["classes"] == 10
    metrics = json.loads((trained_runs.cvae / "metrics.json").read_text())
    assert metrics["class_prior"]["components"] == 10


@pytest.fixture(scope="module")
def cvae_version(trained_runs, mnist_dir, tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    result = export_checkpoint(trained_runs.cvae / "best.pt", repo, data_dir=mnist_dir)
    assert result.status == "exported", result.detail
    return repo / "tiny-cvae" / "1"


def test_export_writes_the_per_class_mixtures_beside_the_pooled_one(cvae_version):
    meta = read_metadata(cvae_version)
    assert (cvae_version / "prior.npz").is_file() and (cvae_version / CLASS_MIXTURE_FILE).is_file()
    assert meta.class_mixture["classes"] == 10 and meta.priors == ("standard_normal", "mixture")
    mixtures = read_class_mixtures(cvae_version, meta)
    assert mixtures is not None and len(mixtures) == 10 and mixtures[3].components == 10


def test_a_replaced_per_class_file_is_refused_alone(cvae_version, tmp_path):
    version = tmp_path / "tiny-cvae" / "1"
    shutil.copytree(cvae_version, version)
    (version / CLASS_MIXTURE_FILE).write_bytes(b"other bytes")
    meta = read_metadata(version)  # the version itself still reads
    with pytest.raises(RepositoryError, match=r"differs from the .* that model.json records"):
        read_class_mixtures(version, meta)


def test_a_class_count_other_than_the_models_is_refused(cvae_version, tmp_path):
    version = tmp_path / "tiny-cvae" / "1"
    shutil.copytree(cvae_version, version)
    document = json.loads((version / "model.json").read_text())
    document["class_mixture"]["classes"] = 9
    (version / "model.json").write_text(json.dumps(document))
    with pytest.raises(RepositoryError, match=r"class_mixture\.classes must equal num_classes 10"):
        read_class_mixtures(version, read_metadata(version))


def test_a_conditional_run_gets_no_two_stage_prior(trained_runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_runs.cvae, run)
    assert vae_train(["prior", str(run), "--kind", "two-stage", "--epochs", "1"]) == 2
    assert "the two-stage prior is for unconditional models" in capsys.readouterr().err
    assert not (run / "best.two_stage.pt").exists()

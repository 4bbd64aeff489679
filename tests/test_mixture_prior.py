"""The learned prior as the server holds it: prior.npz validation and loading, and numpy sampling."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from server.dataplane import latent_space
from server.repository import (
    MIXTURE_FILE,
    GaussianMixture,
    ModelMetadata,
    RepositoryError,
    read_metadata,
    read_mixture,
    write_mixture,
)


def _mixture(k: int = 3, d: int = 4, seed: int = 0) -> GaussianMixture:
    rng = np.random.default_rng(seed)
    weights = rng.random(k) + 0.1
    scale = np.stack([np.tril(rng.normal(size=(d, d)) * 0.1) + np.eye(d) * 0.5 for _ in range(k)])
    return GaussianMixture(weights / weights.sum(), rng.normal(size=(k, d)) * 3, scale)


def _arrays(mixture: GaussianMixture) -> dict[str, np.ndarray]:
    return {"weights": mixture.weights, "means": mixture.means, "scale_tril": mixture.scale_tril}


def _version(tmp_path: Path, mixture: GaussianMixture | None) -> tuple[Path, ModelMetadata]:
    directory = tmp_path / "m" / "1"
    directory.mkdir(parents=True)
    for name in ("encoder.onnx", "decoder.onnx"):
        (directory / name).write_bytes(b"x")
    described = {}
    if mixture is not None:
        described = {"components": mixture.components, "sha256": write_mixture(directory, mixture)}
    meta = ModelMetadata(
        name="m", version=1, kind="ae", latent_dim=4, image_shape=(1, 28, 28),
        likelihood="bernoulli", mixture=described,
    )  # fmt: skip
    (directory / "model.json").write_text(meta.to_json())
    return directory, meta


# --- sampling -----------------------------------------------------------------------------------


def test_same_seed_gives_the_same_mixture_draws():
    mixture = _mixture()
    first = latent_space.draw_latents(latent_space.prior_generator(7), 50, 4, 1.0, mixture)
    again = latent_space.draw_latents(latent_space.prior_generator(7), 50, 4, 1.0, mixture)
    other = latent_space.draw_latents(latent_space.prior_generator(8), 50, 4, 1.0, mixture)
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_mixture_draws_in_chunks_equal_one_draw():
    mixture = _mixture()
    whole = latent_space.draw_mixture(latent_space.prior_generator(3), 100, mixture)
    rng = latent_space.prior_generator(3)
    chunks = [latent_space.draw_mixture(rng, rows, mixture) for rows in (1, 33, 7, 59)]
    assert np.array_equal(np.concatenate(chunks), whole)


def test_components_are_drawn_in_proportion_to_their_weights():
    weights = np.array([0.7, 0.2, 0.1])
    means = np.array([[-100.0], [0.0], [100.0]])
    mixture = GaussianMixture(weights, means, np.ones((3, 1, 1)) * 0.01)
    z = latent_space.draw_mixture(latent_space.prior_generator(0), 40_000, mixture)[:, 0]
    shares = [np.mean(z < -50), np.mean(np.abs(z) < 50), np.mean(z > 50)]
    assert np.allclose(shares, weights, atol=0.01)


def test_a_component_draws_its_mean_and_covariance():
    scale = np.array([[[2.0, 0.0], [1.0, 0.5]]])  # covariance [[4, 2], [2, 1.25]]
    mixture = GaussianMixture(np.ones(1), np.array([[5.0, -1.0]]), scale)
    z = latent_space.draw_mixture(latent_space.prior_generator(1), 50_000, mixture).astype(
        np.float64
    )
    assert np.allclose(z.mean(axis=0), [5.0, -1.0], atol=0.05)
    assert np.allclose(np.cov(z, rowvar=False), scale[0] @ scale[0].T, atol=0.08)


def test_temperature_scales_each_components_spread_not_its_mean():
    mixture = GaussianMixture(np.ones(1), np.array([[3.0, 3.0]]), np.eye(2)[None] * 2.0)
    z = latent_space.draw_mixture(
        latent_space.prior_generator(2), 40_000, mixture, temperature=0.25
    )
    assert np.allclose(z.mean(axis=0), 3.0, atol=0.02)
    assert np.allclose(z.std(axis=0), 0.5, atol=0.01)


def test_without_a_mixture_draws_are_the_standard_normal_ones():
    drawn = latent_space.draw_latents(latent_space.prior_generator(5), 6, 4, 0.5)
    assert np.array_equal(drawn, latent_space.sample_prior(6, 4, seed=5, temperature=0.5))


def test_a_mixture_of_another_latent_size_is_refused():
    with pytest.raises(ValueError, match="mixture is over 4 dimensions, the model has 8"):
        latent_space.draw_latents(latent_space.prior_generator(0), 2, 8, 1.0, _mixture(d=4))


# --- prior.npz ----------------------------------------------------------------------------------


def test_a_mixture_round_trips_through_its_file(tmp_path):
    mixture = _mixture(d=4)
    directory, _ = _version(tmp_path, mixture)
    loaded = read_mixture(directory, read_metadata(directory))
    assert loaded is not None
    for name, array in _arrays(mixture).items():
        assert np.array_equal(getattr(loaded, name), array)
    assert read_metadata(directory).priors == ("standard_normal", "mixture")


def test_a_version_without_a_mixture_has_only_the_standard_normal_prior(tmp_path):
    directory, _ = _version(tmp_path, None)
    meta = read_metadata(directory)
    assert read_mixture(directory, meta) is None and meta.priors == ("standard_normal",)


def test_a_declared_mixture_whose_file_is_missing_is_refused_alone(tmp_path):
    directory, _ = _version(tmp_path, _mixture(d=4))
    (directory / MIXTURE_FILE).unlink()
    meta = read_metadata(directory)  # the version itself still reads
    with pytest.raises(RepositoryError, match=r"prior\.npz: missing, .*vae-export --force"):
        read_mixture(directory, meta)


def test_a_corrupt_mixture_file_is_refused_with_the_fix(tmp_path):
    directory, meta = _version(tmp_path, _mixture(d=4))
    (directory / MIXTURE_FILE).write_bytes(b"not an npz at all")
    with pytest.raises(RepositoryError, match=r"corrupt or was replaced.*vae-export --force"):
        read_mixture(directory, meta)


def test_a_mixture_file_matching_its_sha_but_not_an_npz_is_refused(tmp_path):
    directory, meta = _version(tmp_path, _mixture(d=4))
    (directory / MIXTURE_FILE).write_bytes(b"garbage")
    meta = dataclasses.replace(
        meta, mixture={**meta.mixture, "sha256": hashlib.sha256(b"garbage").hexdigest()}
    )
    with pytest.raises(RepositoryError, match=r"not a readable \.npz of plain arrays"):
        read_mixture(directory, meta)


def test_a_pickled_array_in_the_mixture_file_is_refused(tmp_path):
    directory, meta = _version(tmp_path, _mixture(d=4))
    arrays = _arrays(_mixture(d=4))
    arrays["means"] = np.array([object()], dtype=object)
    path = directory / MIXTURE_FILE
    np.savez(path.with_suffix(""), **arrays)  # np.savez adds .npz again
    meta = dataclasses.replace(
        meta, mixture={**meta.mixture, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    )
    with pytest.raises(RepositoryError, match=r"not a readable \.npz"):
        read_mixture(directory, meta)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"means": np.zeros((3, 5))}, r"means must be \(K=3, D=4\)"),
        ({"weights": np.array([0.5, 0.5, 0.5])}, "sum to 1"),
        ({"weights": np.array([1.2, -0.1, -0.1])}, "non-negative"),
        ({"means": np.full((3, 4), np.nan)}, "means holds NaN"),
        ({"scale_tril": np.ones((3, 4, 4))}, "lower-triangular"),
        ({"scale_tril": np.zeros((3, 4, 4))}, "positive diagonal"),
        ({"weights": np.array(["a", "b", "c"])}, "expected float"),
    ],
)
def test_invalid_mixture_arrays_are_refused_with_the_reason(change, message):
    arrays = {**_arrays(_mixture(d=4)), **change}
    with pytest.raises(RepositoryError, match=message):
        GaussianMixture.from_arrays(arrays, latent_dim=4)


def test_a_missing_array_is_named():
    arrays = _arrays(_mixture(d=4))
    del arrays["scale_tril"]
    with pytest.raises(RepositoryError, match=r"missing arrays \['scale_tril'\]"):
        GaussianMixture.from_arrays(arrays, latent_dim=4)


def test_model_json_with_a_malformed_mixture_entry_is_refused(tmp_path):
    directory, _ = _version(tmp_path, _mixture(d=4))
    data = json.loads((directory / "model.json").read_text())
    data["mixture"]["sha256"] = "abc"
    (directory / "model.json").write_text(json.dumps(data))
    with pytest.raises(RepositoryError, match=r"mixture\.sha256 must be the 64 hex digits"):
        read_metadata(directory)

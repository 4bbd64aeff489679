"""Latent-space arithmetic the server relies on: prior draws, reparameterisation, lerp and slerp."""

import numpy as np

from server.dataplane import latent_space


def test_same_seed_gives_same_prior_draws():
    assert np.array_equal(
        latent_space.sample_prior(4, 8, seed=5), latent_space.sample_prior(4, 8, seed=5)
    )


def test_different_seeds_give_different_draws():
    assert not np.array_equal(
        latent_space.sample_prior(4, 8, seed=5), latent_space.sample_prior(4, 8, seed=6)
    )


def test_temperature_scales_the_prior_std():
    z = latent_space.sample_prior(20000, 4, seed=0, temperature=0.5)
    assert abs(float(z.std()) - 0.5) < 0.01


def test_reparameterise_has_the_posterior_moments():
    mean = np.full((50000, 2), 3.0, np.float32)
    log_variance = np.full((50000, 2), np.log(4.0), np.float32)  # std 2
    z = latent_space.reparameterise(mean, log_variance, seed=1)
    assert abs(float(z.mean()) - 3.0) < 0.03 and abs(float(z.std()) - 2.0) < 0.03


def test_lerp_starts_and_ends_at_the_endpoints():
    start, end = np.zeros(3, np.float32), np.ones(3, np.float32)
    path = latent_space.lerp(start, end, 5)
    assert path.shape == (5, 3)
    assert np.allclose(path[0], start) and np.allclose(path[-1], end)
    assert np.allclose(path[2], 0.5)


def test_slerp_ends_at_endpoints_and_keeps_norms_between_them():
    rng = np.random.default_rng(0)
    start, end = (
        rng.standard_normal(32).astype(np.float32),
        rng.standard_normal(32).astype(np.float32),
    )
    path = latent_space.slerp(start, end, 9)
    assert np.allclose(path[0], start, atol=1e-5) and np.allclose(path[-1], end, atol=1e-5)
    norms = np.linalg.norm(path, axis=1)
    expected = np.linspace(np.linalg.norm(start), np.linalg.norm(end), 9)
    assert np.allclose(norms, expected, rtol=1e-4)


def test_lerp_midpoint_shrinks_towards_origin_where_slerp_does_not():
    rng = np.random.default_rng(1)
    start, end = (
        rng.standard_normal(64).astype(np.float32),
        rng.standard_normal(64).astype(np.float32),
    )
    assert np.linalg.norm(latent_space.lerp(start, end, 3)[1]) < np.linalg.norm(
        latent_space.slerp(start, end, 3)[1]
    )


def test_slerp_of_parallel_vectors_falls_back_to_lerp():
    start = np.ones(4, np.float32)
    assert np.allclose(
        latent_space.slerp(start, 2 * start, 3), latent_space.lerp(start, 2 * start, 3)
    )


def test_seeded_normal_is_philox_keyed_by_the_seed_whatever_came_before():
    normal = latent_space.SeededNormal()
    normal.draw(99, 5, 3)  # a draw of another seed leaves nothing behind
    for seed in (0, 7, 2**63 - 1):
        expected = np.random.Generator(np.random.Philox(key=seed)).standard_normal(
            (4, 6), dtype=np.float32
        )
        assert np.array_equal(normal.draw(seed, 4, 6), expected)
        assert np.array_equal(normal.draw(seed, 4, 6, 0.5), expected * np.float32(0.5))
        assert np.array_equal(latent_space.sample_prior(4, 6, seed), expected)
    assert latent_space.SEED_SCHEME == 2

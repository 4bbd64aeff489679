"""Latent-space arithmetic in numpy: prior sampling, reparameterisation, linear and spherical paths."""

from __future__ import annotations

import numpy as np


def prior_generator(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def draw_prior(
    rng: np.random.Generator, count: int, latent_dim: int, temperature: float = 1.0
) -> np.ndarray:
    """The next `count` rows of z ~ N(0, temperature^2 I) from `rng`, shape (count, latent_dim)."""
    z = rng.standard_normal((count, latent_dim), dtype=np.float32)
    if temperature != 1.0:
        z *= np.float32(temperature)  # in place: no second array per call
    return z


def sample_prior(count: int, latent_dim: int, seed: int, temperature: float = 1.0) -> np.ndarray:
    """z ~ N(0, temperature^2 I), shape (count, latent_dim); the same seed gives the same z."""
    return draw_prior(prior_generator(seed), count, latent_dim, temperature)


def reparameterise(mean: np.ndarray, log_variance: np.ndarray, seed: int) -> np.ndarray:
    """z = mean + exp(log_variance / 2) * eps, eps ~ N(0, I) (Kingma & Welling 2014, section 2.4)."""
    eps = np.random.default_rng(seed).standard_normal(mean.shape, dtype=np.float32)
    return (mean + np.exp(0.5 * log_variance) * eps).astype(np.float32)


def lerp(start: np.ndarray, end: np.ndarray, steps: int) -> np.ndarray:
    """`steps` evenly spaced points from start to end inclusive, shape (steps, D)."""
    t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
    return ((1.0 - t) * start[None, :] + t * end[None, :]).astype(np.float32)


def slerp(start: np.ndarray, end: np.ndarray, steps: int) -> np.ndarray:
    """Spherical interpolation (Shoemake 1985; White 2016 for generative models), shape (steps, D).

    Follows the great circle between the two directions while interpolating the norms linearly, so
    intermediate points keep the norm typical of N(0, I) samples instead of shrinking towards the
    origin as the straight line does. Falls back to lerp for (anti)parallel endpoints.
    """
    start64 = start.astype(np.float64)
    end64 = end.astype(np.float64)
    norm_start = np.linalg.norm(start64)
    norm_end = np.linalg.norm(end64)
    if norm_start == 0.0 or norm_end == 0.0:
        return lerp(start, end, steps)
    cos_omega = np.clip(np.dot(start64 / norm_start, end64 / norm_end), -1.0, 1.0)
    omega = np.arccos(cos_omega)
    sin_omega = np.sin(omega)
    if sin_omega < 1e-6:
        return lerp(start, end, steps)
    t = np.linspace(0.0, 1.0, steps)[:, None]
    unit = (
        np.sin((1.0 - t) * omega) * start64[None, :] / norm_start
        + np.sin(t * omega) * end64[None, :] / norm_end
    ) / sin_omega
    norms = (1.0 - t) * norm_start + t * norm_end
    return (unit * norms).astype(np.float32)

"""Latent-space arithmetic in numpy: prior sampling (N(0, I) or a learned Gaussian mixture),
reparameterisation, linear and spherical paths.

Seeds (seed scheme 2): a seed keys numpy's Philox4x64 counter-based generator, `Philox(key=seed)`,
counter 0, and z is its `standard_normal` stream in float32, row after row. The same seed gives the
same z whatever else the server is doing, and a client can reproduce it offline with
`numpy.random.Generator(numpy.random.Philox(key=seed))`. Scheme 1 (before 2026-12) seeded PCG64
through a SeedSequence, `numpy.random.default_rng(seed)`: the same images need scheme 1's z, which a
client can draw offline and send to Decode.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

from server.repository import GaussianMixture

_STANDARD_NORMAL = NormalDist()


SEED_SCHEME = 2


def prior_generator(seed: int) -> np.random.Generator:
    """A fresh generator for `seed` (seed scheme 2): what SampleStream and the mixture draw from."""
    return np.random.Generator(np.random.Philox(key=seed))


class SeededNormal:
    """Draws of prior_generator(seed).standard_normal without building a generator per call: one
    Philox generator, re-keyed for each draw (setting its state costs a fraction of building one,
    whose constructor also runs a SeedSequence). Not thread-safe: one per event loop."""

    def __init__(self) -> None:
        self._bits = np.random.Philox(key=0)
        self._generator = np.random.Generator(self._bits)
        self._counter = np.zeros(4, dtype=np.uint64)
        self._buffer = np.zeros(4, dtype=np.uint64)

    def draw(self, seed: int, count: int, latent_dim: int, temperature: float = 1.0) -> np.ndarray:
        """(count, latent_dim) float32 z ~ N(0, temperature^2 I), the first rows of seed's stream."""
        self._bits.state = {
            "bit_generator": "Philox",
            "state": {"counter": self._counter, "key": np.array([seed, 0], dtype=np.uint64)},
            "buffer": self._buffer,
            "buffer_pos": 4,
            "has_uint32": 0,
            "uinteger": 0,
        }
        z = self._generator.standard_normal((count, latent_dim), dtype=np.float32)
        if temperature != 1.0:
            z *= np.float32(temperature)
        return z


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


def draw_mixture(
    rng: np.random.Generator, count: int, mixture: GaussianMixture, temperature: float = 1.0
) -> np.ndarray:
    """The next `count` rows of z from the Gaussian mixture, each component's spread scaled by
    `temperature`: z = means[k] + temperature * scale_tril[k] @ eps, k ~ weights; (count, D) float32.

    Each row takes D + 1 standard normals from `rng`, in order. The first picks the component by
    inverse-CDF sampling done in the normal domain: x < Phi^-1(w_0 + ... + w_k) has probability
    w_0 + ... + w_k, so k is the first cumulative weight whose normal quantile exceeds x. The other D
    are eps. One stream and a fixed number of draws per row, so drawing in chunks gives exactly the
    rows of one call (SampleStream relies on it), as draw_prior does.
    """
    dim = mixture.latent_dim
    normals = rng.standard_normal((count, dim + 1), dtype=np.float32).astype(np.float64)
    cumulative = np.clip(np.cumsum(mixture.weights)[:-1], 1e-300, 1.0 - 1e-16)
    thresholds = np.array([_STANDARD_NORMAL.inv_cdf(float(c)) for c in cumulative])  # (K - 1,)
    component = np.searchsorted(thresholds, normals[:, 0], side="right")  # (count,) in 0..K-1
    eps = normals[:, 1:]  # (count, D)
    z = np.empty((count, dim), dtype=np.float64)
    for k in np.unique(component):
        rows = component == k
        z[rows] = mixture.means[k] + temperature * (eps[rows] @ mixture.scale_tril[k].T)
    return z.astype(np.float32)


def draw_latents(
    rng: np.random.Generator,
    count: int,
    latent_dim: int,
    temperature: float = 1.0,
    mixture: GaussianMixture | None = None,
) -> np.ndarray:
    """The next `count` latents of a Sample or SampleStream call, (count, latent_dim) float32: from
    N(0, temperature^2 I) when `mixture` is None, else from the mixture (see draw_mixture)."""
    if mixture is None:
        return draw_prior(rng, count, latent_dim, temperature)
    if mixture.latent_dim != latent_dim:
        raise ValueError(
            f"mixture is over {mixture.latent_dim} dimensions, the model has {latent_dim}"
        )
    return draw_mixture(rng, count, mixture, temperature)


def reparameterise(mean: np.ndarray, log_variance: np.ndarray, seed: int) -> np.ndarray:
    """z = mean + exp(log_variance / 2) * eps, eps ~ N(0, I) (Kingma & Welling 2014, section 2.4)."""
    eps = prior_generator(seed).standard_normal(mean.shape, dtype=np.float32)
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

"""The data plane: validates plain-array requests, runs the model, and returns plain arrays.

It knows nothing of gRPC; the servicer converts protobuf to the arguments here and back. Every refusal
raises a ServiceError whose message says what was wrong and what is allowed.

A Sample call's work here is a few checks, one seeded draw (latent_space.SeededNormal: the
counter-based Philox generator keyed by the seed, re-keyed per call instead of built) and
`await model.decoder.submit(...)` into the batcher (server/inference/batching.py).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import numpy as np

from server.dataplane import latent_space
from server.dataplane.limits import Limits
from server.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from server.inference.served_model import ServedModel
from server.inference.store import ModelStore
from server.metrics import Metrics
from server.repository import PRIOR_MIXTURE, PRIOR_STANDARD_NORMAL, PRIORS, GaussianMixture

MAX_SEED = 2**63 - 1
DEFAULT_STREAM_CHUNK = 256  # rows per SampleStream message: ~800 KB of 28x28 float32


@dataclass(frozen=True)
class Encoded:
    mean: np.ndarray  # (N, D)
    log_variance: np.ndarray | None  # (N, D); None for autoencoders
    latents: np.ndarray | None  # (N, D) when sampling was asked for
    model: ServedModel


@dataclass(frozen=True)
class Generated:
    images: np.ndarray  # (N, C, H, W) in [0, 1]
    latents: np.ndarray  # (N, D)
    model: ServedModel
    seed: int = 0


class DataPlane:
    """Encode, Decode, Sample and Interpolate over the models of a ModelStore; each model call goes
    through its ServedModel, which batches, times and counts it."""

    def __init__(self, store: ModelStore, limits: Limits, metrics: Metrics) -> None:
        self.store = store
        self.limits = limits
        self.metrics = metrics
        self._normal = latent_space.SeededNormal()  # the event loop's thread only

    # --- validation -----------------------------------------------------------------------------

    def _check_rows(self, rows: int, what: str) -> None:
        if rows > self.limits.max_batch:
            raise ResourceExhausted(
                f"{what}: {rows} rows is over this server's limit of {self.limits.max_batch} per "
                "request; split the request"
            )

    def _labels(
        self, model: ServedModel, labels: Sequence[int] | np.ndarray, rows: int
    ) -> np.ndarray | None:
        meta = model.metadata
        if not meta.conditional:
            if len(labels):
                raise InvalidArgument(f"model {meta.name!r} is not conditional; send no labels")
            return None
        if len(labels) != rows:
            raise InvalidArgument(
                f"model {meta.name!r} is conditional: send one label per row ({rows}), got "
                f"{len(labels)}"
            )
        array = np.asarray(labels, dtype=np.int64)
        bad = array[(array < 0) | (array >= meta.num_classes)]
        if bad.size:
            raise InvalidArgument(
                f"label {int(bad[0])} is out of range; model {meta.name!r} has classes "
                f"0..{meta.num_classes - 1}"
            )
        return array

    def _check_images(self, model: ServedModel, images: np.ndarray, what: str) -> None:
        expected = model.metadata.image_shape
        if images.ndim != 4 or tuple(images.shape[1:]) != tuple(expected):
            raise InvalidArgument(
                f"{what}: shape {list(images.shape)} does not fit model "
                f"{model.metadata.name!r}; expected [N, {', '.join(map(str, expected))}]"
            )

    def _check_latents(self, model: ServedModel, latents: np.ndarray, what: str) -> None:
        dim = model.metadata.latent_dim
        if latents.ndim != 2 or latents.shape[1] != dim:
            raise InvalidArgument(
                f"{what}: shape {list(latents.shape)} does not fit model "
                f"{model.metadata.name!r}; expected [N, {dim}]"
            )

    def _seed(self, seed: int | None) -> int:
        if seed is None:
            return secrets.randbits(63)
        if not 0 <= seed <= MAX_SEED:
            raise InvalidArgument(f"seed {seed} is out of range 0..{MAX_SEED}")
        return seed

    # --- RPCs -----------------------------------------------------------------------------------

    def check_image_range(self, images: np.ndarray, what: str, clamp: bool) -> np.ndarray:
        """Images must lie in [0, 1] (what the model was trained on); `clamp` clips them instead."""
        if clamp:
            return np.clip(images, 0.0, 1.0)
        low, high = float(images.min()), float(images.max())
        if low < 0.0 or high > 1.0:
            raise InvalidArgument(
                f"{what}: values must lie in [0, 1] (float32) or 0..255 (uint8), got values in "
                f"[{low:g}, {high:g}]; rescale them, or set clamp to clip them into [0, 1]"
            )
        return images

    async def encode(
        self,
        model: ServedModel,
        images: np.ndarray,
        labels: Sequence[int] | np.ndarray = (),
        sample: bool = False,
        seed: int | None = None,
        clamp: bool = False,
    ) -> Encoded:
        self._check_images(model, images, "images")
        self._check_rows(len(images), "images")
        images = np.ascontiguousarray(self.check_image_range(images, "images", clamp), np.float32)
        label_array = self._labels(model, labels, len(images))
        mean, log_variance = await model.encode(images, label_array)
        latents = None
        if sample:
            if log_variance is None:
                raise InvalidArgument(
                    f"model {model.metadata.name!r} is a plain autoencoder with no posterior "
                    "variance to sample from; leave sample unset"
                )
            latents = latent_space.reparameterise(mean, log_variance, self._seed(seed))
        return Encoded(mean, log_variance, latents, model)

    async def decode(
        self, model: ServedModel, latents: np.ndarray, labels: Sequence[int] | np.ndarray = ()
    ) -> Generated:
        self._check_latents(model, latents, "latents")
        self._check_rows(len(latents), "latents")
        label_array = self._labels(model, labels, len(latents))
        images = await model.decode(np.ascontiguousarray(latents, np.float32), label_array)
        return Generated(images, latents, model)

    def _sample_params(
        self, model: ServedModel, count: int, limit: int, temperature: float, label: int | None
    ) -> tuple[float, np.ndarray | None]:
        """Check a Sample/SampleStream request; returns (temperature, one chunk's labels or None)."""
        if count <= 0:
            raise InvalidArgument(f"count must be between 1 and {limit}, got {count}")
        if count > limit:
            raise ResourceExhausted(
                f"count {count} is over this server's limit of {limit} samples per request; "
                "ask in several requests"
            )
        if temperature == 0.0:
            temperature = 1.0
        if not math.isfinite(temperature) or not 0.0 < temperature <= self.limits.max_temperature:
            raise InvalidArgument(
                f"temperature must be in (0, {self.limits.max_temperature}] (0 means 1.0), "
                f"got {temperature}"
            )
        meta = model.metadata
        if meta.conditional and label is None:
            raise InvalidArgument(
                f"model {meta.name!r} is conditional: set label to a class in 0..{meta.num_classes - 1}"
            )
        return temperature, self._labels(model, [] if label is None else [label], 1)

    def _prior_mixture(self, model: ServedModel, prior: str) -> GaussianMixture | None:
        """What Sample/SampleStream draw z from: None for N(0, I), else the version's mixture."""
        if prior == PRIOR_STANDARD_NORMAL:
            return None
        if prior != PRIOR_MIXTURE:
            raise InvalidArgument(f"prior {prior!r} is not one of {PRIORS}")
        if model.mixture is None:
            meta = model.metadata
            raise FailedPrecondition(
                f"model {meta.name!r} version {meta.version} has no mixture prior; fit one with "
                "`vae-train prior <run-dir>` and export the checkpoint again "
                "(`vae-export <run-dir>/best.pt --force`), or ask for the standard normal prior"
            )
        return model.mixture

    async def sample(
        self,
        model: ServedModel,
        count: int,
        seed: int | None = None,
        temperature: float = 0.0,
        label: int | None = None,
        prior: str = PRIOR_STANDARD_NORMAL,
    ) -> Generated:
        temperature, one_label = self._sample_params(
            model, count, self.limits.max_samples, temperature, label
        )
        mixture = self._prior_mixture(model, prior)
        used_seed = self._seed(seed)
        if mixture is None:  # (count, D) ~ N(0, temperature^2 I)
            latents = self._normal.draw(used_seed, count, model.metadata.latent_dim, temperature)
        else:
            rng = latent_space.prior_generator(used_seed)
            latents = latent_space.draw_mixture(rng, count, mixture, temperature)
        inputs = [latents] if one_label is None else [latents, np.repeat(one_label, count)]
        (images,) = await model.decoder.submit(inputs)  # (count, C, H, W)
        counts = self.metrics.samples_pending
        name = model.metadata.name
        counts[name] = counts.get(name, 0) + count
        return Generated(images, latents, model, used_seed)  # type: ignore[arg-type]

    async def sample_stream(
        self,
        model: ServedModel,
        count: int,
        chunk_size: int = 0,
        seed: int | None = None,
        temperature: float = 0.0,
        label: int | None = None,
        prior: str = PRIOR_STANDARD_NORMAL,
    ) -> AsyncIterator[Generated]:
        """Sample in chunks of `chunk_size` (0: the server's default); the latents are the same as
        one Sample call of `count` with this seed would draw, so chunking never changes the images."""
        temperature, one_label = self._sample_params(
            model, count, self.limits.max_stream_samples, temperature, label
        )
        mixture = self._prior_mixture(model, prior)
        chunk_size = chunk_size or min(DEFAULT_STREAM_CHUNK, self.limits.max_samples)
        if not 1 <= chunk_size <= self.limits.max_samples:
            raise InvalidArgument(
                f"chunk_size must be between 1 and {self.limits.max_samples} (0: server default), "
                f"got {chunk_size}"
            )
        used_seed = self._seed(seed)
        dim = model.metadata.latent_dim
        rng = latent_space.prior_generator(used_seed)
        for start in range(0, count, chunk_size):
            rows = min(chunk_size, count - start)
            latents = latent_space.draw_latents(rng, rows, dim, temperature, mixture)  # (rows, D)
            labels = None if one_label is None else np.repeat(one_label, rows)
            images = await model.decode(latents, labels)
            counts = self.metrics.samples_pending
            counts[model.metadata.name] = counts.get(model.metadata.name, 0) + rows
            yield Generated(images, latents, model, used_seed)

    async def interpolate(
        self,
        model: ServedModel,
        steps: int,
        spherical: bool,
        start_image: np.ndarray | None = None,
        end_image: np.ndarray | None = None,
        start_latent: np.ndarray | None = None,
        end_latent: np.ndarray | None = None,
        label: int | None = None,
        clamp: bool = False,
    ) -> Generated:
        """Decode `steps` points between two latents, or between the posterior means of two images."""
        limit = self.limits.max_interpolation_steps
        if not 2 <= steps <= limit:
            raise InvalidArgument(f"steps must be between 2 and {limit}, got {steps}")
        meta = model.metadata
        if meta.conditional and label is None:
            raise InvalidArgument(
                f"model {meta.name!r} is conditional: set label to a class in 0..{meta.num_classes - 1}"
            )
        endpoint_labels = self._labels(model, [] if label is None else [label, label], 2)
        if start_image is not None and end_image is not None:
            pair = []
            for what, image in (("images.start", start_image), ("images.end", end_image)):
                batch = image[None] if image.ndim == 3 else image
                self._check_images(model, batch, what)
                if len(batch) != 1:
                    raise InvalidArgument(f"{what}: send one image, got {len(batch)}")
                pair.append(self.check_image_range(batch, what, clamp))
            mean, _ = await model.encode(np.concatenate(pair), endpoint_labels)
            start, end = mean[0], mean[1]
        elif start_latent is not None and end_latent is not None:
            ends = []
            for what, vector in (("latents.start", start_latent), ("latents.end", end_latent)):
                row = vector[None] if vector.ndim == 1 else vector
                self._check_latents(model, row, what)
                if len(row) != 1:
                    raise InvalidArgument(f"{what}: send one latent vector, got {len(row)}")
                ends.append(row[0])
            start, end = ends
        else:
            raise InvalidArgument("set either images (start and end) or latents (start and end)")
        path = (latent_space.slerp if spherical else latent_space.lerp)(start, end, steps)
        labels = None if endpoint_labels is None else np.full(steps, label, dtype=np.int64)
        images = await model.decode(path, labels)
        return Generated(images, path, model)

"""Runs a model version's encoder, decoder and two-stage prior decoder through their batchers, on the
process's event loop."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Executor

import numpy as np

from server.inference.batching import Batcher, BatchingConfig, BatchObserver, RunFunction, run_model
from server.inference.sessions import ModelSessions
from server.metrics import Metrics
from server.repository import GaussianMixture, ModelMetadata

# "prior_decoder" (the two-stage prior's u -> z graph) exists where the version has that prior.
COMPONENTS = ("encoder", "decoder", "prior_decoder")


class ServedModel:
    """The graphs of one ModelSessions (encoder, decoder, and the two-stage prior's decoder where the
    version has one), each behind its own Batcher when batching is on.

    `offload` is where model calls run: None runs them on the event loop's thread (cheapest for CPU
    models of a fraction of a millisecond), an Executor runs them there while the loop serves on.
    """

    def __init__(
        self,
        sessions: ModelSessions,
        config: BatchingConfig,
        metrics: Metrics,
        offload: Executor | None = None,
    ) -> None:
        self.sessions = sessions
        self.config = config
        self.metrics = metrics
        self.offload = offload
        meta = sessions.metadata
        self._runs: dict[str, RunFunction] = {
            "encoder": self._run_encoder,
            "decoder": self._run_decoder,
        }
        if sessions.prior_decoder is not None:
            self._runs["prior_decoder"] = self._run_prior_decoder
        self._batchers: dict[str, Batcher] = {}
        if config.enabled:
            for component in self._runs:
                self._batchers[component] = Batcher(
                    f"{meta.name}/{meta.version}/{component}",
                    self._runs[component],
                    config,
                    self._observer(component),
                    offload,
                    self.metrics.child(self.metrics.queue_rows, meta.name, component).set,
                )

    @property
    def metadata(self) -> ModelMetadata:
        return self.sessions.metadata

    @property
    def provider(self) -> str:
        return self.sessions.provider

    @property
    def mixture(self) -> GaussianMixture | None:
        """The version's mixture prior, loaded with it; None when it has none."""
        return self.sessions.mixture

    @property
    def class_mixtures(self) -> tuple[GaussianMixture, ...] | None:
        """A conditional version's mixture per class (index = label); None when it has none."""
        return self.sessions.class_mixtures

    @property
    def noise_dim(self) -> int:
        """Standard normals per row the two-stage prior takes; 0 when the version has none."""
        info = self.sessions.prior_decoder_info
        return 0 if info is None else info.noise_dim

    @property
    def priors(self) -> tuple[str, ...]:
        """The priors this version samples, as loaded (a refused prior file is left out)."""
        return self.sessions.priors

    @property
    def refused(self) -> dict[str, str]:
        """Why each declared prior that did not load was refused, by prior name."""
        return self.sessions.refused

    def _observer(self, component: str) -> BatchObserver:
        name = self.sessions.metadata.name

        def observe(rows: int, seconds: float, waits: list[float]) -> None:
            self.metrics.observe_batch(name, component, rows, seconds, waits)

        return observe

    def _run_encoder(self, inputs: Sequence[np.ndarray | None]) -> Sequence[np.ndarray | None]:
        return self.sessions.encode(inputs[0], inputs[1])  # type: ignore[arg-type]

    def _run_decoder(self, inputs: Sequence[np.ndarray | None]) -> Sequence[np.ndarray | None]:
        return [self.sessions.decode(inputs[0], inputs[1])]  # type: ignore[arg-type]

    def _run_prior_decoder(
        self, inputs: Sequence[np.ndarray | None]
    ) -> Sequence[np.ndarray | None]:
        return [self.sessions.generate_latents(inputs[0])]  # type: ignore[arg-type]

    async def _call(
        self, component: str, inputs: list[np.ndarray | None]
    ) -> Sequence[np.ndarray | None]:
        batcher = self._batchers.get(component)
        if batcher is not None:
            return await batcher.submit(inputs)
        start = time.perf_counter()
        outputs = await run_model(self._runs[component], inputs, self.offload)
        rows = len(inputs[0])  # type: ignore[arg-type]
        self.metrics.observe_batch(
            self.sessions.metadata.name, component, rows, time.perf_counter() - start, [0.0]
        )
        return outputs

    async def encode(
        self, images: np.ndarray, labels: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, C, H, W) images -> mean (N, D), log-variance (N, D) or None."""
        mean, log_variance = await self._call("encoder", [images, labels])
        return mean, log_variance  # type: ignore[return-value]

    async def decode(self, latents: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        """(N, D) latents -> (N, C, H, W) images."""
        (images,) = await self._call("decoder", [latents, labels])
        return images  # type: ignore[return-value]

    async def generate_latents(self, noise: np.ndarray) -> np.ndarray:
        """The two-stage prior: (N, noise_dim) noise -> (N, D) latents, batched like the decoder."""
        (latents,) = await self._call("prior_decoder", [noise])
        return latents  # type: ignore[return-value]

    def close(self) -> None:
        """Stop batching (call on the event loop); queued work still runs, late callers run alone."""
        for batcher in self._batchers.values():
            batcher.close()

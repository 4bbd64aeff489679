"""Runs a model version's encoder and decoder through its batchers, on the process's event loop."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Executor

import numpy as np

from server.inference.batching import Batcher, BatchingConfig, BatchObserver, RunFunction, run_model
from server.inference.sessions import ModelSessions
from server.metrics import Metrics
from server.repository import GaussianMixture, ModelMetadata

COMPONENTS = ("encoder", "decoder")


class ServedModel:
    """The encoder and decoder of one ModelSessions, each behind a Batcher when batching is on.

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
        self._batchers: dict[str, Batcher] = {}
        if config.enabled:
            for component in COMPONENTS:
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
        """The version's learned prior, loaded with it; None when it has none."""
        return self.sessions.mixture

    def _observer(self, component: str) -> BatchObserver:
        name = self.sessions.metadata.name

        def observe(rows: int, seconds: float, waits: list[float]) -> None:
            self.metrics.observe_batch(name, component, rows, seconds, waits)

        return observe

    def _run_encoder(self, inputs: Sequence[np.ndarray | None]) -> Sequence[np.ndarray | None]:
        return self.sessions.encode(inputs[0], inputs[1])  # type: ignore[arg-type]

    def _run_decoder(self, inputs: Sequence[np.ndarray | None]) -> Sequence[np.ndarray | None]:
        return [self.sessions.decode(inputs[0], inputs[1])]  # type: ignore[arg-type]

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

    def close(self) -> None:
        """Stop batching (call on the event loop); queued work still runs, late callers run alone."""
        for batcher in self._batchers.values():
            batcher.close()

"""A model version as served: its sessions, metadata and learned prior, and one runner per component
(a Batcher, or Unbatched when batching is off) that the data plane submits to."""

from __future__ import annotations

from concurrent.futures import Executor

import numpy as np

from server.inference.batching import Batcher, BatchingConfig, Unbatched
from server.inference.sessions import ModelSessions
from server.metrics import Metrics
from server.repository import GaussianMixture, ModelMetadata

COMPONENTS = ("encoder", "decoder")


class ServedModel:
    """The encoder and decoder of one ModelSessions, each behind a Batcher when batching is on.

    The data plane calls `await served.decoder.submit([latents])` (plus labels for conditional
    models): inputs in the graph's order, outputs as the graph returns them. `offload` is where
    model calls run: None runs them on the event loop's thread (cheapest for CPU models of a
    fraction of a millisecond), an Executor runs them there while the loop serves on.
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
        self.metadata: ModelMetadata = meta
        self.provider: str = sessions.provider
        # The version's learned prior, loaded with it; None when it has none.
        self.mixture: GaussianMixture | None = sessions.mixture
        runners: dict[str, Batcher | Unbatched] = {}
        for component in COMPONENTS:
            log = metrics.batch_log(meta.name, component)
            run = sessions.run_function(component)
            if config.enabled:
                batcher = Batcher(
                    f"{meta.name}/{meta.version}/{component}",
                    run,
                    config,
                    log.records.append,
                    offload,
                )
                log.queues.add(batcher)
                runners[component] = batcher
            else:
                runners[component] = Unbatched(run, log.records.append, offload)
        self.encoder = runners["encoder"]
        self.decoder = runners["decoder"]

    def _inputs(self, values: np.ndarray, labels: np.ndarray | None) -> list[np.ndarray | None]:
        return [values] if labels is None else [values, labels]

    async def encode(
        self, images: np.ndarray, labels: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, C, H, W) float32 images -> mean (N, D), log-variance (N, D) or None (autoencoders)."""
        outputs = await self.encoder.submit(self._inputs(images, labels))
        return outputs[0], (outputs[1] if len(outputs) > 1 else None)  # type: ignore[return-value]

    async def decode(self, latents: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        """(N, D) float32 latents -> (N, C, H, W) images."""
        (images,) = await self.decoder.submit(self._inputs(latents, labels))
        return images  # type: ignore[return-value]

    def close(self) -> None:
        """Stop batching (call on the event loop); queued work still runs, late callers run alone."""
        self.encoder.close()
        self.decoder.close()

"""A model version as served: its sessions, metadata and learned priors, and one runner per component
(a Batcher, or Unbatched when batching is off) that the data plane submits to: the encoder, the
decoder, and the two-stage prior's decoder where the version has one."""

from __future__ import annotations

from concurrent.futures import Executor

import numpy as np

from server.inference.batching import Batcher, BatchingConfig, Unbatched
from server.inference.sessions import ModelSessions
from server.metrics import Metrics
from server.repository import GaussianMixture, ModelMetadata

# "prior_decoder" (the two-stage prior's noise -> z graph) exists where the version has that prior.
COMPONENTS = ("encoder", "decoder", "prior_decoder")


class ServedModel:
    """The graphs of one ModelSessions (encoder, decoder, and the two-stage prior's decoder where the
    version has one), each behind its own Batcher when batching is on.

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
        # The version's learned priors, loaded with it; None when it has none.
        self.mixture: GaussianMixture | None = sessions.mixture
        # A conditional version's mixture per class (index = label).
        self.class_mixtures: tuple[GaussianMixture, ...] | None = sessions.class_mixtures
        info = sessions.prior_decoder_info
        # Standard normals per row the two-stage prior takes; 0 when the version has none.
        self.noise_dim: int = 0 if info is None else info.noise_dim
        # The priors this version samples, as loaded (a refused prior file is left out), and why
        # each declared prior that did not load was refused.
        self.priors: tuple[str, ...] = sessions.priors
        self.refused: dict[str, str] = sessions.refused
        runners: dict[str, Batcher | Unbatched] = {}
        components = COMPONENTS if sessions.prior_decoder is not None else COMPONENTS[:2]
        for component in components:
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
        self.prior_decoder: Batcher | Unbatched | None = runners.get("prior_decoder")

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

    async def generate_latents(self, noise: np.ndarray) -> np.ndarray:
        """The two-stage prior: (N, noise_dim) float32 noise -> (N, D) latents, batched like the
        decoder."""
        if self.prior_decoder is None:
            raise ValueError(f"{self.metadata.name}/{self.metadata.version} has no two-stage prior")
        (latents,) = await self.prior_decoder.submit([noise])
        return latents  # type: ignore[return-value]

    def close(self) -> None:
        """Stop batching (call on the event loop); queued work still runs, late callers run alone."""
        self.encoder.close()
        self.decoder.close()
        if self.prior_decoder is not None:
            self.prior_decoder.close()

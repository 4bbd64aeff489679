"""Runs a model version's encoder and decoder through its batchers, honouring deadlines and cancellation."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Sequence
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import numpy as np

from server.batching import Batcher, BatchingConfig, BatchObserver
from server.errors import Cancelled, DeadlineExceeded
from server.metrics import Metrics
from server.repository import GaussianMixture, ModelMetadata
from server.runtime import ModelRuntime


@dataclass
class CallScope:
    """One RPC as the data plane sees it: its deadline and whether its caller has gone away."""

    deadline: float | None = None  # time.monotonic() seconds; None waits for ever
    cancelled: threading.Event = field(default_factory=threading.Event)
    _futures: list[Future] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def track(self, future: Future) -> None:
        with self._lock:
            self._futures.append(future)
        if self.cancelled.is_set():
            future.cancel()

    def cancel(self) -> None:
        """The caller cancelled or timed out: drop its queued work from any batch not yet started."""
        self.cancelled.set()
        with self._lock:
            for future in self._futures:
                future.cancel()

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()


current_call: contextvars.ContextVar[CallScope | None] = contextvars.ContextVar(
    "current_call", default=None
)


class ModelExecutor:
    """The encoder and decoder of one ModelRuntime, each behind a Batcher when batching is on."""

    def __init__(self, runtime: ModelRuntime, config: BatchingConfig, metrics: Metrics) -> None:
        self.runtime = runtime
        self.config = config
        self.metrics = metrics
        meta = runtime.metadata
        self._batchers: dict[str, Batcher] = {}
        if config.enabled:
            for component, run in (("encoder", self._run_encoder), ("decoder", self._run_decoder)):
                self._batchers[component] = Batcher(
                    f"{meta.name}/{meta.version}/{component}",
                    run,
                    config,
                    self._observer(component),
                )

    @property
    def metadata(self) -> ModelMetadata:
        return self.runtime.metadata

    @property
    def provider(self) -> str:
        return self.runtime.provider

    @property
    def mixture(self) -> GaussianMixture | None:
        """The version's learned prior, loaded with it; None when it has none."""
        return self.runtime.mixture

    def _observer(self, component: str) -> BatchObserver:
        name = self.runtime.metadata.name

        def observe(rows: int, seconds: float, waits: list[float]) -> None:
            self.metrics.observe_batch(name, component, rows, seconds, waits)
            self.metrics.child(self.metrics.queue_rows, name, component).set(
                self._batchers[component].queued_rows
            )

        return observe

    def _run_encoder(self, inputs: Sequence[np.ndarray | None]) -> Sequence[np.ndarray | None]:
        return self.runtime.encode(inputs[0], inputs[1])  # type: ignore[arg-type]

    def _run_decoder(self, inputs: Sequence[np.ndarray | None]) -> Sequence[np.ndarray | None]:
        return [self.runtime.decode(inputs[0], inputs[1])]  # type: ignore[arg-type]

    def _call(self, component: str, inputs: list[np.ndarray | None]) -> Sequence[np.ndarray | None]:
        scope = current_call.get()
        if scope is not None and scope.cancelled.is_set():
            raise Cancelled("the call was cancelled by its client before it ran")
        batcher = self._batchers.get(component)
        name = self.runtime.metadata.name
        if batcher is None:
            run = self._run_encoder if component == "encoder" else self._run_decoder
            start = time.perf_counter()
            outputs = run(inputs)
            rows = len(inputs[0])  # type: ignore[arg-type]
            self.metrics.observe_batch(name, component, rows, time.perf_counter() - start, [0.0])
            return outputs
        future = batcher.submit(inputs)
        self.metrics.child(self.metrics.queue_rows, name, component).set(batcher.queued_rows)
        if scope is None:
            return future.result()
        scope.track(future)
        try:
            return future.result(timeout=scope.remaining())
        except FutureTimeout:
            future.cancel()
            raise DeadlineExceeded(
                f"{name}: the deadline passed while waiting for the {component}; "
                "raise the client timeout or send fewer rows"
            ) from None
        except CancelledError:
            raise Cancelled("the call was cancelled by its client before it ran") from None

    def encode(
        self, images: np.ndarray, labels: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, C, H, W) images -> mean (N, D), log-variance (N, D) or None."""
        mean, log_variance = self._call("encoder", [images, labels])
        return mean, log_variance  # type: ignore[return-value]

    def decode(self, latents: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        """(N, D) latents -> (N, C, H, W) images."""
        (images,) = self._call("decoder", [latents, labels])
        return images  # type: ignore[return-value]

    def close(self) -> None:
        """Stop batching; queued work still runs, and late callers run unbatched."""
        for batcher in self._batchers.values():
            batcher.close()

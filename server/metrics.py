"""Prometheus metrics of the server (names prefixed vae_), on a registry of their own per server.

With several serving processes (`vae-serve --processes N`), prometheus_client's multi-process mode
keeps each process's values in memory-mapped files under PROMETHEUS_MULTIPROC_DIR, and the supervisor's
`/metrics` aggregates them (`multiprocess_registry`): counters and histograms add up, gauges say how
they combine (`multiprocess_mode`). The variable must be set before prometheus_client is imported.

The hot path never calls prometheus_client: a call appends one tuple to `request_log`, a batch one to
its `BatchLog`, a Sample adds to `samples_pending` (plain lists and a dict, on the event loop's thread),
and `flush()` folds them into the metrics in bulk, one histogram bucket count per bucket instead of a
locked (and, with several processes, memory-mapped) write per observation. The serving process flushes
every `FLUSH_SECONDS` while calls keep coming, and at each scrape of its own `/metrics` (one
process: `before_collect`), or, with several processes (whose files the supervisor reads), as soon as
no call is in flight; either way a scrape sees every call answered before it.
"""

from __future__ import annotations

import os
import weakref
from collections import defaultdict
from typing import Any, Protocol

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Request latency spans sub-millisecond decoder calls to multi-second 1024-sample requests.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
FLUSH_SECONDS = 1.0  # the longest a scrape lags the calls while the server is busy
BULK_FROM = 16  # observations of one series per flush from which numpy's bucket count is cheaper
LOG_LIMIT = 65536  # records kept before a flush is forced (a Metrics nobody flushes stays bounded)

# One finished call: (rpc, model, status code name, seconds from receiving it to answering).
RequestRecord = tuple[str, str, str, float]
# One onnxruntime call: (rows, inference seconds, the queue wait of each request merged into it).
BatchRecord = tuple[int, float, list[float]]


class QueueDepth(Protocol):
    """What the queue gauge reads at each flush: a batcher's waiting rows."""

    @property
    def queued_rows(self) -> int: ...


class BatchLog:
    """The batches of one (model, component) since the last flush; the batcher appends to
    `records` (list.append, no call into this module) and reports its queue through `queues`."""

    def __init__(self) -> None:
        self.records: list[BatchRecord] = []
        self.queues: weakref.WeakSet[Any] = weakref.WeakSet()


def _add_observations(child: Any, values: list[float], bounds: np.ndarray) -> None:
    """Observe `values` on a histogram child. A few go through `observe` one by one; many are
    counted per bucket with numpy and added with one write per non-empty bucket (what `observe`
    does for each value: the first bucket whose upper bound is >= the value, and the sum), through
    the child's `_buckets` and `_sum` (prometheus_client's Histogram internals, unchanged since 0.4;
    tests/test_server_metrics_fold.py checks a bulk fold against one observe per value)."""
    if len(values) < BULK_FROM:
        for value in values:
            child.observe(value)
        return
    array = np.asarray(values, dtype=np.float64)
    counts = np.bincount(np.searchsorted(bounds, array, side="left"), minlength=len(bounds) + 1)
    buckets = child._buckets
    for index in np.flatnonzero(counts[: len(buckets)]):
        buckets[index].inc(int(counts[index]))
    child._sum.inc(float(array.sum()))


class _BeforeCollect:
    """Registered first, so a scrape runs Metrics.before_collect before any metric is read."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> list[Any]:
        hook = self.metrics.before_collect
        if hook is not None:
            hook()
        return []


class Metrics:
    """The server's metrics; each method is a named hook the servicer or data plane calls."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        # Set by the serving process: folds what was recorded before a scrape reads the metrics.
        self.before_collect: Any = None
        self.registry.register(_BeforeCollect(self))
        # In multi-process mode these would describe one process (whichever answers), not the server.
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        if not self.multiprocess:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        self._loaded: set[tuple[str, str, str]] = set()
        r = self.registry
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        # What the hot path records between flushes (see the module docstring).
        self.request_log: list[RequestRecord] = []
        self.samples_pending: dict[str, int] = {}
        self._batch_logs: dict[tuple[str, str], BatchLog] = {}
        self._queue_depth: dict[tuple[str, str], int] = {}  # as last set on the gauge
        self._last_in_flight = -1
        self._latency_bounds = np.array(LATENCY_BUCKETS, dtype=np.float64)
        self._batch_bounds = np.array(BATCH_BUCKETS, dtype=np.float64)
        self.requests = Counter(
            "vae_requests", "RPCs handled, by outcome", ["rpc", "model", "code"], registry=r
        )
        # The code is a label so that fast refusals do not pull the percentiles of answered calls down.
        self.request_latency = Histogram(
            "vae_request_latency_seconds",
            "Time from receiving an RPC to sending its answer, by outcome",
            ["rpc", "model", "code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_time = Histogram(
            "vae_inference_seconds",
            "Time inside one onnxruntime call",
            ["model", "component"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "vae_queue_wait_seconds",
            "Time a request waited before its onnxruntime call started",
            ["model", "component"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "vae_batch_size",
            "Rows in one onnxruntime call",
            ["model", "component"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.samples = Counter(
            "vae_samples_generated", "Images generated by Sample", ["model"], registry=r
        )
        self.in_flight = Gauge(
            "vae_in_flight_requests",
            "RPCs being handled now (all serving processes together)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.model_loaded = Gauge(
            "vae_model_loaded",
            "1 for each loaded model version, labelled with the execution provider in use "
            "(0 once unloaded, with several processes)",
            ["model", "version", "provider"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.queue_rows = Gauge(
            "vae_queue_rows",
            "Rows waiting in a batcher's queue (all serving processes together)",
            ["model", "component"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.reloads = Counter(
            "vae_repository_reloads",
            "Repository scans, by outcome (changed, unchanged, failed)",
            ["outcome"],
            registry=r,
        )
        self.load_failures = Counter(
            "vae_model_load_failures", "Model versions that failed to load", ["model"], registry=r
        )

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, remembered: prometheus_client takes a lock and builds a key on
        every labels() call, which the hot path pays several times per request. Only for metrics
        whose children are never removed (not model_loaded, which is cleared on reload)."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def batch_log(self, model: str, component: str) -> BatchLog:
        """Where the batchers of a model's component record their batches and queues (one log
        for every version of the model, as the metrics are labelled by name)."""
        key = (model, component)
        log = self._batch_logs.get(key)
        if log is None:
            log = self._batch_logs[key] = BatchLog()
        return log

    def flush(self, in_flight: int) -> None:
        """Fold what the hot path recorded since the last flush into the metrics; `in_flight`: the
        calls being handled now. Call on the event loop's thread, the one that records. Writes only
        what changed: an idle server's flush after each call costs a few observes."""
        if in_flight != self._last_in_flight:
            self.in_flight.set(in_flight)
            self._last_in_flight = in_flight
        if 0 < len(self.request_log) < BULK_FROM:  # an idle server's flush after a call or two
            requests = self.request_log[:]
            del self.request_log[: len(requests)]
            for rpc, model, code, seconds in requests:
                self.child(self.requests, rpc, model, code).inc()
                self.child(self.request_latency, rpc, model, code).observe(seconds)
        elif self.request_log:
            requests = self.request_log[:]
            del self.request_log[: len(requests)]
            by_key: defaultdict[tuple[str, str, str], list[float]] = defaultdict(list)
            for rpc, model, code, seconds in requests:
                by_key[(rpc, model, code)].append(seconds)
            for labels, seconds_list in by_key.items():
                self.child(self.requests, *labels).inc(len(seconds_list))
                _add_observations(
                    self.child(self.request_latency, *labels), seconds_list, self._latency_bounds
                )
        if self.samples_pending:
            for model, count in list(self.samples_pending.items()):
                self.child(self.samples, model).inc(count)
            self.samples_pending.clear()
        for key, log in self._batch_logs.items():
            if log.records:
                records = log.records[:]
                del log.records[: len(records)]
                self._fold_batches(*key, records)
            elif not in_flight and not self._queue_depth.get(key):
                continue  # idle, no batch since the last flush and nothing was queued then
            depth = sum(queue.queued_rows for queue in log.queues)
            if depth != self._queue_depth.get(key):
                self.child(self.queue_rows, *key).set(depth)
                self._queue_depth[key] = depth

    def _fold_batches(self, model: str, component: str, records: list[BatchRecord]) -> None:
        rows = [float(r[0]) for r in records]
        seconds = [r[1] for r in records]
        waits = [w for r in records for w in r[2]]
        bounds = self._latency_bounds
        _add_observations(self.child(self.inference_time, model, component), seconds, bounds)
        _add_observations(self.child(self.batch_size, model, component), rows, self._batch_bounds)
        _add_observations(self.child(self.queue_wait, model, component), waits, bounds)

    def set_loaded_models(self, loaded: list[tuple[str, int, str]]) -> None:
        """Replace the loaded-model gauge with (name, version, provider) triples.

        One process drops the series of an unloaded version; in multi-process mode a series cannot
        be removed from the shared files, so it is set to 0 instead.
        """
        now = {(name, str(version), provider) for name, version, provider in loaded}
        if self.multiprocess:
            for gone in self._loaded - now:
                self.model_loaded.labels(*gone).set(0)
        else:
            self.model_loaded.clear()
        for labels in now:
            self.model_loaded.labels(*labels).set(1)
        self._loaded = now


def multiprocess_registry(directory: str) -> CollectorRegistry:
    """A registry whose collection reads and aggregates every serving process's files."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    return registry

"""Metrics recorded on the hot path and folded in bulk equal one prometheus_client call per value."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry

from server.metrics import BULK_FROM, Metrics


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        if family.name.startswith("vae_")
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_a_bulk_fold_equals_one_observe_per_value():
    rng = np.random.default_rng(0)
    latencies = rng.lognormal(-6.0, 2.0, size=500).tolist()  # spread over every bucket
    waits = rng.exponential(0.002, size=300).tolist()
    rows = rng.integers(1, 3000, size=300).tolist()
    folded, direct = Metrics(), Metrics()
    for i, seconds in enumerate(latencies):
        code = "OK" if i % 7 else "INVALID_ARGUMENT"
        folded.request_log.append(("Sample", "m", code, seconds))
        direct.requests.labels("Sample", "m", code).inc()
        direct.request_latency.labels("Sample", "m", code).observe(seconds)
    log = folded.batch_log("m", "decoder")
    for n, wait in zip(rows, waits, strict=True):
        log.records.append((n, wait * 2, [wait]))
        direct.inference_time.labels("m", "decoder").observe(wait * 2)
        direct.batch_size.labels("m", "decoder").observe(n)
        direct.queue_wait.labels("m", "decoder").observe(wait)
    folded.samples_pending["m"] = 500
    direct.samples.labels("m").inc(500)
    direct.in_flight.set(3)
    direct.queue_rows.labels("m", "decoder").set(0)  # the fold reads the queue (none here)
    folded.flush(in_flight=3)
    assert len(latencies) >= BULK_FROM  # the bulk path, not the one-by-one one
    mine, theirs = samples(folded.registry), samples(direct.registry)
    assert mine.keys() == theirs.keys()
    for key, value in theirs.items():
        assert np.isclose(mine[key], value, rtol=1e-12, atol=1e-12), key
    assert not folded.request_log and not log.records and not folded.samples_pending


def test_a_small_fold_and_a_second_flush_add_nothing_twice():
    metrics = Metrics()
    metrics.request_log.extend([("Decode", "m", "OK", 0.001), ("Decode", "m", "OK", 0.003)])
    metrics.flush(0)
    metrics.flush(0)
    got = samples(metrics.registry)
    labels = (("code", "OK"), ("model", "m"), ("rpc", "Decode"))
    assert got[("vae_requests_total", labels)] == 2.0
    assert got[("vae_request_latency_seconds_count", labels)] == 2.0
    assert np.isclose(got[("vae_request_latency_seconds_sum", labels)], 0.004)

"""Helpers for the server tests: start a server on loopback, scrape its metrics, edit a repository."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
from prometheus_client.parser import text_string_to_metric_families

from server.inference.batching import BatchingConfig
from server.process.settings import Limits, Settings
from server.proto_gen.vae.v1 import vae_pb2, vae_pb2_grpc
from tests.conftest import free_port

BASE_SETTINGS = Settings(
    host="127.0.0.1",
    port=0,
    metrics_host="127.0.0.1",
    metrics_port=0,
    providers=("CPUExecutionProvider",),
    intra_op_threads=1,
    limits=Limits(max_samples=256, max_message_bytes=8 * 1024 * 1024, max_stream_samples=5000),
    grace_seconds=5.0,
    reload_interval_seconds=0.0,  # tests trigger reloads themselves
    processes=1,
    health_port=0,  # a fixed default port would collide between tests; health tests set their own
    http_port=0,  # off (0); the HTTP tests give it a free port
)


def settings(
    repository: Path, batching: BatchingConfig | None = None, **overrides: Any
) -> Settings:
    return replace(
        BASE_SETTINGS,
        repository=repository,
        metrics_port=overrides.pop("metrics_port", free_port()),
        batching=batching or BatchingConfig(),
        **overrides,
    )


@contextmanager
def running_server(config: Settings) -> Iterator[Any]:
    """An in-process VaeServer on loopback ports; stopped (with a short grace) on exit."""
    from server.process.app import VaeServer

    server = VaeServer(config)
    server.start()
    try:
        yield server
    finally:
        server.stop(grace=1.0)


@contextmanager
def stub_for(server: Any) -> Iterator[vae_pb2_grpc.VaeServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield vae_pb2_grpc.VaeServiceStub(channel)


def scrape(server: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of GET /metrics: {(name, sorted labels): value}."""
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(server: Any, name: str, **labels: str) -> float:
    """One sample's value, 0.0 when it has not been observed yet."""
    return scrape(server).get((name, tuple(sorted(labels.items()))), 0.0)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll `predicate` (for state only observable from outside, e.g. a metric) until true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.01)


def copy_repository(
    source: Path, destination: Path, models: tuple[str, ...] = ("tiny-vae",)
) -> Path:
    destination.mkdir(parents=True, exist_ok=True)
    for name in models:
        shutil.copytree(source / name, destination / name)
    return destination


def add_version(repository: Path, name: str, from_version: int, new_version: int) -> Path:
    """Copy a version to a new number the way export does: into a temporary name, then rename."""
    staging = repository / name / f".staging-{new_version}"
    shutil.copytree(repository / name / str(from_version), staging)
    meta_path = staging / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["version"] = new_version
    meta_path.write_text(json.dumps(meta))
    target = repository / name / str(new_version)
    staging.rename(target)
    return target


def reload_and_wait(server: Any) -> None:
    """Trigger a repository scan and block until the watcher has finished it."""
    with server.reloaded:
        seen = server.reload_count
        server.reload_now()
        assert server.reloaded.wait_for(lambda: server.reload_count > seen, timeout=30)


def sample_request(model: str = "tiny-vae", count: int = 1, seed: int = 0, **kw: Any):
    return vae_pb2.SampleRequest(model=vae_pb2.ModelRef(name=model), count=count, seed=seed, **kw)

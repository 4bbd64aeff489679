"""Hot reload under load: new versions swap in with no failed call, broken ones are rejected."""

from __future__ import annotations

import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from server.inference.batching import BatchingConfig
from server.proto_gen.vae.v1 import vae_pb2
from tests.server_helpers import (
    add_version,
    copy_repository,
    metric,
    reload_and_wait,
    running_server,
    sample_request,
    settings,
    stub_for,
)


class Load:
    """Client threads calling Sample on the latest version until stopped, tallying outcomes."""

    def __init__(self, server, threads: int = 4) -> None:
        self.server = server
        self.stop = threading.Event()
        self.outcomes: Counter[str] = Counter()
        self.versions_seen: set[int] = set()
        self.saw_version: dict[int, threading.Event] = {v: threading.Event() for v in range(1, 4)}
        self.first_answer = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        with stub_for(self.server) as stub:
            while not self.stop.is_set():
                try:
                    response = stub.Sample(sample_request(count=2), timeout=10)
                    outcome, version = "OK", response.model.version
                except grpc.RpcError as exc:
                    outcome, version = exc.code().name + ": " + str(exc.details()), 0
                with self._lock:
                    self.outcomes[outcome] += 1
                    if version:
                        self.versions_seen.add(version)
                        self.saw_version[version].set()
                        self.first_answer.set()

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        assert self.first_answer.wait(10), "no Sample answered before the reload"
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(30)


@pytest.fixture
def server(repository: Path, tmp_path: Path) -> Iterator:
    repo = copy_repository(repository, tmp_path / "repo")
    config = settings(repo, BatchingConfig(max_batch_size=8, max_queue_delay_ms=1))
    with running_server(config) as running:
        yield running


def test_a_new_version_swaps_in_under_load_with_no_failed_call(server):
    with Load(server) as load:
        add_version(server.settings.repository, "tiny-vae", 1, 2)
        reload_and_wait(server)
        assert load.saw_version[2].wait(10)
    assert set(load.outcomes) == {"OK"}, load.outcomes


def test_a_removed_version_is_unloaded_under_load_with_no_failed_call(server):
    repo = server.settings.repository
    add_version(repo, "tiny-vae", 1, 2)
    reload_and_wait(server)
    with Load(server) as load:
        shutil.rmtree(repo / "tiny-vae" / "2")
        reload_and_wait(server)
        assert load.saw_version[1].wait(10)
    assert set(load.outcomes) == {"OK"}, load.outcomes


def test_a_removed_version_is_not_found_afterwards(server):
    repo = server.settings.repository
    add_version(repo, "tiny-vae", 1, 2)
    reload_and_wait(server)
    shutil.rmtree(repo / "tiny-vae" / "1")
    reload_and_wait(server)
    request = vae_pb2.GetModelInfoRequest(model=vae_pb2.ModelRef(name="tiny-vae", version=1))
    with stub_for(server) as stub, pytest.raises(grpc.RpcError) as missing:
        stub.GetModelInfo(request, timeout=10)
    assert "has no version 1; loaded versions are [2]" in missing.value.details()


def break_version(repo: Path, version: int) -> None:
    target = add_version(repo, "tiny-vae", 1, version)
    (target / "decoder.onnx").write_bytes(b"not an onnx graph")


def test_a_broken_version_is_rejected_and_the_old_one_keeps_serving(server):
    with Load(server) as load:
        break_version(server.settings.repository, 3)
        reload_and_wait(server)
    assert (set(load.outcomes), load.versions_seen) == ({"OK"}, {1})


def test_a_broken_version_counts_a_load_failure(server):
    break_version(server.settings.repository, 3)
    reload_and_wait(server)
    assert metric(server, "vae_model_load_failures_total", model="tiny-vae") == 1.0


def test_a_broken_version_is_not_retried_until_it_changes(server):
    break_version(server.settings.repository, 3)
    reload_and_wait(server)
    reload_and_wait(server)
    assert metric(server, "vae_model_load_failures_total", model="tiny-vae") == 1.0


def test_the_loaded_model_gauge_follows_a_reload(server):
    add_version(server.settings.repository, "tiny-vae", 1, 2)
    reload_and_wait(server)
    labels = {"model": "tiny-vae", "version": "2", "provider": "CPUExecutionProvider"}
    assert metric(server, "vae_model_loaded", **labels) == 1.0


def test_sighup_rescans_the_repository(server):
    import os
    import signal

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    server.install_signal_handlers()
    try:
        add_version(server.settings.repository, "tiny-vae", 1, 2)
        with server.reloaded:
            seen = server.reload_count
            os.kill(os.getpid(), signal.SIGHUP)
            assert server.reloaded.wait_for(lambda: server.reload_count > seen, timeout=30)
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    assert server.store.versions("tiny-vae") == [1, 2]


def test_a_model_added_by_a_reload_reports_serving_in_health(server):
    import json

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    repo = server.settings.repository
    shutil.copytree(repo / "tiny-vae", repo / ".new")
    meta_path = repo / ".new" / "1" / "model.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "name": "tiny-vae-b"}))
    (repo / ".new").rename(repo / "tiny-vae-b")
    reload_and_wait(server)
    request = health_pb2.HealthCheckRequest(service="vae.v1.VaeService/tiny-vae-b")
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def test_a_server_that_never_started_stops_cleanly(repository: Path) -> None:
    from server.process.app import VaeServer

    server = VaeServer(settings(repository, BatchingConfig()))
    server.stop(grace=0.1)  # e.g. after start() failed: nothing to drain, nothing raised
    server.wait()  # returns: the server counts as stopped
    assert server.watcher._task is None  # the watcher never started

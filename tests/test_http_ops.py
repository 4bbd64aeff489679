"""The HTTP front's operation on real servers: a full queue is 429, a passed deadline 504, the drain
(ready turns 503, then new calls get 503 with Retry-After while accepted ones finish), TLS and mTLS
from the same flags as gRPC, several processes sharing the HTTP port, and port clashes."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest
import requests

from server.fronts.calls import DRAINING
from server.inference.batching import BatchingConfig
from server.process.settings import Settings, parse_settings
from tests.conftest import free_port
from tests.pki import Pki, make_pki
from tests.server_helpers import metric, running_server, settings, wait_until
from tests.test_server_ops import serve_process

DIM = 8
SLOW_BATCHING = BatchingConfig(max_batch_size=64, max_queue_delay_ms=1500, max_queue_rows=4)


def decode(base: str, rows: int, **headers: str) -> requests.Response:
    body = {"latents": [[0.0] * DIM] * rows}
    return requests.post(
        f"{base}/v1/models/tiny-vae/decode", json=body, headers=headers, timeout=30
    )


@pytest.fixture
def slow_server(repository):
    """A server whose decoder batch waits 1.5 s for company and queues at most 4 rows."""
    with running_server(settings(repository, SLOW_BATCHING, http_port=free_port())) as server:
        yield server


def queued_rows(server) -> float:
    return metric(server, "vae_queue_rows", model="tiny-vae", component="decoder")


def test_a_full_queue_is_429_with_retry_after(slow_server):
    base = f"http://127.0.0.1:{slow_server.http_port}"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(decode, base, 4)
        wait_until(lambda: queued_rows(slow_server) == 4, what="4 rows queued")
        response = decode(base, 1)
        assert response.status_code == 429, response.text
        assert response.headers["Retry-After"] == "1"
        assert "queue is full (4 rows waiting, limit 4)" in response.json()["error"]
        assert first.result().status_code == 200


def test_a_call_past_its_deadline_is_504(slow_server):
    base = f"http://127.0.0.1:{slow_server.http_port}"
    response = decode(base, 1, **{"X-Vae-Timeout-Ms": "100"})
    assert response.status_code == 504, response.text
    assert "deadline of 100 ms (X-Vae-Timeout-Ms) passed" in response.json()["error"]
    labels = {"rpc": "http.Decode", "model": "tiny-vae", "code": "DEADLINE_EXCEEDED"}
    assert metric(slow_server, "vae_requests_total", **labels) == 1


def test_draining_refuses_new_calls_with_503_and_finishes_accepted_ones(repository):
    config = settings(repository, SLOW_BATCHING, http_port=free_port())
    with running_server(config) as server:
        base = f"http://127.0.0.1:{server.http_port}"
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            accepted = pool.submit(decode, base, 2)
            wait_until(lambda: queued_rows(server) == 2, what="the call queued")
            stopping = threading.Thread(target=server.stop, kwargs={"grace": 10.0})
            stopping.start()
            wait_until(lambda: server.calls.draining, what="the drain to refuse calls")
            refused = decode(base, 1)
            ready = requests.get(f"{base}/v2/health/ready", timeout=10)
            live = requests.get(f"{base}/v2/health/live", timeout=10)
            assert accepted.result().status_code == 200
            stopping.join(30)
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1"
        assert refused.json() == {"error": DRAINING}
        assert ready.status_code == 503 and ready.json() == {"ready": False}
        assert live.status_code == 200  # probes are answered, not refused, while draining


def test_during_the_drain_delay_ready_is_503_while_calls_are_still_served(repository):
    config = settings(repository, http_port=free_port(), drain_delay_seconds=3.0)
    with running_server(config) as server:
        base = f"http://127.0.0.1:{server.http_port}"
        stopping = threading.Thread(target=server.stop, kwargs={"grace": 5.0})
        stopping.start()
        wait_until(
            lambda: requests.get(f"{base}/v2/health/ready", timeout=5).status_code == 503,
            what="ready to turn 503",
        )
        assert decode(base, 1).status_code == 200
        stopping.join(30)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_tls_flags_serve_https(repository, pki):
    config = settings(
        repository,
        http_port=free_port(),
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
    )
    with running_server(config) as server:
        url = f"https://localhost:{server.http_port}/v2/health/live"
        assert requests.get(url, verify=str(pki.ca), timeout=10).json() == {"live": True}
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://localhost:{server.http_port}/v2/health/live", timeout=10)


def test_mtls_requires_a_client_certificate(repository, pki):
    config = settings(
        repository,
        http_port=free_port(),
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca),
    )
    with running_server(config) as server:
        url = f"https://localhost:{server.http_port}/v2"
        client = (str(pki.client_cert), str(pki.client_key))
        assert requests.get(url, verify=str(pki.ca), cert=client, timeout=10).status_code == 200
        # TLS 1.3 finishes the client's handshake first: the refusal is an alert or a closed socket.
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(url, verify=str(pki.ca), timeout=10)


def test_two_processes_share_the_http_port_and_the_metrics_add_up(repository, tmp_path):
    http_port = free_port()
    with serve_process(repository, tmp_path, "--processes=2", f"--http-port={http_port}") as served:
        base = f"http://127.0.0.1:{http_port}"
        prefixes = set()
        for _ in range(24):  # a new connection each: the kernel spreads them over the processes
            response = requests.get(f"{base}/v1/models/tiny-vae/sample?count=1", timeout=30)
            assert response.status_code == 200
            prefixes.add(response.headers["X-Request-Id"][:8])
        assert len(prefixes) == 2, f"all 24 connections went to one process: {prefixes}"
        url = f"http://127.0.0.1:{served.metrics_port}/metrics"
        text = requests.get(url, timeout=10).text
        line = 'vae_requests_total{code="OK",model="tiny-vae",rpc="http.Sample"} 24.0'
        assert line in text


def test_answers_are_not_held_back_by_nagle(live_server):
    """The listening socket says TCP, so asyncio sets TCP_NODELAY on each connection it accepts:
    without it an answer's body waits for the client's delayed ACK of its headers (~40 ms a call,
    seen in BENCHMARKS.md, HTTP front)."""
    import socket

    listening = live_server.server._http.listening
    assert listening is not None and listening.proto == socket.IPPROTO_TCP
    with requests.Session() as session:
        base = f"http://127.0.0.1:{live_server.server.http_port}"
        started = time.perf_counter()
        for _ in range(20):
            assert session.get(f"{base}/v2/health/live", timeout=10).status_code == 200
        assert time.perf_counter() - started < 0.8  # 20 delayed ACKs alone would take 0.8 s


def test_the_http_port_flag_and_variable(monkeypatch):
    assert Settings().http_port == 8080
    assert parse_settings(["--http-port", "0"]).http_port == 0
    monkeypatch.setenv("VAE_HTTP_PORT", "8181")
    assert parse_settings([]).http_port == 8181


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--http-port", "50051"], "--http-port 50051 is also --port"),
        (["--http-port", "9090"], "--http-port 9090 is also --metrics-port"),
        (["--http-port", "70000"], "--http-port '70000'"),
    ],
)
def test_an_http_port_clash_or_bad_port_exits_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        parse_settings(argv)
    assert info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error


def test_an_http_port_in_use_is_a_startup_error(repository):
    from server.process.app import StartupError, VaeServer

    config = settings(repository, http_port=free_port())
    with running_server(config) as server:
        clash = VaeServer(settings(repository, http_port=server.http_port))
        with pytest.raises(StartupError, match=r"cannot bind HTTP to 127\.0\.0\.1"):
            clash.start()
        clash.stop(grace=0)

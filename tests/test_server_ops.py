"""Operations: SIGTERM drain, health while draining, --require-gpu, JSON logs, flags, no torch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.inference.batching import BatchingConfig
from server.process.settings import build_parser
from server.proto_gen.vae.v1 import vae_pb2_grpc
from tests.conftest import free_port
from tests.server_helpers import (
    running_server,
    sample_request,
    settings,
    stub_for,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ServeProcess:
    process: subprocess.Popen
    port: int
    metrics_port: int
    log: Path


@contextmanager
def serve_process(repository: Path, tmp_path: Path, *flags: str) -> Iterator[ServeProcess]:
    """`vae-serve` in a child process on loopback; yields once it prints its listening line."""
    metrics_port = free_port()
    log = tmp_path / "serve.log"
    command = [
        sys.executable,
        "-m",
        "server.process.cli",
        f"--repository={repository}",
        "--host=127.0.0.1",
        "--port=0",
        "--http-port=0",
        "--metrics-host=127.0.0.1",
        f"--metrics-port={metrics_port}",
        "--providers=CPUExecutionProvider",
        "--reload-interval-seconds=0",
        "--processes=2",  # the default on a 2-core machine; pinned so more cores change nothing
        *flags,
    ]
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=ROOT
        )
    try:
        line = process.stdout.readline() if process.stdout else ""
        if "listening on" not in line:
            process.wait(30)
            raise AssertionError(f"vae-serve did not start: {log.read_text()}")
        yield ServeProcess(process, int(line.rsplit(":", 1)[1]), metrics_port, log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def in_flight(metrics_port: int) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
    for line in text.decode().splitlines():
        if line.startswith("vae_in_flight_requests "):
            return float(line.split()[1])
    return 0.0


def test_sigterm_during_load_finishes_accepted_calls_and_exits_zero(repository, tmp_path):
    # Calls wait 1.5 s in the batch queue, so SIGTERM surely lands while all six are in flight.
    flags = ("--max-queue-delay-ms=1500", "--max-batch-size=64", "--grace-seconds=20")
    with serve_process(repository, tmp_path, *flags) as served:
        with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            stub = vae_pb2_grpc.VaeServiceStub(channel)
            calls = [stub.Sample.future(sample_request(seed=i), timeout=30) for i in range(6)]
            wait_until(lambda: in_flight(served.metrics_port) == 6, what="six calls in flight")
            served.process.send_signal(signal.SIGTERM)
            seeds = sorted(call.result().seed for call in calls)
        assert (seeds, served.process.wait(30)) == (list(range(6)), 0)


def test_require_gpu_refuses_to_start_on_a_cpu_machine(repository, tmp_path):
    command = [
        sys.executable,
        "-m",
        "server.process.cli",
        f"--repository={repository}",
        "--port=0",
        "--http-port=0",
        "--metrics-port=0",
        "--require-gpu",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    assert "tiny-vae/1 run on CPUExecutionProvider: CUDA did not load" in result.stderr


def test_json_logs_carry_the_callers_request_id(repository, tmp_path):
    with serve_process(repository, tmp_path, "--log-format=json") as served:
        with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            stub = vae_pb2_grpc.VaeServiceStub(channel)
            with pytest.raises(grpc.RpcError):
                stub.Sample(
                    sample_request(model="no-such-model"),
                    timeout=10,
                    metadata=(("x-request-id", "req-42"),),
                )
        served.process.send_signal(signal.SIGTERM)
        served.process.wait(30)
    text = served.log.read_text()
    # Python's logging writes JSON; onnxruntime's C++ logger writes its own lines to the same stderr.
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert records, text
    refused = [r for r in records if r["message"].startswith("Sample refused (NOT_FOUND)")]
    assert [r["request_id"] for r in refused] == ["req-42"], text


def test_every_answer_carries_a_request_id(repository):
    with running_server(settings(repository)) as server, stub_for(server) as stub:
        _, call = stub.Sample.with_call(sample_request(), timeout=10)
    assert len(dict(call.trailing_metadata())["x-request-id"]) == 16


def test_health_turns_not_serving_as_soon_as_draining_starts(repository):
    config = settings(repository, BatchingConfig(), drain_delay_seconds=5.0)
    with running_server(config) as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watch = health.Watch(
                health_pb2.HealthCheckRequest(service="vae.v1.VaeService/tiny-vae")
            )
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            stopper = threading.Thread(target=server.stop)
            stopper.start()
            status = next(watch).status
            watch.cancel()
        stopper.join(30)
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_every_option_reads_a_vae_environment_variable():
    actions = [a for a in build_parser()._actions if a.dest != "help"]
    missing = [a.option_strings[0] for a in actions if "[VAE_" not in (a.help or "")]
    assert missing == []


def test_batching_flags_read_their_environment_variables(monkeypatch):
    monkeypatch.setenv("VAE_MAX_QUEUE_DELAY_MS", "7.5")
    monkeypatch.setenv("VAE_BATCHING", "false")
    args = build_parser().parse_args([])
    assert (args.max_queue_delay_ms, args.batching) == (7.5, False)


def test_a_bad_model_batching_option_says_what_is_allowed(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--model-batching", '{"m": {"size": 3}}'])
    allowed = "['enabled', 'max_batch_size', 'max_queue_delay_ms', 'max_queue_rows']"
    assert f"with keys from {allowed}" in capsys.readouterr().err


def test_the_server_and_client_import_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import server.process.app, server.process.cli, client.api, client.cli, client.bench, client.noop_server\n"
        "print('ok')"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.stdout.strip() == "ok", result.stderr


def test_max_connection_age_makes_a_client_reconnect_without_failing_a_call(repository):
    from tests.server_helpers import running_server, sample_request, settings

    config = settings(
        repository, max_connection_age_seconds=0.4, max_connection_age_grace_seconds=5.0
    )
    states: list[grpc.ChannelConnectivity] = []
    with (
        running_server(config) as server,
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        channel.subscribe(states.append, try_to_connect=True)
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        deadline = time.monotonic() + 3.0
        answered = 0
        while time.monotonic() < deadline:
            stub.Sample(sample_request(count=1), timeout=10, wait_for_ready=True)
            answered += 1
            time.sleep(0.02)
    ready = states.count(grpc.ChannelConnectivity.READY)
    assert answered > 10
    # The server closed the connection as it aged and the channel connected again, several times.
    assert ready >= 3, states


def test_max_connection_age_is_off_by_default_and_reads_its_variable(monkeypatch):
    from server.process.app import grpc_options
    from server.process.settings import parse_settings

    assert "grpc.max_connection_age_ms" not in dict(grpc_options(parse_settings([]), False))
    monkeypatch.setenv("VAE_MAX_CONNECTION_AGE_SECONDS", "300")
    options = dict(grpc_options(parse_settings([]), False))
    assert options["grpc.max_connection_age_ms"] == 300_000
    assert options["grpc.max_connection_age_grace_ms"] == 10_000

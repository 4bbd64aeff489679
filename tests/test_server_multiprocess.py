"""vae-serve --processes N: one port, one /metrics over every process, shared health, drain, reload
and restart, as users run it (a child process on loopback)."""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from server.proto_gen.vae.v1 import vae_pb2, vae_pb2_grpc
from tests.server_helpers import add_version, copy_repository, sample_request, wait_until
from tests.test_server_ops import serve_process

pytestmark = pytest.mark.slow


def scrape(metrics_port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def request_ids(port: int, channels: int) -> list[str]:
    """One Sample call on each of `channels` fresh connections; the x-request-id each answer bore.

    A server makes ids from a per-process random prefix and a counter, so the prefixes say which
    process answered (the kernel spreads connections over the processes sharing the port).
    """
    ids = []
    for i in range(channels):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = vae_pb2_grpc.VaeServiceStub(channel)
            _, call = stub.Sample.with_call(sample_request(seed=i), timeout=30)
            ids.append(dict(call.trailing_metadata())["x-request-id"])
    return ids


def health(port: int) -> int | None:
    """The server's overall health; None when the check found no process to answer it (a
    connection that the kernel gave to a process just killed is reset)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = health_pb2.HealthCheckRequest(service="")
        try:
            return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status
        except grpc.RpcError:
            return None


def serving_children(pid: int) -> set[int]:
    """The supervisor's serving children (multiprocessing's resource tracker is not one of them)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            command = Path(f"/proc/{entry}/cmdline").read_text()
        except OSError:
            continue
        if parent == pid and "resource_tracker" not in command:
            found.add(int(entry))
    return found


def test_two_processes_share_the_port_and_both_answer(repository, tmp_path):
    with serve_process(repository, tmp_path, "--processes=2") as served:
        prefixes = {rid[:8] for rid in request_ids(served.port, 24)}
        assert len(serving_children(served.process.pid)) == 2
        assert len(prefixes) == 2, f"all 24 connections went to one process: {prefixes}"


def test_a_second_vae_serve_on_a_held_port_refuses_to_start(repository, tmp_path):
    import subprocess
    import sys

    with serve_process(repository, tmp_path, "--processes=2") as served:
        second = subprocess.run(
            [sys.executable, "-m", "server.process.cli", f"--repository={repository}",
             "--host=127.0.0.1", f"--port={served.port}", "--metrics-port=0", "--processes=2",
             "--providers=CPUExecutionProvider"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        ids = request_ids(served.port, 4)  # the first server still answers every connection
    assert second.returncode == 2
    errors = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, second.stderr
    assert f"cannot serve gRPC on 127.0.0.1:{served.port}" in errors[0]
    assert "another vae-serve" in errors[0] and "--port" in errors[0]
    assert len(ids) == 4


def test_a_vae_client_with_several_connections_reaches_every_process(repository, tmp_path):
    from client.api import VaeClient

    with (
        serve_process(repository, tmp_path, "--processes=2") as served,
        VaeClient(f"127.0.0.1:{served.port}", connections=16) as client,
    ):
        prefixes = set()
        for seed in range(32):
            _, call = client.stub.Sample.with_call(sample_request(seed=seed), timeout=30)
            prefixes.add(dict(call.trailing_metadata())["x-request-id"][:8])
        images, _, _ = client.sample(2, seed=3, model="tiny-vae")
    # 16 connections all on one of two processes: 1 in 2**15 with the kernel's spread.
    assert len(prefixes) == 2, prefixes
    assert images.shape[0] == 2


def test_metrics_add_up_every_processs_calls(repository, tmp_path):
    with serve_process(repository, tmp_path, "--processes=2") as served:
        request_ids(served.port, 20)
        samples = scrape(served.metrics_port)
        ok = (("code", "OK"), ("model", "tiny-vae"), ("rpc", "Sample"))
        assert samples[("vae_requests_total", ok)] == 20.0
        assert samples[("vae_samples_generated_total", (("model", "tiny-vae"),))] == 20.0
        assert samples[("vae_request_latency_seconds_count", ok)] == 20.0
        # Each model version loaded once (the gauge takes the max over processes), none in flight.
        loaded = {
            dict(labels)["model"]: value
            for (name, labels), value in samples.items()
            if name == "vae_model_loaded"
        }
        assert loaded == {"tiny-vae": 1.0, "tiny-cvae": 1.0, "tiny-ae": 1.0}
        assert samples[("vae_in_flight_requests", ())] == 0.0


def test_health_is_serving_only_while_every_process_is_and_a_dead_one_is_restarted(
    repository, tmp_path
):
    with serve_process(repository, tmp_path, "--processes=2") as served:
        assert health(served.port) == health_pb2.HealthCheckResponse.SERVING
        victim = min(serving_children(served.process.pid))
        os.kill(victim, signal.SIGKILL)
        # The survivor answers every check now, and answers NOT_SERVING until the restart is up.
        wait_until(
            lambda: health(served.port) == health_pb2.HealthCheckResponse.NOT_SERVING,
            timeout=10,
            what="NOT_SERVING while a process is down",
        )
        wait_until(
            lambda: health(served.port) == health_pb2.HealthCheckResponse.SERVING,
            timeout=60,
            what="SERVING again once the process is restarted",
        )
        children = serving_children(served.process.pid)
        assert len(children) == 2 and victim not in children
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(60) == 0
    log = served.log.read_text()
    assert f"(pid {victim}) was killed by SIGKILL; restarting it" in log


def test_sighup_makes_every_process_load_a_new_version(repository, tmp_path):
    repo = copy_repository(repository, tmp_path / "repo")
    with serve_process(repo, tmp_path, "--processes=2") as served:
        add_version(repo, "tiny-vae", 1, 2)
        served.process.send_signal(signal.SIGHUP)

        def versions_seen() -> set[int]:
            seen = set()
            for _ in range(16):  # fresh connections reach both processes
                with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
                    stub = vae_pb2_grpc.VaeServiceStub(channel)
                    ref = vae_pb2.ModelRef(name="tiny-vae")
                    seen.add(stub.GetModelInfo(vae_pb2.GetModelInfoRequest(model=ref)).version)
            return seen

        wait_until(lambda: versions_seen() == {2}, timeout=30, what="version 2 everywhere")


def test_a_process_that_cannot_start_stops_the_server_with_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    with (
        pytest.raises(AssertionError, match="no loadable model"),
        serve_process(tmp_path / "empty", tmp_path, "--processes=2"),
    ):
        pass


def load_until_stopped(port: int, stop: threading.Event, codes: Counter[str]) -> None:
    """One closed-loop caller on its own connection until `stop`; counts every call's outcome."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        i = 0
        while not stop.is_set():
            try:
                stub.Sample(sample_request(seed=i, count=4), timeout=30)
                codes["OK"] += 1
            except grpc.RpcError as exc:
                codes[exc.code().name] += 1
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    return  # a client retries elsewhere; this one is done
            i += 1


@pytest.mark.parametrize("processes", [1, 2])
def test_sigterm_under_load_loses_no_accepted_call(repository, tmp_path, processes):
    """32 callers; SIGTERM mid-load: every call ends OK or UNAVAILABLE (never CANCELLED), exit 0."""
    flags = (f"--processes={processes}", "--grace-seconds=20", "--drain-delay-seconds=0.5")
    with serve_process(repository, tmp_path, *flags) as served:
        stop = threading.Event()
        codes: Counter[str] = Counter()
        callers = [
            threading.Thread(target=load_until_stopped, args=(served.port, stop, codes))
            for _ in range(32)
        ]
        for caller in callers:
            caller.start()
        wait_until(lambda: codes["OK"] > 100, timeout=60, what="load to build up")
        served.process.send_signal(signal.SIGTERM)
        exit_code = served.process.wait(60)
        stop.set()
        for caller in callers:
            caller.join(60)
    assert exit_code == 0, served.log.read_text()
    assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
    assert codes["OK"] > 100


def test_draining_keeps_answering_for_the_drain_delay_then_refuses(repository, tmp_path):
    flags = ("--processes=1", "--drain-delay-seconds=1.5", "--grace-seconds=5")
    with serve_process(repository, tmp_path, *flags) as served:
        with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            stub = vae_pb2_grpc.VaeServiceStub(channel)
            stub.Sample(sample_request(), timeout=10)
            served.process.send_signal(signal.SIGTERM)
            wait_until(
                lambda: health(served.port) == health_pb2.HealthCheckResponse.NOT_SERVING,
                timeout=5,
                what="NOT_SERVING",
            )
            stub.Sample(sample_request(), timeout=10)  # still answered during the delay
            time.sleep(1.6)  # the drain delay is wall-clock time by definition
            with pytest.raises(grpc.RpcError) as refused:
                stub.Sample(sample_request(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert served.process.wait(30) == 0

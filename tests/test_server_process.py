"""vae-serve as users run it: a separate process, started, probed, stopped with SIGTERM."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import free_port

BIN = Path(sys.executable).parent


def start_server(repository: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [
            str(BIN / "vae-serve"),
            "--repository",
            str(repository),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--metrics-port",
            "0",
            "--http-port",
            "0",
            "--providers",
            "CPUExecutionProvider",
            "--processes",
            "2",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return process, f"127.0.0.1:{port}"


def wait_serving(address: str, process: subprocess.Popen, timeout: float = 60) -> None:
    """Until the server reports SERVING: the port accepts as soon as the first of --processes 2
    listens, and the server is NOT_SERVING until every process has loaded its models."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        # wait_for_ready blocks until the port accepts, instead of polling with sleeps.
        grpc.channel_ready_future(channel).result(timeout=timeout)
        status = None
        while time.monotonic() < deadline and process.poll() is None:
            status = (
                health_pb2_grpc.HealthStub(channel)
                .Check(health_pb2.HealthCheckRequest(service=""), timeout=5, wait_for_ready=True)
                .status
            )
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
            time.sleep(0.05)
        raise AssertionError(f"vae-serve at {address} never reported SERVING (last: {status})")


def serve_then_sigterm(repository: Path) -> tuple[int, str]:
    """Start vae-serve, wait until it reports SERVING, send SIGTERM; (exit code, its output)."""
    process, address = start_server(repository)
    try:
        wait_serving(address, process)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    return process.returncode, output


def test_sigterm_drains_and_exits_zero(repository):
    code, output = serve_then_sigterm(repository)
    assert code == 0, output
    assert "draining" in output and "stopped" in output


def test_empty_repository_refuses_to_start_with_a_hint(tmp_path):
    process, _ = start_server(tmp_path)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "no loadable model" in output and "vae-export" in output


def test_missing_repository_is_named(tmp_path):
    process, _ = start_server(tmp_path / "nowhere")
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2 and "nowhere" in output and "does not exist" in output


@pytest.mark.skipif(
    os.environ.get("CUDA_VISIBLE_DEVICES") not in (None, ""), reason="CPU-only check"
)
def test_require_gpu_refuses_to_run_on_cpu(repository):
    process, _ = start_server(repository, "--require-gpu")
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "--require-gpu" in output and "CUDA did not load" in output


def test_corrupt_model_is_skipped_and_the_rest_serve(tmp_path, repository):
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(repository / "tiny-vae", repo / "tiny-vae")
    shutil.copytree(repository / "tiny-ae", repo / "broken")
    (repo / "broken" / "1" / "decoder.onnx").write_bytes(b"garbage")
    meta = (repo / "broken" / "1" / "model.json").read_text().replace('"tiny-ae"', '"broken"')
    (repo / "broken" / "1" / "model.json").write_text(meta)
    _, output = serve_then_sigterm(repo)
    assert "skipping broken/1" in output and "cannot load this graph" in output, output
    assert "serving tiny-vae" in output, output


def test_server_package_imports_without_torch():
    """The serving image has no torch: importing every server module must not need it."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith(('torch.', 'torchvision')):\n"
        "            raise ImportError('torch is blocked in this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import server.process.app, server.process.cli, client.api, server.dataplane.plane, server.inference.sessions\n"
        "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules)\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_every_serve_flag_also_reads_an_environment_variable(monkeypatch, tmp_path):
    from server.process.settings import build_parser, settings_from_args

    monkeypatch.setenv("VAE_PORT", "6000")
    monkeypatch.setenv("VAE_MAX_SAMPLES", "7")
    monkeypatch.setenv("VAE_REPOSITORY", str(tmp_path))
    settings = settings_from_args(build_parser().parse_args([]))
    assert (settings.port, settings.limits.max_samples, settings.repository) == (6000, 7, tmp_path)

"""vae-bench: a short closed-loop run prints JSON with throughput, percentiles and error counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client.bench import main as bench_main
from tests.server_helpers import running_server, settings


@pytest.fixture(scope="module")
def server(repository: Path):
    with running_server(settings(repository)) as running:
        yield running


def run_bench(capsys, *flags: str) -> tuple[int, dict]:
    code = bench_main(["--duration=0.5", "--warmup=0.1", "--model=tiny-vae", *flags])
    return code, json.loads(capsys.readouterr().out)


def test_a_short_run_reports_throughput_percentiles_and_no_errors(server, capsys):
    code, result = run_bench(capsys, f"--address=127.0.0.1:{server.port}", "--concurrency=4")
    assert (code, result["error_count"], sorted(result["latency_ms"])) == (
        0,
        0,
        ["max", "mean", "p50", "p90", "p99"],
    )
    assert result["throughput_rps"] > 0


def test_errors_are_counted_by_status_code(server, capsys):
    # 10,000 samples is over the test server's limit of 256: every call is refused.
    code, result = run_bench(capsys, f"--address=127.0.0.1:{server.port}", "--samples=10000")
    assert (code, list(result["errors"]), result["requests_ok"]) == (3, ["RESOURCE_EXHAUSTED"], 0)


def test_the_in_process_ceiling_runs_without_a_server(repository, capsys):
    code, result = run_bench(capsys, "--in-process", f"--repository={repository}", "--samples=8")
    assert (code, result["provider"], result["requests_ok"] > 0) == (
        0,
        "CPUExecutionProvider",
        True,
    )


@pytest.mark.parametrize("model", ["tiny-vae", "tiny-cvae"])
def test_v2_decode_drives_model_infer_of_the_decoder_without_errors(server, capsys, model):
    address = f"--address=127.0.0.1:{server.port}"
    code, result = run_bench(capsys, address, "--rpc=v2-decode", f"--model={model}", "--samples=2")
    assert (code, result["error_count"], result["requests_ok"] > 0) == (0, 0, True)

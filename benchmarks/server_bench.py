"""Server benchmark in one run: batching on/off, the in-process ceiling and the no-op transport ceiling.

Usage: python benchmarks/server_bench.py --repository <repo> --model tiny-vae [--duration 10]
Starts each server as a child process on loopback, drives it with `vae-bench`, stops it, and writes
every result as JSON (and a Markdown table) under --output.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


@contextmanager
def child(command: list[str], log: Path):
    """A server process; yields its port once it prints its listening line; SIGTERM on exit."""
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=ROOT
        )
    line = process.stdout.readline() if process.stdout else ""
    if "listening on" not in line:
        process.kill()
        raise SystemExit(f"server did not start: {' '.join(command)}\n{log.read_text()}")
    port = int(line.split("listening on ")[1].split()[0].rsplit(":", 1)[1])
    try:
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mean_batch(metrics_port: int) -> dict[str, float]:
    """Mean rows per decoder call so far, and the number of calls, from the server's /metrics."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    values = {}
    for line in urllib.request.urlopen(url, timeout=10).read().decode().splitlines():
        if line.startswith("vae_batch_size_") and 'component="decoder"' in line:
            values[line.split("{")[0]] = float(line.split()[-1])
    calls = values.get("vae_batch_size_count", 0.0)
    return {
        "decoder_calls": calls,
        "mean_rows_per_call": round(values.get("vae_batch_size_sum", 0.0) / max(calls, 1), 2),
    }


def serve(args: argparse.Namespace, metrics_port: int, *flags: str) -> list[str]:
    return [PY, "-m", "server.cli", f"--repository={args.repository}", "--host=127.0.0.1",
            "--port=0", f"--metrics-port={metrics_port}", "--metrics-host=127.0.0.1",
            "--providers=CPUExecutionProvider",
            "--reload-interval-seconds=0", "--log-level=WARNING", *flags]  # fmt: skip


def bench(args: argparse.Namespace, *flags: str) -> dict:
    command = [PY, "-m", "client.bench", f"--model={args.model}", f"--duration={args.duration}",
               "--warmup=2", *flags]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    if result.returncode not in (0, 3):
        raise SystemExit(f"vae-bench failed: {result.stderr}")
    return json.loads(result.stdout)


def analyse(results: dict[str, dict], big: int) -> dict[str, float]:
    """The issue's two ratios, and what this run's own no-op transport allows of each.

    (a) No server that answers each call can beat the no-op server, which does no work at all, with
    the same client on the same cores; so no-op / batching-off bounds what batching can gain here.
    (b) Transport and decoding share the cores: if the no-op transport saturates them at T_n calls/s
    and in-process decoding at T_d, a server doing both manages at most 1 / (1/T_n + 1/T_d), a
    fraction T_n / (T_n + T_d) of the in-process rate.
    """
    rate = {name: r["throughput_rps"] for name, r in results.items()}
    off, on = rate["a_batching_off_1x64"], rate["a_batching_on_1x64"]
    noop_small = max(rate["c_noop_threaded_1x64"], rate["c_noop_aio_1x64"])
    noop_big = max(rate[f"c_noop_threaded_64x{big}"], rate[f"c_noop_aio_64x{big}"])
    in_process = rate[f"b_in_process_64x{big}"]
    served = max(rate[f"b_batching_on_64x{big}"], rate[f"b_batching_off_64x{big}"])
    return {
        "a_batching_on_over_off": round(on / off, 2),
        "a_bound_noop_over_off": round(noop_small / off, 2),
        "b_server_over_in_process": round(served / in_process, 3),
        "b_bound_shared_cores": round(noop_big / (noop_big + in_process), 3),
        "b_noop_over_in_process": round(noop_big / in_process, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repository", required=True)
    parser.add_argument("--model", default="tiny-vae")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--big-concurrency", type=int, default=8, help="for 64 samples/request")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    small = ("--rpc=sample", "--samples=1", "--concurrency=64")
    big = ("--rpc=sample", "--samples=64", f"--concurrency={args.big_concurrency}")
    for name, flags in (("batching_on", ()), ("batching_off", ("--no-batching",))):
        metrics_port = free_port()
        with child(serve(args, metrics_port, *flags), args.output / f"{name}.log") as port:
            before = mean_batch(metrics_port)  # warm-up calls are not observed; this is all zero
            results[f"a_{name}_1x64"] = bench(args, f"--address=127.0.0.1:{port}", *small)
            results[f"a_{name}_1x64"]["server_batches"] = mean_batch(metrics_port)
            results[f"a_{name}_1x64"]["server_batches_before"] = before
            results[f"b_{name}_64x{args.big_concurrency}"] = bench(
                args, f"--address=127.0.0.1:{port}", *big
            )
    results[f"b_in_process_64x{args.big_concurrency}"] = bench(
        args, "--in-process", f"--repository={args.repository}", *big
    )
    for transport in ("threaded", "aio"):
        noop = [PY, "-m", "client.noop_server", "--port=0", f"--transport={transport}"]
        with child(noop, args.output / f"noop_{transport}.log") as port:
            address = f"--address=127.0.0.1:{port}"
            results[f"c_noop_{transport}_1x64"] = bench(args, address, *small)
            results[f"c_noop_{transport}_64x{args.big_concurrency}"] = bench(args, address, *big)
    results["analysis"] = analyse(results, args.big_concurrency)
    (args.output / "server_bench.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = ["| run | samples/req | concurrency | req/s | samples/s | p50 ms | p90 ms | p99 ms | errors |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for name, r in results.items():
        if name == "analysis":
            continue
        lat = r["latency_ms"]
        rows.append(
            f"| {name} | {r['samples_per_request']} | {r['concurrency']} | {r['throughput_rps']} | "
            f"{r['samples_per_s']} | {lat['p50']} | {lat['p90']} | {lat['p99']} | {r['error_count']} |"
        )
    rows += ["", *(f"- {key}: {value}" for key, value in results["analysis"].items())]
    table = "\n".join(rows)
    (args.output / "server_bench.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

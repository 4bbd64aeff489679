"""The Open Inference Protocol against vae.v1 in one run: perf_analyzer on `<model>-decoder`, and
vae-bench on vae.v1 Decode and on v2 ModelInfer, 1 latent per call, at each concurrency.

Usage:
  python benchmarks/oip_bench.py --repository model_repository --model fashion-mlp-vae \
      --perf-analyzer perf_analyzer [--concurrency 1,16,64] [--rounds 2] [--duration 6]

One vae-serve (its defaults, with `--processes 1`: each load arrives on one connection, which one
process serves anyway) serves the whole run; the three loads take turns at each
concurrency, in reverse order every other round, so a slow minute on a shared host hits each alike.
perf_analyzer measures three windows of a third of --duration each (`-s 1000`: the stability check
accepts the first three, so it measures for a fixed time like vae-bench) after 100 warm-up requests;
vae-bench measures --duration seconds after 1 s of warm-up. Beside each figure: the server's CPU time per call
it answered (CPU from /proc over the calls its `vae_requests_total` counted, warm-up included), which
the other jobs on a shared host disturb less than throughput, and the load average. Writes oip_bench.json and oip_bench.md under --output.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from server_bench import bench, child, cpu_seconds, free_port, serve_command

from server.repository import list_versions, read_metadata, version_dir

LOADS = ("v1-decode (vae-bench)", "v2-infer (vae-bench)", "v2-infer (perf_analyzer)")


def calls_answered(metrics_port: int) -> float:
    """Every call the server has counted so far (vae_requests_total over all labels)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read()
    return sum(
        float(line.split()[-1])
        for line in text.decode().splitlines()
        if line.startswith("vae_requests_total{")
    )


def perf_analyzer(args: argparse.Namespace, port: int, concurrency: int, data: Path) -> dict:
    report = args.output / f"perf_analyzer_c{concurrency}.csv"
    window_ms = int(args.duration * 1000 / 3)
    command = [
        *args.perf_analyzer.split(), "-m", f"{args.model}-decoder", "-u", f"127.0.0.1:{port}",
        "-i", "grpc", "-b", "1", f"--concurrency-range={concurrency}:{concurrency}",
        "--input-data", str(data), "-p", str(window_ms), "-r", "3", "-s", "1000",
        "--warmup-request-count", "100", "-f", str(report),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise SystemExit(
            f"perf_analyzer failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )
    (row,) = list(csv.DictReader(report.open()))
    return {
        "throughput_rps": float(row["Inferences/Second"]),
        "latency_ms": {q: int(row[f"{q} latency"]) / 1000 for q in ("p50", "p90", "p99")},
        "error_count": 0,  # perf_analyzer stops at the first failed request
        "duration_s": args.duration,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--repository", required=True)
    parser.add_argument("--model", default="fashion-mlp-vae")
    parser.add_argument("--perf-analyzer", default="perf_analyzer", help="command that runs it")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per load")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    repository = Path(args.repository).resolve()
    meta = read_metadata(
        version_dir(repository, args.model, max(list_versions(repository / args.model)))
    )
    if meta.conditional:
        raise SystemExit(f"{args.model} is conditional; this benchmark sends latents only")
    latent = np.random.default_rng(0).standard_normal(meta.latent_dim).astype(np.float32)
    data = args.output / "perf_analyzer_input.json"
    data.write_text(json.dumps({"data": [{"latent": latent.tolist()}]}))
    levels = [int(c) for c in args.concurrency.split(",")]
    runs: dict[str, dict[int, list[dict]]] = {load: {c: [] for c in levels} for load in LOADS}
    load_start, uptime_start = (
        os.getloadavg(),
        subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
    )
    with ExitStack() as stack:
        metrics_port = free_port()
        port, pid = stack.enter_context(
            child(
                serve_command(str(repository), metrics_port, "--processes=1"),
                args.output / "oip-vae-serve.log",
            )
        )
        address = f"--address=127.0.0.1:{port}"
        for round_index in range(args.rounds):
            order = LOADS if round_index % 2 == 0 else LOADS[::-1]
            for concurrency in levels:
                for load in order:
                    cpu, calls = cpu_seconds(pid), calls_answered(metrics_port)
                    if load.endswith("(perf_analyzer)"):
                        result = perf_analyzer(args, port, concurrency, data)
                    else:
                        rpc = "decode" if load.startswith("v1") else "v2-decode"
                        result = bench(args, address, f"--rpc={rpc}", "--samples=1",
                                       f"--concurrency={concurrency}")  # fmt: skip
                    calls = calls_answered(metrics_port) - calls
                    result["server_us_per_call"] = round((cpu_seconds(pid) - cpu) / calls * 1e6, 1)
                    runs[load][concurrency].append(result)
                    print(f"round {round_index + 1} c={concurrency:<3d} {load:26s} "
                          f"{result['throughput_rps']:8.1f} req/s p50 {result['latency_ms']['p50']} "
                          f"ms p99 {result['latency_ms']['p99']} ms errors {result['error_count']} "
                          f"server {result['server_us_per_call']} us/call", flush=True)  # fmt: skip
    load_end = os.getloadavg()
    uptime_end = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    summary = summarise(runs, levels)
    record = {
        "command": " ".join(sys.argv),
        "uptime_start": uptime_start,
        "uptime_end": uptime_end,
        "load_start": load_start,
        "load_end": load_end,
        "summary": summary,
        "runs": {load: {str(c): r for c, r in by.items()} for load, by in runs.items()},
    }
    (args.output / "oip_bench.json").write_text(json.dumps(record, indent=2))
    table = markdown(summary, levels)
    (args.output / "oip_bench.md").write_text(table)
    print(f"\n{uptime_start}\n{uptime_end}\n\n{table}")
    return 0


def summarise(runs: dict[str, dict[int, list[dict]]], levels: list[int]) -> dict:
    """Median over rounds of each figure, and the per-round ratios of each v2 load to vae.v1."""
    out: dict[str, dict] = {}
    for concurrency in levels:
        v1 = [r["throughput_rps"] for r in runs[LOADS[0]][concurrency]]
        row = {}
        for load in LOADS:
            results = runs[load][concurrency]
            rps = [r["throughput_rps"] for r in results]
            ratios = [a / b for a, b in zip(rps, v1, strict=True)]
            row[load] = {
                "throughput_rps": round(statistics.median(rps), 1),
                "p50_ms": round(statistics.median(r["latency_ms"]["p50"] for r in results), 2),
                "p99_ms": round(statistics.median(r["latency_ms"]["p99"] for r in results), 2),
                "errors": sum(r["error_count"] for r in results),
                "server_us_per_call": round(
                    statistics.median(r["server_us_per_call"] for r in results), 1
                ),
                "ratio_to_v1": [round(x, 3) for x in ratios],
            }
        out[str(concurrency)] = row
    return out


def markdown(summary: dict, levels: list[int]) -> str:
    lines = [
        "| concurrency | load | req/s | vs v1 (each round) | p50 ms | p99 ms | server µs/call | errors |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for concurrency in levels:
        for load, row in summary[str(concurrency)].items():
            ratios = ", ".join(f"{x:.2f}" for x in row["ratio_to_v1"])
            lines.append(
                f"| {concurrency} | {load} | {row['throughput_rps']:,.1f} | {ratios} | "
                f"{row['p50_ms']} | {row['p99_ms']} | {row['server_us_per_call']} | {row['errors']} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

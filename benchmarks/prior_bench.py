"""Sample with the two-stage prior beside N(0, I), in one run: latency at 1 x 1 and throughput at
64 x 8 through one vae-serve, with the ratio of each pair.

Usage:
  python benchmarks/prior_bench.py --repository REPO --models mlp-vae conv-vae \
      [--rounds 3] [--duration 4] [--output benchmarks/results/prior_bench.json]

One server (the defaults: batching on) serves every model for the whole run; the load generator
(`vae-bench --prior`, a grpc.aio client on the same machine) visits each (model, scenario, prior) in
turn for `--rounds` rounds (the priors' order swapped each round), so a slow minute on the shared
host hits both priors alike. Each figure
is the median over the rounds; each ratio (two-stage / N(0, I)) the median of the per-round ratios,
with the range. The load average is printed before and after. The two-stage prior adds one ONNX call
(prior_decoder.onnx, u -> z) per batch, batched like the decoder (its own batcher); the mean rows per
prior-decoder call and per decoder call come from the server's /metrics; the two graphs' own cost
(the fastest of 200 onnxruntime calls in this process, one thread) is measured last.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server_bench import bench, child, free_port, median_ratio, serve_command

# (name, images per request, concurrency, the figure it reports)
SCENARIOS = [("1x1", 1, 1, "p50"), ("64x8", 64, 8, "samples_per_s")]
PRIORS = ("standard-normal", "two-stage")


def mean_rows(metrics_port: int, model: str, component: str) -> float:
    """Mean rows per call of one model's component so far, from the server's /metrics."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    values: dict[str, float] = {}
    wanted = f'component="{component}"'
    for line in urllib.request.urlopen(url, timeout=10).read().decode().splitlines():
        if line.startswith("vae_batch_size_") and wanted in line and f'model="{model}"' in line:
            name = line.split("{")[0]
            values[name] = values.get(name, 0.0) + float(line.split()[-1])
    count = values.get("vae_batch_size_count", 0.0)
    return round(values.get("vae_batch_size_sum", 0.0) / count, 2) if count else 0.0


def graph_costs(repository: str, model: str, repeats: int = 200) -> dict:
    """The extra ONNX call alone: the fastest of `repeats` runs (milliseconds) of decoder.onnx and
    prior_decoder.onnx at batch 1 and 64, onnxruntime on one thread in this process (the fastest is
    the figure least moved by other work on a shared host)."""
    import time

    import numpy as np
    import onnxruntime as ort

    version = max(Path(repository, model).iterdir(), key=lambda p: int(p.name))
    meta = json.loads((version / "model.json").read_text())
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    costs = {}
    for graph, width in (
        ("decoder", meta["latent_dim"]),
        ("prior_decoder", meta["two_stage"]["noise_dim"]),
    ):
        session = ort.InferenceSession(
            str(version / f"{graph}.onnx"), options, providers=["CPUExecutionProvider"]
        )
        name = session.get_inputs()[0].name
        for batch in (1, 64):
            feed = {name: np.zeros((batch, width), np.float32)}
            session.run(None, feed)
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                session.run(None, feed)
                best = min(best, time.perf_counter() - start)
            costs[f"{graph}_batch{batch}_ms"] = round(best * 1000, 4)
    return costs


def figure(result: dict, key: str) -> float:
    return float(result["latency_ms"][key] if key.startswith("p") else result[key])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--repository", required=True)
    parser.add_argument("--models", nargs="+", default=["mlp-vae", "conv-vae"])
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per visit")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    load_before = os.getloadavg()
    print(f"load average before: {load_before}", flush=True)
    metrics_port = free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / "prior_bench_server.log"
    rounds: dict[tuple[str, str, str], list[float]] = {}
    runs: dict[tuple[str, str, str], list[dict]] = {}
    with child(serve_command(args.repository, metrics_port), log) as (port, _):
        for round_index in range(args.rounds):
            for model in args.models:
                for scenario, samples, concurrency, key in SCENARIOS:
                    # Each round swaps which prior goes first, so neither always follows the other.
                    for prior in PRIORS if round_index % 2 == 0 else PRIORS[::-1]:
                        args.model = model
                        result = bench(
                            args, f"--address=127.0.0.1:{port}", f"--samples={samples}",
                            f"--concurrency={concurrency}", f"--prior={prior}",
                        )  # fmt: skip
                        if result["error_count"]:
                            raise SystemExit(f"{model} {scenario} {prior}: {result['errors']}")
                        rounds.setdefault((model, scenario, prior), []).append(figure(result, key))
                        runs.setdefault((model, scenario, prior), []).append(result)
                        print(
                            f"round {round_index + 1} {model} {scenario} {prior}: "
                            f"{key} {figure(result, key):.3f}",
                            flush=True,
                        )
        batches = {
            model: {c: mean_rows(metrics_port, model, c) for c in ("prior_decoder", "decoder")}
            for model in args.models
        }
    graphs = {model: graph_costs(args.repository, model) for model in args.models}
    load_after = os.getloadavg()
    table = []
    for model in args.models:
        for scenario, _, _, key in SCENARIOS:
            normal = rounds[(model, scenario, "standard-normal")]
            two_stage = rounds[(model, scenario, "two-stage")]
            table.append(
                {
                    "model": model,
                    "scenario": scenario,
                    "figure": "p50 latency ms" if key == "p50" else "samples/s",
                    "standard_normal": round(statistics.median(normal), 3),
                    "two_stage": round(statistics.median(two_stage), 3),
                    "ratio_two_stage_over_standard_normal": median_ratio(two_stage, normal),
                    "p99_ms": {
                        prior: round(
                            statistics.median(
                                r["latency_ms"]["p99"] for r in runs[(model, scenario, prior)]
                            ),
                            3,
                        )
                        for prior in PRIORS
                    },
                }
            )
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "rounds": args.rounds,
        "duration_s": args.duration,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "cores": os.cpu_count(),
        "mean_rows_per_call": batches,
        "graph_ms_fastest_of_200": graphs,
        "results": table,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

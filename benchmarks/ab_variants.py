"""Interleaved A/B of vae-serve variants (and the no-op server) under the same load, in one run.

Usage:
  python benchmarks/ab_variants.py --repository model_repository --rounds 3 --duration 3 \
      --variant 'loop:--inference-executor loop' --variant 'thread:--inference-executor thread' \
      --variant noop --scenario 1x64 --scenario 64x8

Every variant runs for the whole comparison; each round visits every scenario and variant in turn,
so a slow minute on a shared host hits all of them alike. Prints the median req/s per scenario and
variant, every round's figure, and the server cores used (from /proc).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server_bench import PY, bench, child, cpu_seconds, serve_command


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--repository", required=True)
    parser.add_argument("--model", default="fashion-mlp-vae")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--variant", action="append", required=True, help="label:flags, or noop")
    parser.add_argument("--scenario", action="append", required=True, help="NxC, e.g. 1x64")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    repository = str(Path(args.repository).resolve())
    scenarios = [tuple(int(x) for x in s.split("x")) for s in args.scenario]
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    print("load average", os.getloadavg())
    with ExitStack() as stack:
        targets = {}
        for spec in args.variant:
            label, _, flags = spec.partition(":")
            if label == "noop":
                command = [PY, "-m", "client.noop_server", "--port=0", "--transport=aio"]
            else:
                command = serve_command(repository, 0, *flags.split())
            targets[label] = stack.enter_context(child(command, args.output / f"ab-{label}.log"))
        for _ in range(args.rounds):
            for samples, concurrency in scenarios:
                for label, (port, pid) in targets.items():
                    before = cpu_seconds(pid)
                    result = bench(
                        args, f"--address=127.0.0.1:{port}", f"--samples={samples}",
                        f"--concurrency={concurrency}", f"--connections={args.connections}",
                    )  # fmt: skip
                    cores = (cpu_seconds(pid) - before) / (result["duration_s"] + 1.0)
                    key = (f"{samples}x{concurrency}", label)
                    results.setdefault(key, []).append((result["throughput_rps"], cores))
    print("load average", os.getloadavg())
    for (scenario, label), runs in results.items():
        rates = [r for r, _ in runs]
        print(
            f"{scenario:6s} {label:12s} median {statistics.median(rates):8.0f} req/s  rounds "
            f"{[round(r) for r in rates]}  server cores {statistics.median(c for _, c in runs):.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

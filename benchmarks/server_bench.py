"""Server benchmark in one run: vae-serve (defaults, and `--processes 1`) against the grpc.aio no-op
server and in-process onnxruntime, at 1 x 1, 1 x 16, 1 x 64 and 64 x 8 (float32 and uint8) over
`--connections` TCP connections (8), and at 1 x 1, 1 x 64 and 64 x 8 over ONE connection (what a plain
gRPC channel, a Kubernetes Service or a web backend gives a server), with the ratios the targets use.

Usage:
  python benchmarks/server_bench.py --repository model_repository --model fashion-mlp-vae \
      [--rounds 3] [--duration 4] [--baseline-checkout ../old-server] [--output benchmarks/results]

Every server runs for the whole benchmark; the load generator (`vae-bench`, a grpc.aio client on the
same machine) visits them in turn, scenario by scenario, for `--rounds` rounds, so a slow minute on
the shared host hits every target alike. Each figure is the median over the rounds; each ratio is the
median of the per-round ratios, with the range. The load average, the cores each server used (from
/proc) and the cores the load generator used (its process's rusage; it sends pre-built requests and
parses no answer) are printed beside the figures, with the server's CPU per call. `--baseline-checkout` also serves the same model from
another checkout of this project (e.g. the threaded server of an earlier commit) as one more target.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# (name, images per request, concurrency, format, connections: 0 means --connections)
SCENARIOS = [
    ("1x1", 1, 1, "float32", 0),
    ("1x16", 1, 16, "float32", 0),
    ("1x64", 1, 64, "float32", 0),
    ("64x8", 64, 8, "float32", 0),
    ("64x8-uint8", 64, 8, "uint8", 0),
    ("1conn 1x1", 1, 1, "float32", 1),
    ("1conn 1x64", 1, 64, "float32", 1),
    ("1conn 64x8", 64, 8, "float32", 1),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def child(command: list[str], log: Path, cwd: Path = ROOT):
    """A server process; yields (port, pid) once it prints its listening line; SIGTERM on exit."""
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=cwd
        )
    line = process.stdout.readline() if process.stdout else ""
    if "listening on" not in line:
        process.kill()
        raise SystemExit(f"server did not start: {' '.join(command)}\n{log.read_text()}")
    port = int(line.split("listening on ")[1].split()[0].rsplit(":", 1)[1])
    try:
        yield port, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants (vae-serve runs its serving processes under a supervisor)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (from /proc)."""
    total = 0.0
    for current in process_tree(pid):
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def bench(args: argparse.Namespace, *flags: str) -> dict:
    """One vae-bench run; its JSON plus `client_cores`, the load generator's CPU over its run."""
    command = [PY, "-m", "client.bench", f"--model={args.model}", f"--duration={args.duration}",
               "--warmup=1", *flags]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode not in (0, 3):
        raise SystemExit(f"vae-bench failed: {result.stderr}")
    report = json.loads(result.stdout)
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    report["client_cores"] = round(used / wall, 2)  # start-up included: an upper bound
    return report


def mean_batch(metrics_port: int) -> float:
    """Mean rows per decoder call so far, from a server's /metrics."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    values: dict[str, float] = {}
    for line in urllib.request.urlopen(url, timeout=10).read().decode().splitlines():
        if line.startswith("vae_batch_size_") and 'component="decoder"' in line:
            name = line.split("{")[0]
            values[name] = values.get(name, 0.0) + float(line.split()[-1])
    return round(
        values.get("vae_batch_size_sum", 0.0) / max(values.get("vae_batch_size_count", 0), 1), 2
    )


def serve_command(repository: str, metrics_port: int, *flags: str) -> list[str]:
    return [PY, "-m", "server.process.cli", f"--repository={repository}", "--host=127.0.0.1",
            "--port=0", "--http-port=0", f"--metrics-port={metrics_port}", "--metrics-host=127.0.0.1",
            "--reload-interval-seconds=0", "--log-level=WARNING", *flags]  # fmt: skip


def median_ratio(rounds_a: list[float], rounds_b: list[float]) -> dict[str, float]:
    ratios = [a / b for a, b in zip(rounds_a, rounds_b, strict=True) if b]
    return {
        "median": round(statistics.median(ratios), 3),
        "min": round(min(ratios), 3),
        "max": round(max(ratios), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--repository", required=True)
    parser.add_argument("--model", default="fashion-mlp-vae")
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per visit")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--client-processes", type=int, default=1)
    parser.add_argument(
        "--connections",
        type=int,
        default=8,
        help="TCP connections the load generator spreads its callers over (as separate clients "
        "would; one connection reaches one of vae-serve's processes only)",
    )
    parser.add_argument("--serve-flags", default="", help="extra vae-serve flags, space-separated")
    parser.add_argument("--baseline-checkout", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    repository = str(Path(args.repository).resolve())
    load_start = os.getloadavg()
    targets: dict[str, dict] = {}
    with ExitStack() as stack:
        metrics_port = free_port()
        port, pid = stack.enter_context(
            child(
                serve_command(repository, metrics_port, *args.serve_flags.split()),
                args.output / "vae-serve.log",
            )
        )
        targets["vae-serve"] = {"port": port, "pid": pid, "metrics_port": metrics_port}
        p1_metrics = free_port()
        port, pid = stack.enter_context(
            child(
                serve_command(repository, p1_metrics, "--processes=1", *args.serve_flags.split()),
                args.output / "vae-serve-p1.log",
            )
        )
        targets["vae-serve-p1"] = {"port": port, "pid": pid, "metrics_port": p1_metrics}
        noop = [PY, "-m", "client.noop_server", "--port=0", "--transport=aio"]
        port, pid = stack.enter_context(child(noop, args.output / "noop.log"))
        targets["noop-aio"] = {"port": port, "pid": pid}
        if args.baseline_checkout:
            baseline_metrics = free_port()
            command = serve_command(repository, baseline_metrics)
            if not (args.baseline_checkout / "server" / "process" / "cli.py").exists():
                command[2] = "server.cli"  # a checkout from before server/ was laid out by role
            port, pid = stack.enter_context(
                child(command, args.output / "baseline.log", cwd=args.baseline_checkout.resolve())
            )
            targets["baseline"] = {"port": port, "pid": pid, "metrics_port": baseline_metrics}
        runs: dict[str, dict[str, list[dict]]] = {t: {s[0]: [] for s in SCENARIOS} for t in targets}
        runs["in-process"] = {"64x8": []}
        for round_index in range(args.rounds):
            for name, samples, concurrency, image_format, connections in SCENARIOS:
                for target, info in targets.items():
                    if target == "baseline" and image_format != "float32":
                        continue  # the earlier server knows no uint8 format
                    if target == "vae-serve-p1" and not name.startswith("1conn"):
                        continue  # one process: its one-connection rows are what it is for
                    before = cpu_seconds(info["pid"])
                    started = time.monotonic()
                    result = bench(
                        args, f"--address=127.0.0.1:{info['port']}", f"--samples={samples}",
                        f"--concurrency={concurrency}", f"--format={image_format}",
                        f"--client-processes={args.client_processes}",
                        f"--connections={connections or args.connections}",
                    )  # fmt: skip
                    used = cpu_seconds(info["pid"]) - before
                    result["server_cores"] = round(used / (time.monotonic() - started), 2)
                    calls = (
                        result["requests_ok"]
                        / max(result["duration_s"], 1e-9)
                        * (result["duration_s"] + 1.0)
                    )  # calls in the measured window and the 1 s warm-up the CPU reading spans
                    result["server_ms_per_call"] = round(used / max(calls, 1) * 1000, 3)
                    runs[target][name].append(result)
                    print(
                        f"round {round_index + 1} {name:11s} {target:12s} "
                        f"{result['throughput_rps']:9.1f} req/s {result['samples_per_s']:10.1f} "
                        f"samples/s p50 {result['latency_ms']['p50']} ms, errors "
                        f"{result['error_count']}, server cores {result['server_cores']}, "
                        f"client cores {result['client_cores']}, server ms/call "
                        f"{result['server_ms_per_call']}",
                        flush=True,
                    )
                if name == "64x8":
                    result = bench(args, "--in-process", f"--repository={repository}",
                                   "--samples=64", "--concurrency=8")  # fmt: skip
                    runs["in-process"]["64x8"].append(result)
                    print(f"round {round_index + 1} 64x8        in-process "
                          f"{result['samples_per_s']:10.1f} samples/s", flush=True)  # fmt: skip
        batches = {
            t: mean_batch(i["metrics_port"]) for t, i in targets.items() if "metrics_port" in i
        }
    load_end = os.getloadavg()

    def rates(target: str, scenario: str, key: str = "samples_per_s") -> list[float]:
        return [r[key] for r in runs[target][scenario]]

    summary: dict[str, dict] = {}
    for target, scenarios in runs.items():
        for scenario, results in scenarios.items():
            if not results:
                continue
            summary.setdefault(scenario, {})[target] = {
                "req_per_s": round(statistics.median(r["throughput_rps"] for r in results), 1),
                "samples_per_s": round(statistics.median(r["samples_per_s"] for r in results), 1),
                "p50_ms": statistics.median(r["latency_ms"]["p50"] for r in results),
                "p99_ms": statistics.median(r["latency_ms"]["p99"] for r in results),
                "errors": sum(r["error_count"] for r in results),
                "server_cores": statistics.median(r.get("server_cores", 0.0) for r in results),
                "client_cores": statistics.median(r.get("client_cores", 0.0) for r in results),
                "server_ms_per_call": statistics.median(
                    r.get("server_ms_per_call", 0.0) for r in results
                ),
            }
    ratios = {
        "1x64 vae-serve / noop-aio": median_ratio(
            rates("vae-serve", "1x64"), rates("noop-aio", "1x64")
        ),
        "1x64 / 1x16 (vae-serve)": median_ratio(
            rates("vae-serve", "1x64"), rates("vae-serve", "1x16")
        ),
        "64x8 vae-serve / in-process": median_ratio(
            rates("vae-serve", "64x8"), rates("in-process", "64x8")
        ),
        "64x8 uint8 / float32 (vae-serve)": median_ratio(
            rates("vae-serve", "64x8-uint8"), rates("vae-serve", "64x8")
        ),
        "64x8 noop-aio / in-process (transport bound)": median_ratio(
            rates("noop-aio", "64x8"), rates("in-process", "64x8")
        ),
    }

    def cpu(target: str, scenario: str) -> list[float]:
        return [r["server_ms_per_call"] for r in runs[target][scenario]]

    def p50(target: str, scenario: str) -> list[float]:
        return [r["latency_ms"]["p50"] for r in runs[target][scenario]]

    ratios.update(
        {
            "1conn 1x64 vae-serve --processes 1 / noop-aio": median_ratio(
                rates("vae-serve-p1", "1conn 1x64"), rates("noop-aio", "1conn 1x64")
            ),
            "1conn 1x1 p50 latency, vae-serve --processes 1 / noop-aio": median_ratio(
                p50("vae-serve-p1", "1conn 1x1"), p50("noop-aio", "1conn 1x1")
            ),
            "1conn 1x64 server CPU per call, vae-serve --processes 1 / noop-aio": median_ratio(
                cpu("vae-serve-p1", "1conn 1x64"), cpu("noop-aio", "1conn 1x64")
            ),
            "1x64 server CPU per call, vae-serve / noop-aio": median_ratio(
                cpu("vae-serve", "1x64"), cpu("noop-aio", "1x64")
            ),
        }
    )
    if "baseline" in runs:
        ratios["1conn 64x8 vae-serve / baseline"] = median_ratio(
            rates("vae-serve", "1conn 64x8"), rates("baseline", "1conn 64x8")
        )
        ratios["1conn 1x64 vae-serve / baseline"] = median_ratio(
            rates("vae-serve", "1conn 1x64"), rates("baseline", "1conn 1x64")
        )
        for scenario in ("1x1", "1x16", "1x64", "64x8"):
            ratios[f"{scenario} vae-serve / baseline"] = median_ratio(
                rates("vae-serve", scenario), rates("baseline", scenario)
            )
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_start": load_start,
            "load_average_end": load_end,
        },
        "settings": {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "client_processes": args.client_processes,
            "connections": args.connections,
            "serve_flags": args.serve_flags,
            "baseline": str(args.baseline_checkout or ""),
        },
        "summary": summary,
        "ratios": ratios,
        "mean_decoder_batch_rows": batches,
        "runs": runs,
    }
    (args.output / "server_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"load average at start {load_start}, at end {load_end}", "",
             "| scenario | target | req/s | samples/s | p50 ms | p99 ms | errors | server cores "
             "| server ms/call | client cores |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for scenario, by_target in summary.items():
        for target, s in by_target.items():
            lines.append(
                f"| {scenario} | {target} | {s['req_per_s']:,.0f} | {s['samples_per_s']:,.0f} | "
                f"{s['p50_ms']} | {s['p99_ms']} | {s['errors']} | {s['server_cores']} | "
                f"{s.get('server_ms_per_call', '')} | {s.get('client_cores', '')} |"
            )
    lines += ["", "| ratio | median | range |", "| --- | ---: | --- |"]
    for name, r in ratios.items():
        lines.append(f"| {name} | {r['median']} | {r['min']}-{r['max']} |")
    lines += ["", f"mean decoder batch (rows): {batches}"]
    table = "\n".join(lines)
    (args.output / "server_bench.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

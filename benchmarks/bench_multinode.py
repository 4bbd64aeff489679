"""Training throughput of one process against two "nodes" on loopback, at the same global batch.

One process: `vae-train --batch-size 128`. Two nodes: two torchrun launches (`--nnodes 2
--nproc-per-node 1`, c10d rendezvous on 127.0.0.1), `--batch-size 64` each, so each step sees the
same 128 images. Both train the default 784-400-20 MLP VAE on all of Fashion-MNIST's training split
at one torch thread per process; the runs alternate (one, two, one, two...) so that load from other
jobs falls on both alike. Throughput is the images trained on per second of the training loop
(`train_images / epoch_seconds` from log.jsonl, rank 0's clock; evaluation is not timed). A second
torchrun job times gloo's all-reduce of a gradient-sized tensor on loopback by itself.

    .venv/bin/python benchmarks/bench_multinode.py --epochs 2 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = Path(sys.executable).parent / "torchrun"
GLOBAL_BATCH = 128


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_args(run_dir: Path, epochs: int, batch_size: int, data_dir: str) -> list[str]:
    return [
        "--dataset", "fashion-mnist", "--run-dir", str(run_dir), "--epochs", str(epochs),
        "--batch-size", str(batch_size), "--threads", "1", "--progress", "false",
        "--tensorboard", "false", "--figures", "false", "--iwae-samples", "0",
        "--prior-components", "0", "--device", "cpu",
        *(["--data-dir", data_dir] if data_dir else []),
    ]  # fmt: skip


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def two_node_commands(module_args: list[str]) -> list[list[str]]:
    endpoint = f"127.0.0.1:{free_port()}"
    rendezvous = ["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "bench"]
    nodes = [str(TORCHRUN), "--nnodes", "2", "--nproc-per-node", "1", *rendezvous]
    return [[*nodes, "--rdzv-conf", f"is_host={host}", *module_args] for host in ("true", "false")]


def run_all(commands: list[list[str]]) -> None:
    processes = [
        subprocess.Popen(
            c, cwd=ROOT, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        for c in commands
    ]
    for process in processes:
        _, errors = process.communicate(timeout=1800)
        if process.returncode != 0:
            raise SystemExit(f"a run failed ({process.returncode}):\n{errors.decode()[-3000:]}")


def train_once(processes: int, run_dir: Path, epochs: int, data_dir: str) -> dict[str, float]:
    batch = GLOBAL_BATCH // processes
    args = train_args(run_dir, epochs, batch, data_dir)
    if processes == 1:
        run_all([[sys.executable, "-m", "training.cli", *args]])
    else:
        run_all(two_node_commands(["-m", "training.cli", *args]))
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    rates = [r["train_images"] / r["epoch_seconds"] for r in records]
    return {
        "images_per_second": statistics.mean(rates),
        "epoch_seconds": statistics.mean(r["epoch_seconds"] for r in records),
        "test_loss": records[-1]["test_loss"],
        "steps": records[-1]["step"],
    }


def time_all_reduce(parameters: int, repeats: int) -> None:
    """Under torchrun: seconds per gloo all-reduce of `parameters` float32 values (rank 0 prints)."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    values = torch.ones(parameters)
    for _ in range(5):  # warm-up: connections, buffers
        dist.all_reduce(values)
    dist.barrier()
    started = time.perf_counter()
    for _ in range(repeats):
        dist.all_reduce(values)
    seconds = (time.perf_counter() - started) / repeats
    if dist.get_rank() == 0:
        print(json.dumps({"all_reduce_seconds": seconds, "bytes": parameters * 4}))
    dist.destroy_process_group()


def measure_all_reduce(parameters: int) -> float:
    commands = two_node_commands([__file__, "--all-reduce-worker", str(parameters)])
    processes = [
        subprocess.Popen(
            c, cwd=ROOT, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        for c in commands
    ]
    outputs = [p.communicate(timeout=600)[0].decode() for p in processes]
    line = next(
        line for out in outputs for line in out.splitlines() if "all_reduce_seconds" in line
    )
    return json.loads(line)["all_reduce_seconds"]


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each, alternating")
    parser.add_argument(
        "--data-dir", default="", help="Fashion-MNIST (default: as vae-train finds it)"
    )
    parser.add_argument("--all-reduce-worker", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.all_reduce_worker:
        time_all_reduce(args.all_reduce_worker, repeats=50)
        return
    from training.models import ModelConfig, build_model

    parameters = sum(p.numel() for p in build_model(ModelConfig()).parameters())
    print(f"load average before: {load()}", flush=True)
    results: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for processes in (1, 2):
                run_dir = Path(scratch) / f"p{processes}-r{repeat}"
                result = train_once(processes, run_dir, args.epochs, args.data_dir)
                results[processes].append(result)
                print(json.dumps({"processes": processes, "repeat": repeat, **result}), flush=True)
    all_reduce = measure_all_reduce(parameters)
    one = statistics.mean(r["images_per_second"] for r in results[1])
    two = statistics.mean(r["images_per_second"] for r in results[2])
    summary = {
        "images_per_second": {"1": round(one, 1), "2": round(two, 1)},
        "ratio_2_over_1": round(two / one, 3),
        "test_loss": {"1": results[1][-1]["test_loss"], "2": results[2][-1]["test_loss"]},
        "gradient_bytes": parameters * 4,
        "gloo_all_reduce_loopback_ms": round(all_reduce * 1000, 3),
        "load_average_after": load(),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

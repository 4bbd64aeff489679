"""Encoder and decoder latency: onnxruntime (fp32, fp16, fp32 after onnxslim) against PyTorch eager.

All figures come from one run of this script, so the ratios compare like with like on a machine that
may be shared. Latency does not depend on the weights' values, so the model is freshly initialised.

    .venv/bin/python benchmarks/bench_export.py [--architecture mlp] [--kind vae] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export.onnx_export import GRAPH_FILES, convert_to_fp16, export_graphs
from training.models import ModelConfig, build_model


def median_ms(call: Callable[[], object], budget_s: float, max_runs: int = 200) -> float:
    """Median wall time of `call` in ms, after one warm-up call, over at most `budget_s` seconds."""
    call()
    timings: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(timings) < 3 or (time.perf_counter() < deadline and len(timings) < max_runs):
        started = time.perf_counter()
        call()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1000


def best_of_rounds(calls: dict[str, Callable[[], object]], rounds: int, budget_s: float):
    """The lowest of `rounds` medians per call, the calls interleaved round by round.

    On a machine shared with other jobs a burst of contention inflates whichever measurement it hits;
    interleaving spreads it over all contenders and the lowest round keeps the least disturbed one.
    """
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(rounds):
        for name, call in calls.items():
            best[name] = min(best[name], median_ms(call, budget_s))
    return best


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()  # as the server makes them: all graph optimisations on
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def slim(source: Path, target: Path) -> None:
    import onnxslim

    target.mkdir()
    for name in GRAPH_FILES:
        onnx.save(onnxslim.slim(onnx.load(str(source / name))), str(target / name))


def node_count(path: Path) -> int:
    return len(onnx.load(str(path)).graph.node)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default="mlp")
    parser.add_argument("--kind", default="vae", choices=("vae", "ae"))
    parser.add_argument("--image-shape", default="1,28,28", help="C,H,W (the face VAE: 3,64,64)")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads")
    parser.add_argument("--batches", default="1,64,256")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per figure")
    parser.add_argument("--budget", type=float, default=0.2, help="seconds per round and figure")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # The defaults are the classic 784-400-20 MLP VAE that `make demo` trains.
    shape = tuple(int(d) for d in args.image_shape.split(","))
    model = build_model(
        ModelConfig(architecture=args.architecture, kind=args.kind, image_shape=shape)  # type: ignore[arg-type]
    ).eval()
    config = model.config
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    variants = {name: work / name for name in ("fp32", "fp16", "fp32+slim")}
    variants["fp32"].mkdir()
    export_graphs(model, variants["fp32"])
    variants["fp16"].mkdir()
    export_graphs(model, variants["fp16"])
    convert_to_fp16(variants["fp16"])
    slim(variants["fp32"], variants["fp32+slim"])

    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
        f"threads, onnxruntime {ort.__version__} ({args.threads} intra-op threads), "
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average at start "
        f"{os.getloadavg()[0]:.1f}"
    )
    print(f"model: {args.architecture} {args.kind}, {config.image_shape} -> {config.latent_dim}")
    for name in GRAPH_FILES:
        counts = ", ".join(f"{v} {node_count(d / name)}" for v, d in variants.items())
        print(f"{name} nodes: {counts}")
    header = f"{'graph':8} {'batch':>5} {'torch ms':>9}" + "".join(
        f" {v + ' ms':>13} {'x torch':>7}" for v in variants
    )
    print(header)
    sessions = {
        v: {n: session(d / n, args.threads) for n in GRAPH_FILES} for v, d in variants.items()
    }
    rng = np.random.default_rng(0)
    for graph in ("encoder", "decoder"):
        for batch in (int(b) for b in args.batches.split(",")):
            if graph == "encoder":
                array = rng.random((batch, *config.image_shape), dtype=np.float32)
                feeds = {"image": array}
                eager = model.encode
            else:
                array = rng.standard_normal((batch, config.latent_dim), dtype=np.float32)
                feeds = {"latent": array}
                eager = model.decode
            tensor = torch.from_numpy(array)

            def eager_call(eager=eager, tensor=tensor):
                with torch.inference_mode():
                    return eager(tensor)

            calls: dict[str, Callable[[], object]] = {"torch": eager_call}
            for variant in variants:
                run = sessions[variant][f"{graph}.onnx"].run
                calls[variant] = lambda run=run, feeds=feeds: run(None, feeds)
            ms = best_of_rounds(calls, args.rounds, args.budget)
            line = f"{graph:8} {batch:5d} {ms['torch']:9.3f}" + "".join(
                f" {ms[v]:13.3f} {ms['torch'] / ms[v]:6.2f}x" for v in variants
            )
            print(line, flush=True)
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    print(
        f"ms: lowest of {args.rounds} interleaved round medians; x torch = PyTorch eager ms / "
        "onnxruntime ms (above 1: onnxruntime is faster)"
    )


if __name__ == "__main__":
    main()

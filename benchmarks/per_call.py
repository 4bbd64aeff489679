"""What one Sample call costs inside vae-serve, without the transport: in-process, CPU time per call.

Usage:
  python benchmarks/per_call.py --repository model_repository --model fashion-mlp-vae \
      [--baseline-checkout ../old] [--calls 20000] [--rounds 5]

Two measurements, each in a fresh process per checkout (this one, and `--baseline-checkout` when
given: another checkout of this project, e.g. `git worktree add ../old <commit>`), interleaved round
by round so that load on the shared machine hits both alike:

- the whole handler: `VaeServicer.Sample(request, context)` of the checkout, with a stand-in gRPC
  context, one call at a time (1 x 1) and 64 at once on one event loop (1 x 64), with batching on, in
  single-process metrics and in multi-process metrics (PROMETHEUS_MULTIPROC_DIR set, as `vae-serve`
  runs by default);
- the stages of the call one by one (request parsing, the call wrapper, model lookup, the seeded
  draw, the batching hand-off, onnxruntime, response building, metrics), each the checkout's own code
  where it has one.

Figures are CPU microseconds per call (time.process_time), the median over rounds; the load average is
printed. Nothing here measures gRPC: BENCHMARKS.md's server table has the end-to-end figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Context:
    """The parts of grpc.aio.ServicerContext a unary handler of vae-serve uses."""

    def invocation_metadata(self):
        return ()

    def set_trailing_metadata(self, metadata) -> None:
        self.trailing = metadata

    def time_remaining(self):
        return None

    async def abort(self, code, message):
        raise RuntimeError(f"{code}: {message}")


def cpu_per_call(run, calls: int) -> float:
    """CPU microseconds per call of `run(calls)`."""
    start = time.process_time()
    run(calls)
    return (time.process_time() - start) / calls * 1e6


def measure(args: argparse.Namespace) -> dict[str, float]:
    """Runs inside the checkout's own process (sys.path[0] is the checkout)."""
    import numpy as np

    from server.metrics import Metrics
    from server.proto_gen.vae.v1 import vae_pb2

    try:
        from server.dataplane.plane import DataPlane
        from server.fronts.grpc.vae_v1 import VaeServicer
        from server.inference.batching import BatchingConfig
        from server.inference.served_model import ServedModel
        from server.inference.store import ModelStore
        from server.process.settings import Settings
    except ImportError:  # a checkout from before server/ was laid out by role (5932a6b and older)
        from server.batching import BatchingConfig  # type: ignore[no-redef]
        from server.executor import ModelExecutor as ServedModel  # type: ignore[no-redef]
        from server.model_store import ModelStore  # type: ignore[no-redef]
        from server.service import DataPlane  # type: ignore[no-redef]
        from server.servicer import VaeServicer  # type: ignore[no-redef]
        from server.settings import Settings  # type: ignore[no-redef]

    metrics = Metrics()
    factory = lambda sessions: ServedModel(sessions, BatchingConfig(), metrics)  # noqa: E731
    try:
        store = ModelStore(Path(args.repository), served_model_factory=factory)
    except TypeError:  # older checkouts name it executor_factory
        store = ModelStore(Path(args.repository), executor_factory=factory)  # type: ignore[call-arg]
    store.load_all()
    plane = DataPlane(store, Settings().limits, metrics)
    servicer = VaeServicer(store, plane, metrics)
    request = vae_pb2.SampleRequest(model=vae_pb2.ModelRef(name=args.model), count=1, seed=7)
    wire = request.SerializeToString()
    context = Context()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    figures: dict[str, float] = {}

    def one_at_a_time(calls: int) -> None:
        async def go() -> None:
            for _ in range(calls):
                await servicer.Sample(vae_pb2.SampleRequest.FromString(wire), context)

        loop.run_until_complete(go())

    def sixty_four_at_once(calls: int) -> None:
        async def go() -> None:
            for _ in range(calls // 64):
                await asyncio.gather(
                    *(
                        servicer.Sample(vae_pb2.SampleRequest.FromString(wire), context)
                        for _ in range(64)
                    )
                )

        loop.run_until_complete(go())

    one_at_a_time(200)  # warm
    figures["handler 1x1"] = cpu_per_call(one_at_a_time, args.calls)
    figures["handler 1x64"] = cpu_per_call(sixty_four_at_once, args.calls)
    # Let the periodic metrics flush (if the checkout has one) run before the process ends.
    loop.run_until_complete(asyncio.sleep(1.2))

    # --- stages, one by one -------------------------------------------------------------------
    model = store.get(args.model, 0)
    n = args.calls

    def loop_of(body):
        def run(calls: int) -> None:
            for _ in range(calls):
                body()

        return run

    figures["parse request"] = cpu_per_call(
        loop_of(lambda: vae_pb2.SampleRequest.FromString(wire)), n
    )
    table = getattr(store, "table", None)
    if table is not None:
        figures["model lookup"] = cpu_per_call(loop_of(lambda: table.get((args.model, 0))), n)
    else:
        figures["model lookup"] = cpu_per_call(loop_of(lambda: store.get(args.model, 0)), n)
    dim = model.metadata.latent_dim
    normal = getattr(plane, "_normal", None)
    if normal is not None:
        figures["seeded draw"] = cpu_per_call(loop_of(lambda: normal.draw(7, 1, dim)), n)
    else:
        from server.dataplane import latent_space

        figures["seeded draw"] = cpu_per_call(
            loop_of(
                lambda: latent_space.draw_latents(latent_space.prior_generator(7), 1, dim, 1.0)
            ),
            n,
        )
    z = np.zeros((1, dim), dtype=np.float32)
    sessions = getattr(model, "sessions", None) or model.runtime
    session = sessions.decoder
    name = session.get_inputs()[0].name
    figures["onnxruntime (1 row)"] = cpu_per_call(loop_of(lambda: session.run(None, {name: z})), n)
    images = session.run(None, {name: z})[0]

    def build() -> None:
        from server.codecs import set_tensor

        response = vae_pb2.SampleResponse(seed=7)
        set_tensor(response.latents, z)
        set_tensor(response.images, images)
        response.model.name = args.model
        response.model.version = 1
        response.SerializeToString()

    figures["build + serialise response"] = cpu_per_call(loop_of(build), n)

    async def nothing(*_args):
        return None

    calls = servicer.calls
    if hasattr(calls, "unary"):
        handler = calls.unary("Bench", nothing, lookup=False)
        wrapped = lambda: handler(None, context)  # noqa: E731
    else:
        wrapped = lambda: calls.run("Bench", context, None, nothing)  # noqa: E731

    def wrapper(calls_: int) -> None:
        async def go() -> None:
            for _ in range(calls_):
                await wrapped()

        loop.run_until_complete(go())

    figures["call wrapper (its metrics included)"] = cpu_per_call(wrapper, n)

    if hasattr(metrics, "request_log"):

        def record() -> None:  # what a call and its batch record, plus the fold at each flush
            metrics.request_log.append(("Sample", args.model, "OK", 0.001))
            metrics.samples_pending[args.model] = metrics.samples_pending.get(args.model, 0) + 1
            metrics.batch_log(args.model, "decoder").records.append((64, 0.0005, [0.0001]))

        def recorded(calls_: int) -> None:
            for i in range(calls_):
                record()
                if i % 64 == 63:  # a fold per 64 calls: what 1 x 64 under load comes to
                    metrics.flush(64)
            metrics.flush(0)

        figures["metrics"] = cpu_per_call(recorded, n)
    else:

        def recorded(calls_: int) -> None:
            for _ in range(calls_):
                started = metrics.start_request()
                metrics.finish_request(started, "Sample", args.model, "OK")
                metrics.child(metrics.samples, args.model).inc(1)
                metrics.observe_batch(args.model, "decoder", 1, 0.0005, [0.0001])

        figures["metrics"] = cpu_per_call(recorded, n)

    def handoff(calls: int) -> None:
        """The decoder call through the checkout's batching, minus onnxruntime's own time."""

        async def go() -> None:
            if hasattr(model, "decoder"):
                for _ in range(calls):
                    await model.decoder.submit([z])
            else:
                for _ in range(calls):
                    await model.decode(z, None)

        loop.run_until_complete(go())

    figures["batching hand-off + onnxruntime"] = cpu_per_call(handoff, n)
    figures["batching hand-off"] = (
        figures["batching hand-off + onnxruntime"] - figures["onnxruntime (1 row)"]
    )
    loop.run_until_complete(asyncio.sleep(1.2))
    loop.close()
    return {k: round(v, 2) for k, v in figures.items()}


def child(checkout: str, args: argparse.Namespace, multiprocess: bool) -> dict[str, float]:
    env = dict(os.environ)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with tempfile.TemporaryDirectory() as metrics_dir:
        if multiprocess:
            env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--measure",
            f"--repository={Path(args.repository).resolve()}",
            f"--model={args.model}",
            f"--calls={args.calls}",
        ]
        env["PYTHONPATH"] = checkout
        result = subprocess.run(
            command, cwd=checkout, env=env, capture_output=True, text=True, timeout=900
        )
    if result.returncode != 0:
        raise SystemExit(f"measurement in {checkout} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", default="model_repository")
    parser.add_argument("--model", default="fashion-mlp-vae")
    parser.add_argument("--baseline-checkout", default="")
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", default="")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args)))
        return 0
    targets = {"this checkout": str(ROOT)}
    if args.baseline_checkout:
        targets["baseline"] = str(Path(args.baseline_checkout).resolve())
    rows: dict[tuple[str, str], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for mode in ("single-process metrics", "multi-process metrics"):
            for label, checkout in targets.items():
                figures = child(checkout, args, mode.startswith("multi"))
                rows.setdefault((label, mode), []).append(figures)
    print(f"load average {os.getloadavg()}, {os.cpu_count()} cores, {args.rounds} rounds")
    report: dict[str, dict[str, float]] = {}
    for (label, mode), runs in rows.items():
        keys = runs[0].keys()
        report[f"{label}, {mode}"] = {
            k: round(statistics.median(r[k] for r in runs), 2) for k in keys
        }
    names = list(next(iter(report.values())))
    header = "| CPU us per call | " + " | ".join(report) + " |"
    print(header)
    print("| --- |" + " ---: |" * len(report))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{report[c][name]:.1f}" for c in report) + " |")
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`vae-bench`: closed-loop load against a running server (or onnxruntime in-process), JSON out."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from server.codecs import tensor_to_proto
from server.proto_gen.vae.v1 import vae_pb2, vae_pb2_grpc

RPCS = ("sample", "decode", "encode", "info")


def summarise(latencies: list[float], errors: Counter[str], seconds: float, **info: Any) -> dict:
    """Throughput and latency percentiles (milliseconds) of one run."""
    ok = np.asarray(latencies) * 1000.0
    samples = int(info.get("samples_per_request", 1))
    pct = {
        f"p{q}": round(float(np.percentile(ok, q)), 3) if len(ok) else None for q in (50, 90, 99)
    }
    return {
        **info,
        "duration_s": round(seconds, 3),
        "requests_ok": len(ok),
        "errors": dict(errors),
        "error_count": sum(errors.values()),
        "throughput_rps": round(len(ok) / seconds, 2),
        "samples_per_s": round(len(ok) * samples / seconds, 1),
        "latency_ms": {
            **pct,
            "mean": round(float(ok.mean()), 3) if len(ok) else None,
            "max": round(float(ok.max()), 3) if len(ok) else None,
        },
    }


def _channel(args: argparse.Namespace) -> grpc.aio.Channel:
    options = [
        ("grpc.max_receive_message_length", 256 << 20),
        ("grpc.max_send_message_length", 256 << 20),
    ]
    if args.tls_ca:
        credentials = grpc.ssl_channel_credentials(Path(args.tls_ca).read_bytes())
        return grpc.aio.secure_channel(args.address, credentials, options=options)
    return grpc.aio.insecure_channel(args.address, options=options)


async def _run_grpc(args: argparse.Namespace) -> dict:
    async with _channel(args) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        ref = vae_pb2.ModelRef(name=args.model)
        info = await stub.GetModelInfo(vae_pb2.GetModelInfoRequest(model=ref), timeout=args.timeout)
        label = 0 if info.num_classes else None
        n = args.samples
        rng = np.random.default_rng(0)
        latents = tensor_to_proto(rng.standard_normal((n, info.latent_dim), dtype=np.float32))
        images = tensor_to_proto(np.zeros((n, *info.image_shape), dtype=np.float32))
        labels = [0] * n if info.num_classes else []

        def call(i: int):
            if args.rpc == "sample":
                request = vae_pb2.SampleRequest(model=ref, count=n, seed=i, label=label)
                return stub.Sample(request, timeout=args.timeout)
            if args.rpc == "decode":
                decode = vae_pb2.DecodeRequest(model=ref, latents=latents, labels=labels)
                return stub.Decode(decode, timeout=args.timeout)
            if args.rpc == "encode":
                encode = vae_pb2.EncodeRequest(model=ref, images=images, labels=labels)
                return stub.Encode(encode, timeout=args.timeout)
            return stub.GetModelInfo(vae_pb2.GetModelInfoRequest(model=ref), timeout=args.timeout)

        latencies: list[float] = []
        errors: Counter[str] = Counter()
        measuring = False
        stop_at = time.perf_counter() + args.warmup + args.duration

        async def worker(w: int) -> None:
            i = w
            while time.perf_counter() < stop_at:
                start = time.perf_counter()
                try:
                    await call(i)
                    if measuring:
                        latencies.append(time.perf_counter() - start)
                except grpc.aio.AioRpcError as exc:
                    if measuring:
                        errors[exc.code().name] += 1
                i += args.concurrency

        tasks = [asyncio.create_task(worker(w)) for w in range(args.concurrency)]
        await asyncio.sleep(args.warmup)
        measuring, begin = True, time.perf_counter()
        await asyncio.gather(*tasks)
        seconds = time.perf_counter() - begin
    return summarise(
        latencies, errors, seconds, **_describe(args), provider=info.execution_provider
    )


def _run_in_process(args: argparse.Namespace) -> dict:
    """The ceiling: the same prior draws and decoder batches, onnxruntime called directly."""
    from server import latent
    from server.repository import list_versions, version_dir
    from server.runtime import ModelRuntime, RuntimeOptions

    repo = Path(args.repository)
    version = max(list_versions(repo / args.model))
    runtime = ModelRuntime(
        version_dir(repo, args.model, version),
        RuntimeOptions(
            providers=tuple(args.providers.split(",")), intra_op_threads=args.intra_op_threads
        ),
    )
    runtime.warm_up()
    meta = runtime.metadata
    labels = np.zeros(args.samples, dtype=np.int64) if meta.conditional else None
    latencies: list[float] = []
    lock = threading.Lock()
    state = {"measuring": False}
    stop_at = time.perf_counter() + args.warmup + args.duration

    def worker(w: int) -> None:
        i = w
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            z = latent.sample_prior(args.samples, meta.latent_dim, i)
            runtime.decode(z, labels)
            if state["measuring"]:
                with lock:
                    latencies.append(time.perf_counter() - start)
            i += args.concurrency

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(args.concurrency)]
    for thread in threads:
        thread.start()
    time.sleep(args.warmup)
    state["measuring"], begin = True, time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - begin
    return summarise(latencies, Counter(), seconds, **_describe(args), provider=runtime.provider)


def _describe(args: argparse.Namespace) -> dict:
    target = f"in-process:{args.repository}" if args.in_process else args.address
    return {
        "target": target,
        "rpc": args.rpc,
        "model": args.model,
        "concurrency": args.concurrency,
        "samples_per_request": args.samples,
        "warmup_s": args.warmup,
    }


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="vae-bench", description=__doc__)
    parser.add_argument(
        "--address", default=env("VAE_ADDRESS", "127.0.0.1:50051"), help="[VAE_ADDRESS]"
    )
    parser.add_argument("--model", default=env("VAE_MODEL", ""), help="model name [VAE_MODEL]")
    parser.add_argument("--rpc", choices=RPCS, default="sample")
    parser.add_argument("--concurrency", type=int, default=16, help="calls kept in flight")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--samples", type=int, default=1, help="images (or rows) per request")
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline per call, seconds")
    parser.add_argument(
        "--tls-ca", default=env("VAE_TLS_CA", ""), help="PEM CA: use TLS [VAE_TLS_CA]"
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="call onnxruntime directly on --repository instead of a server (the ceiling)",
    )
    parser.add_argument("--repository", default=env("VAE_REPOSITORY", "model_repository"))
    parser.add_argument("--providers", default="CPUExecutionProvider")
    parser.add_argument("--intra-op-threads", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.concurrency < 1 or args.duration <= 0 or args.samples < 1:
        print(
            "vae-bench: --concurrency, --duration and --samples must be positive", file=sys.stderr
        )
        return 2
    if args.in_process:
        if args.rpc != "sample" or not args.model:
            print(
                "vae-bench: --in-process measures --rpc sample and needs --model", file=sys.stderr
            )
            return 2
        result = _run_in_process(args)
    else:
        try:
            result = asyncio.run(_run_grpc(args))
        except grpc.aio.AioRpcError as exc:
            print(f"vae-bench: cannot reach {args.address}: {exc.details()}", file=sys.stderr)
            return 1
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0 if result["error_count"] == 0 else 3


if __name__ == "__main__":
    sys.exit(main())

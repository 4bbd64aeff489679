"""`vae-bench`: closed-loop load against a running server (or onnxruntime in-process), JSON out."""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
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
from server.proto_gen.inference import grpc_service_pb2 as oip_pb2
from server.proto_gen.vae.v1 import vae_pb2, vae_pb2_grpc

# v2-decode: the Decode load through the Open Inference Protocol (ModelInfer of <model>-decoder).
RPCS = ("sample", "decode", "encode", "info", "v2-decode")


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


# How each --format value asks for images.
FORMATS = {
    "float32": vae_pb2.IMAGE_FORMAT_TENSOR,
    "uint8": vae_pb2.IMAGE_FORMAT_UINT8,
    "png": vae_pb2.IMAGE_FORMAT_PNG,
}
# Distinct serialised requests a worker cycles through (Sample: one seed each).
REQUEST_POOL = 256


def _requests(args: argparse.Namespace, info: vae_pb2.ModelInfo, worker: int) -> list[bytes]:
    """The serialised requests one worker sends, built once so the loop costs the client little."""
    ref = vae_pb2.ModelRef(name=args.model)
    n = args.samples
    label = 0 if info.num_classes else None
    labels = [0] * n if info.num_classes else []
    image_format = FORMATS[args.format]
    if args.rpc == "sample":
        return [
            vae_pb2.SampleRequest(
                model=ref, count=n, seed=worker * REQUEST_POOL + i, label=label, format=image_format
            ).SerializeToString()
            for i in range(REQUEST_POOL)
        ]
    if args.rpc == "decode":
        rng = np.random.default_rng(worker)
        latents = tensor_to_proto(rng.standard_normal((n, info.latent_dim), dtype=np.float32))
        request = vae_pb2.DecodeRequest(
            model=ref, latents=latents, labels=labels, format=image_format
        )
        return [request.SerializeToString()]
    if args.rpc == "v2-decode":
        rng = np.random.default_rng(worker)
        infer = oip_pb2.ModelInferRequest(model_name=f"{args.model}-decoder")
        infer.inputs.add(name="latent", datatype="FP32", shape=[n, info.latent_dim])
        infer.raw_input_contents.append(
            rng.standard_normal((n, info.latent_dim), dtype=np.float32).tobytes()
        )
        if info.num_classes:
            infer.inputs.add(name="label", datatype="INT64", shape=[n])
            infer.raw_input_contents.append(np.zeros(n, np.int64).tobytes())
        return [infer.SerializeToString()]
    if args.rpc == "encode":
        images = tensor_to_proto(np.zeros((n, *info.image_shape), dtype=np.float32))
        return [vae_pb2.EncodeRequest(model=ref, images=images, labels=labels).SerializeToString()]
    return [vae_pb2.GetModelInfoRequest(model=ref).SerializeToString()]


METHOD_PATHS = {
    "sample": "/vae.v1.VaeService/Sample",
    "decode": "/vae.v1.VaeService/Decode",
    "encode": "/vae.v1.VaeService/Encode",
    "info": "/vae.v1.VaeService/GetModelInfo",
    "v2-decode": "/inference.GRPCInferenceService/ModelInfer",
}


async def _drive(args: argparse.Namespace, first_worker: int, workers: int) -> dict:
    """`workers` closed-loop callers on one channel; raw bytes both ways, so the client parses no
    responses (a load generator should spend the cores on load, not on decoding answers)."""
    async with _channel(args) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        ref = vae_pb2.ModelRef(name=args.model)
        info = await stub.GetModelInfo(vae_pb2.GetModelInfoRequest(model=ref), timeout=args.timeout)
        call = channel.unary_unary(METHOD_PATHS[args.rpc])  # no serialisers: bytes in, bytes out
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        received = [0]
        measuring = False
        stop_at = time.perf_counter() + args.warmup + args.duration

        async def worker(w: int) -> None:
            payloads = _requests(args, info, w)
            i = 0
            while time.perf_counter() < stop_at:
                start = time.perf_counter()
                try:
                    reply = await call(payloads[i % len(payloads)], timeout=args.timeout)
                    if measuring:
                        latencies.append(time.perf_counter() - start)
                        received[0] += len(reply)
                except grpc.aio.AioRpcError as exc:
                    if measuring:
                        errors[exc.code().name] += 1
                i += 1

        tasks = [asyncio.create_task(worker(first_worker + w)) for w in range(workers)]
        await asyncio.sleep(args.warmup)
        measuring, begin = True, time.perf_counter()
        await asyncio.gather(*tasks)
        seconds = time.perf_counter() - begin
    return {
        "latencies": latencies,
        "errors": dict(errors),
        "seconds": seconds,
        "bytes": received[0],
        "provider": info.execution_provider,
    }


def _drive_in_child(args: argparse.Namespace, first_worker: int, workers: int) -> dict:
    return asyncio.run(_drive(args, first_worker, workers))


def _run_grpc(args: argparse.Namespace) -> dict:
    """Split --concurrency over --client-processes processes (one event loop each), merge results."""
    processes = min(args.client_processes, args.concurrency)
    shares = [
        args.concurrency // processes + (p < args.concurrency % processes) for p in range(processes)
    ]
    firsts = [sum(shares[:p]) for p in range(processes)]
    if processes == 1:
        parts = [asyncio.run(_drive(args, 0, args.concurrency))]
    else:
        context = multiprocessing.get_context("spawn")
        with context.Pool(processes) as pool:
            parts = pool.starmap(
                _drive_in_child, [(args, f, s) for f, s in zip(firsts, shares, strict=True)]
            )
    latencies = [x for part in parts for x in part["latencies"]]
    errors: Counter[str] = Counter()
    for part in parts:
        errors.update(part["errors"])
    seconds = max(part["seconds"] for part in parts)
    result = summarise(latencies, errors, seconds, **_describe(args), provider=parts[0]["provider"])
    result["response_mb_per_s"] = round(sum(p["bytes"] for p in parts) / seconds / 1e6, 1)
    return result


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
        "format": args.format,
        "client_processes": 1 if args.in_process else args.client_processes,
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
        "--format",
        choices=tuple(FORMATS),
        default="float32",
        help="how Sample and Decode return images",
    )
    parser.add_argument(
        "--client-processes",
        type=int,
        default=1,
        help="load-generator processes sharing --concurrency (one event loop each)",
    )
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
    if args.concurrency < 1 or args.duration <= 0 or args.samples < 1 or args.client_processes < 1:
        print(
            "vae-bench: --concurrency, --duration, --samples and --client-processes must be "
            "positive",
            file=sys.stderr,
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
            result = _run_grpc(args)
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

"""`vae-bench`: closed-loop load against a running server (or onnxruntime in-process), JSON out."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from client.api import PRIORS
from server import options as opt
from server.codecs import tensor_to_proto
from server.options import StrictParser
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
        # Channels to one address share a connection through gRPC's global subchannel pool; a local
        # pool gives each channel its own, as separate clients would have.
        ("grpc.use_local_subchannel_pool", 1),
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
                model=ref,
                count=n,
                seed=worker * REQUEST_POOL + i,
                label=label,
                format=image_format,
                prior=PRIORS[args.prior],
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
    """`workers` closed-loop callers spread over `--connections` channels (each its own TCP
    connection); raw bytes both ways, so the client parses no responses (a load generator should
    spend the cores on load, not on decoding answers)."""
    channels = [_channel(args) for _ in range(max(1, min(args.connections, workers)))]
    try:
        stub = vae_pb2_grpc.VaeServiceStub(channels[0])
        ref = vae_pb2.ModelRef(name=args.model)
        info = await stub.GetModelInfo(vae_pb2.GetModelInfoRequest(model=ref), timeout=args.timeout)
        # No serialisers: bytes in, bytes out.
        calls = [channel.unary_unary(METHOD_PATHS[args.rpc]) for channel in channels]
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        received = [0]
        measuring = False
        # The window closes `duration` after measuring begins, however late the warm-up's sleep
        # returns on a loaded machine; until then the workers run on.
        window = {"stop_at": math.inf}

        async def worker(w: int) -> None:
            payloads = _requests(args, info, w)
            call = calls[w % len(calls)]
            i = 0
            while time.perf_counter() < window["stop_at"]:
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
        window["stop_at"] = begin + args.duration
        await asyncio.gather(*tasks)
        seconds = time.perf_counter() - begin
    finally:
        for channel in channels:
            await channel.close()
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
    from server.dataplane import latent_space
    from server.inference.sessions import ModelSessions, RuntimeOptions
    from server.repository import list_versions, version_dir

    repo = Path(args.repository)
    version = max(list_versions(repo / args.model))
    runtime = ModelSessions(
        version_dir(repo, args.model, version),
        RuntimeOptions(providers=args.providers, intra_op_threads=args.intra_op_threads),
    )
    runtime.warm_up()
    meta = runtime.metadata
    labels = np.zeros(args.samples, dtype=np.int64) if meta.conditional else None
    latencies: list[float] = []
    lock = threading.Lock()
    # The window closes `duration` after measuring begins, however late the main thread wakes
    # from the warm-up on a loaded machine (a window fixed up front could close before it opens).
    state: dict[str, Any] = {"measuring": False, "stop_at": math.inf}

    def worker(w: int) -> None:
        i = w
        while time.perf_counter() < state["stop_at"]:
            start = time.perf_counter()
            z = latent_space.sample_prior(args.samples, meta.latent_dim, i)
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
    state["stop_at"] = begin + args.duration
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
        **({"prior": args.prior} if args.rpc == "sample" else {}),
        "client_processes": 1 if args.in_process else args.client_processes,
        "connections": 1 if args.in_process else args.connections,
        "warmup_s": args.warmup,
    }


def build_parser() -> StrictParser:
    parser = StrictParser(
        prog="vae-bench",
        description=__doc__ + " Options in brackets also read that VAE_* variable.",
    )
    parser.option(
        "--address", opt.nonempty, "127.0.0.1:50051", "server host:port", env="VAE_ADDRESS"
    )
    parser.option("--model", opt.text, "", "model name", env="VAE_MODEL")
    parser.option("--rpc", opt.choice(*RPCS), "sample", "the RPC to call: " + ", ".join(RPCS))
    parser.option("--concurrency", opt.integer(1), 16, "calls kept in flight")
    parser.option("--duration", opt.number(above=0), 10.0, "measured seconds")
    parser.option("--warmup", opt.number(0), 1.0, "unmeasured seconds first")
    parser.option("--samples", opt.integer(1), 1, "images (or rows) per request")
    parser.option("--timeout", opt.number(above=0), 30.0, "deadline per call, seconds")
    parser.option(
        "--format", opt.choice(*FORMATS), "float32", "how Sample and Decode return images"
    )
    parser.option("--prior", opt.choice(*PRIORS), "standard-normal", "the prior Sample draws from")
    parser.option(
        "--connections",
        opt.integer(1),
        1,
        "TCP connections the callers share out (each its own channel), as separate clients",
    )
    parser.option(
        "--client-processes",
        opt.integer(1),
        1,
        "load-generator processes sharing --concurrency (one event loop each)",
    )
    parser.option("--tls-ca", opt.text, "", "PEM CA: use TLS", env="VAE_TLS_CA")
    parser.switch(
        "--in-process",
        False,
        "call onnxruntime directly on --repository instead of a server (the ceiling)",
    )
    parser.option(
        "--repository",
        opt.nonempty,
        "model_repository",
        "model repository, for --in-process",
        env="VAE_REPOSITORY",
    )
    parser.option(
        "--providers", opt.providers, ("CPUExecutionProvider",), "for --in-process: providers"
    )
    parser.option("--intra-op-threads", opt.integer(0), 0, "for --in-process: threads per call")
    parser.option("--output", opt.optional(opt.path), None, "also write the JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.in_process:
        from server.process.cli import missing_onnxruntime_message, onnxruntime_missing

        if onnxruntime_missing():
            print(missing_onnxruntime_message("vae-bench --in-process"), file=sys.stderr)
            return 2
        if args.rpc != "sample" or not args.model:
            print(
                "vae-bench: --in-process measures --rpc sample and needs --model", file=sys.stderr
            )
            return 2
        if args.prior != "standard-normal":
            print(
                "vae-bench: --in-process draws N(0, I) only; measure --prior "
                f"{args.prior} against a server",
                file=sys.stderr,
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

"""The HTTP front's stack, chosen by measurement: the same routes (server/fronts/http) on uvicorn with
httptools (vae-serve's front) and on aiohttp's low-level server, each on a serving process's event
loop, against the gRPC v2 front of the same process, for v2 infer of the decoder with JSON and binary tensors, and
the PNG sample route beside gRPC Sample plus a client-side PNG encode.

    .venv/bin/python benchmarks/http_stacks.py --repository model_repository --model fashion-mlp-vae

One client process (this one, asyncio) drives every server with pre-built bodies, reading each
answer whole; rounds alternate between the stacks so drift on a shared machine hits both alike.
Prints JSON: samples/s per (stack, format, concurrency x rows), the ratios in the same run, and
the load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.codecs import grid_png, tensor_to_numpy  # noqa: E402
from server.proto_gen.inference import grpc_service_pb2 as pb  # noqa: E402
from server.proto_gen.inference import grpc_service_pb2_grpc as pb_grpc  # noqa: E402
from server.proto_gen.vae.v1 import vae_pb2, vae_pb2_grpc  # noqa: E402

SHAPES = ((1, 64), (64, 8))  # (concurrent clients, rows per request)


# --- the serving side: one process per stack ------------------------------------------------------


def serve(stack: str, repository: str, port: int, http_port: int) -> None:
    """A serving process: VaeServer (gRPC, data plane, batching) with the HTTP front on `stack`:
    uvicorn is vae-serve's own front; aiohttp's low-level server runs the same HttpFront."""
    from server.fronts.http.app import HttpFront, build_routes
    from server.fronts.readiness import model_service
    from server.process.app import SERVICE_NAME, VaeServer
    from server.process.settings import Settings

    settings = Settings(
        repository=Path(repository),
        host="127.0.0.1",
        port=port,
        http_port=http_port if stack == "uvicorn" else 0,
        metrics_port=0,
        providers=("CPUExecutionProvider",),
        processes=1,
        reload_interval_seconds=0,
        log_level="WARNING",
    )
    server = VaeServer(settings)
    server.start()
    if stack == "aiohttp":
        routes = build_routes(
            server.store,
            server.plane,
            lambda: server.readiness.serving(SERVICE_NAME),
            lambda name: server.readiness.serving(model_service(name)),
        )
        assert server._loop is not None
        start = aiohttp_front(HttpFront(routes, server.calls), http_port)
        asyncio.run_coroutine_threadsafe(start, server._loop).result()
    print("ready", flush=True)
    sys.stdin.read()  # until the client closes our stdin
    server.stop(grace=1.0)


async def aiohttp_front(front: Any, port: int) -> None:
    """The same front on aiohttp's low-level server (its C parser, llhttp), on the running loop."""
    from aiohttp import web

    from server.fronts.http.exchange import PayloadTooLarge

    async def handle(request: Any) -> web.Response:
        async def read_body(limit: int) -> bytes:
            length = request.content_length
            if length is not None and length > limit:
                raise PayloadTooLarge(f"the request body is {length} bytes, over {limit}")
            return await request.content.readexactly(length) if length else b""

        path = request.raw_path.partition("?")[0]
        answer = await front.dispatch(
            request.method, path, request.query, request.headers, read_body
        )
        answer.headers["Content-Type"] = answer.content_type
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)

    loop = asyncio.get_running_loop()
    await loop.create_server(web.Server(handle, access_log=None), "127.0.0.1", port)


# --- the client side ------------------------------------------------------------------------------


def infer_body(rows: int, dim: int, binary: bool) -> tuple[bytes, dict[str, str]]:
    z = np.random.default_rng(0).standard_normal((rows, dim), dtype=np.float32)
    if not binary:
        tensor = {"name": "latent", "datatype": "FP32", "shape": [rows, dim], "data": z.ravel().tolist()}  # fmt: skip
        return json.dumps({"inputs": [tensor]}).encode(), {"Content-Type": "application/json"}
    data = z.tobytes()
    header = json.dumps(
        {
            "inputs": [{"name": "latent", "datatype": "FP32", "shape": [rows, dim],
                        "parameters": {"binary_data_size": len(data)}}],
            "outputs": [{"name": "image", "parameters": {"binary_data": True}}],
        }
    ).encode()  # fmt: skip
    return header + data, {"Inference-Header-Content-Length": str(len(header))}


async def closed_loop(
    call: Callable[[], Awaitable[None]], clients: int, rows: int, seconds: float
) -> float:
    """`clients` callers each awaiting `call()` again as soon as it returns; rows per second over
    `seconds` measured after one second of warm-up."""
    counted, state = [0], {"measuring": False, "stop": False}

    async def loop() -> None:
        while not state["stop"]:
            await call()
            if state["measuring"]:
                counted[0] += rows

    tasks = [asyncio.create_task(loop()) for _ in range(clients)]
    await asyncio.sleep(1.0)
    state["measuring"], start = True, time.perf_counter()
    await asyncio.sleep(seconds)
    state["measuring"], elapsed = False, time.perf_counter() - start
    state["stop"] = True
    await asyncio.gather(*tasks)
    return counted[0] / elapsed


async def http_load(
    url: str, body: bytes, headers: dict[str, str], clients: int, rows: int, seconds: float
) -> float:
    """Samples/s of `clients` concurrent loops posting `body`, after a 1 s warm-up."""
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def call() -> None:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{response.status}: {await response.text()}")

        return await closed_loop(call, clients, rows, seconds)


async def grpc_load(address: str, model: str, rows: int, dim: int, clients: int, seconds: float):
    z = np.random.default_rng(0).standard_normal((rows, dim), dtype=np.float32)
    request = pb.ModelInferRequest(model_name=f"{model}-decoder")
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "latent", "FP32"
    tensor.shape.extend([rows, dim])
    request.raw_input_contents.append(z.tobytes())
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def call() -> None:
            await stub.ModelInfer(request)

        return await closed_loop(call, clients, rows, seconds)


async def png_latency(http_url: str, address: str, model: str, calls: int) -> dict[str, float]:
    """p50 ms of GET sample?count=64 (PNG grid) and of gRPC Sample(64) + grid_png on the client."""
    async with aiohttp.ClientSession() as session:
        http = []
        for seed in range(calls):
            start = time.perf_counter()
            url = f"{http_url}/v1/models/{model}/sample?count=64&seed={seed}"
            async with session.get(url) as response:
                await response.read()
            http.append(time.perf_counter() - start)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        grpc_times = []
        for seed in range(calls):
            start = time.perf_counter()
            reply = await stub.Sample(
                vae_pb2.SampleRequest(model=vae_pb2.ModelRef(name=model), count=64, seed=seed)
            )
            grid_png(tensor_to_numpy(reply.images), 8)
            grpc_times.append(time.perf_counter() - start)
    return {
        "http_png_p50_ms": round(statistics.median(http) * 1000, 2),
        "grpc_sample_plus_png_p50_ms": round(statistics.median(grpc_times) * 1000, 2),
    }


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(stack: str, repository: str) -> tuple[subprocess.Popen, int, int]:
    port, http_port = free_port(), free_port()
    command = [sys.executable, __file__, "--serve", stack, "--repository", repository,
               "--port", str(port), "--http-port", str(http_port)]  # fmt: skip
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process, port, http_port


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    dim = json.loads((Path(args.repository) / args.model / "1" / "model.json").read_text())[
        "latent_dim"
    ]
    servers = {stack: start(stack, args.repository) for stack in ("aiohttp", "uvicorn")}
    rounds: dict[str, list[float]] = {}
    try:
        for _ in range(args.rounds):
            for clients, rows in args.shapes:
                shape = f"{clients}x{rows}"
                for stack, (_, _, http_port) in servers.items():
                    url = f"http://127.0.0.1:{http_port}/v2/models/{args.model}-decoder/infer"
                    for fmt in ("binary", "json"):
                        body, headers = infer_body(rows, dim, fmt == "binary")
                        rate = await http_load(url, body, headers, clients, rows, args.seconds)
                        rounds.setdefault(f"{stack} {fmt} {shape}", []).append(rate)
                port = servers["uvicorn"][1]
                rate = await grpc_load(
                    f"127.0.0.1:{port}", args.model, rows, dim, clients, args.seconds
                )
                rounds.setdefault(f"grpc-v2 raw {shape}", []).append(rate)
        _, port, http_port = servers["uvicorn"]
        png = await png_latency(
            f"http://127.0.0.1:{http_port}", f"127.0.0.1:{port}", args.model, 40
        )
    finally:
        for process, _, _ in servers.values():
            assert process.stdin is not None
            process.stdin.close()
            process.wait(30)
    medians = {key: round(statistics.median(values), 1) for key, values in rounds.items()}
    ratios = {}
    for clients, rows in args.shapes:
        shape = f"{clients}x{rows}"
        for fmt in ("binary", "json"):
            ratios[f"uvicorn/aiohttp {fmt} {shape}"] = round(
                medians[f"uvicorn {fmt} {shape}"] / medians[f"aiohttp {fmt} {shape}"], 2
            )
            for stack in ("uvicorn", "aiohttp"):
                ratios[f"{stack} {fmt}/grpc-v2 {shape}"] = round(
                    medians[f"{stack} {fmt} {shape}"] / medians[f"grpc-v2 raw {shape}"], 2
                )
    return {"samples_per_s_median": medians, "rounds": rounds, "ratios": ratios, "png": png}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", default="model_repository")
    parser.add_argument("--model", default="fashion-mlp-vae")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--shapes",
        type=lambda text: tuple(
            tuple(int(n) for n in item.split("x")) for item in text.split(",") if item
        ),
        default=SHAPES,
        help="CLIENTSxROWS,...: concurrent clients and rows per request (default 1x64,64x8); "
        "64x1 is one image per call at 64 calls in flight",
    )
    parser.add_argument("--serve", choices=("aiohttp", "uvicorn"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--http-port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.repository, args.port, args.http_port)
        return
    load_before = os.getloadavg()
    result = asyncio.run(measure(args))
    result["load_average_before"] = [round(x, 2) for x in load_before]
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result["date"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

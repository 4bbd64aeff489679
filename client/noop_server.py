"""A no-op VaeService: answers Sample with ready-made zero images, to measure the transport's ceiling."""

from __future__ import annotations

import argparse
import asyncio
import functools
import signal
import sys
import threading
from concurrent import futures

import grpc
import numpy as np

from server.codecs import tensor_to_proto
from server.proto_gen.vae.v1 import vae_pb2, vae_pb2_grpc


@functools.lru_cache(maxsize=16)
def _response_for(count: int, uint8: bool) -> vae_pb2.SampleResponse:
    """The size a real 28x28, 20-latent Sample answer has, so the transport moves the same bytes."""
    if uint8:
        images = vae_pb2.Tensor(
            shape=[count, 1, 28, 28], data=bytes(count * 784), dtype=vae_pb2.DATA_TYPE_UINT8
        )
    else:
        images = tensor_to_proto(np.zeros((count, 1, 28, 28), dtype=np.float32))
    return vae_pb2.SampleResponse(
        images=images,
        latents=tensor_to_proto(np.zeros((count, 20), dtype=np.float32)),
        model=vae_pb2.ModelRef(name="noop", version=1),
    )


def _response(request: vae_pb2.SampleRequest) -> vae_pb2.SampleResponse:
    return _response_for(request.count, request.format == vae_pb2.IMAGE_FORMAT_UINT8)


def _info() -> vae_pb2.ModelInfo:
    return vae_pb2.ModelInfo(
        name="noop", version=1, latent_dim=20, image_shape=[1, 28, 28], execution_provider="none"
    )


class NoopServicer(vae_pb2_grpc.VaeServiceServicer):
    def Sample(self, request, context):
        return _response(request)

    def GetModelInfo(self, request, context):
        return _info()


class AsyncNoopServicer(vae_pb2_grpc.VaeServiceServicer):
    async def Sample(self, request, context):
        return _response(request)

    async def GetModelInfo(self, request, context):
        return _info()


OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
]


def serve_threaded(port: int, workers: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=OPTIONS)
    vae_pb2_grpc.add_VaeServiceServicer_to_server(NoopServicer(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"noop: listening on 127.0.0.1:{bound} (threaded, {workers} workers)", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(1).wait()


async def serve_aio(port: int) -> None:
    server = grpc.aio.server(options=OPTIONS)
    vae_pb2_grpc.add_VaeServiceServicer_to_server(AsyncNoopServicer(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"noop: listening on 127.0.0.1:{bound} (grpc.aio)", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vae-noop-server", description=__doc__)
    parser.add_argument("--port", type=int, default=50052)
    parser.add_argument("--transport", choices=("threaded", "aio"), default="threaded")
    parser.add_argument("--workers", type=int, default=128)
    args = parser.parse_args(argv)
    if args.transport == "aio":
        asyncio.run(serve_aio(args.port))
    else:
        serve_threaded(args.port, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())

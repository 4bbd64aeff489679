"""Container health check: ask vae-serve's grpc.health.v1 service; exit 0 when SERVING, else 1.

The images' HEALTHCHECK runs this (Kubernetes uses its native gRPC probes instead). It needs only
grpcio and grpcio-health-checking, which the serving image has, and reads the variables the server
reads: VAE_PORT for the port. The service asked for is "vae.v1.VaeService", which the server reports
SERVING once every model is loaded and warmed up, and NOT_SERVING from the moment it starts draining.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_PORT = 50051  # vae-serve's own default (tests/test_deploy_docker.py holds them together)
DEFAULT_SERVICE = "vae.v1.VaeService"  # the name server.app.SERVICE_NAME reports


def check(address: str, service: str, timeout: float) -> bool:
    """True when the server at `address` reports `service` SERVING within `timeout` seconds."""
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
    except grpc.RpcError as exc:
        print(f"unhealthy: {address} {service!r}: {exc.code().name}: {exc.details()}")
        return False
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{address} {service!r}: {status}")
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def build_parser() -> argparse.ArgumentParser:
    port = os.environ.get("VAE_PORT", str(DEFAULT_PORT))
    parser = argparse.ArgumentParser(prog="healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--address",
        default=f"127.0.0.1:{port}",
        help="host:port of the gRPC server (default: loopback and $VAE_PORT)",
    )
    parser.add_argument("--service", default=DEFAULT_SERVICE, help="grpc.health.v1 service name")
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds to wait for a reply")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return 0 if check(args.address, args.service, args.timeout) else 1


if __name__ == "__main__":
    sys.exit(main())

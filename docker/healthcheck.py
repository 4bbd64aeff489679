"""Container health check: ask vae-serve's grpc.health.v1 service; exit 0 when SERVING, else 1.

The images' HEALTHCHECK runs this (Kubernetes uses its native gRPC probes instead). It needs only
grpcio and grpcio-health-checking, which the serving image has, and reads the variables the server
reads to find a port that speaks plaintext: VAE_HEALTH_PORT (vae-serve's health-only listener; on at
50052 by default when VAE_TLS_CERT is set), else VAE_PORT. The service asked for is
"vae.v1.VaeService", which the server reports SERVING once every model is loaded and warmed up, and
NOT_SERVING from the moment it starts draining. Docker reserves exit status 2, so every failure,
a bad variable included, exits 1 with one line saying why.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# vae-serve's own defaults (tests/test_deploy_docker.py holds them together): the gRPC port, and
# the health listener's port when TLS is on (server.process.settings.DEFAULT_HEALTH_PORT).
DEFAULT_PORT = 50051
DEFAULT_HEALTH_PORT = 50052
DEFAULT_SERVICE = "vae.v1.VaeService"  # the name server.process.app.SERVICE_NAME reports


class ConfigError(ValueError):
    """The server's variables do not name a plaintext port to ask."""


def _port(environ: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = environ.get(name, "").strip()
    if not raw:  # unset or empty: the server's default, as vae-serve reads it
        return default
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigError(f"{name}={raw!r}: expected an integer from 0 to 65535")
    return port


def plaintext_port(environ: Mapping[str, str]) -> int:
    """The port where vae-serve, configured by `environ`, answers health checks in plaintext."""
    tls = bool(environ.get("VAE_TLS_CERT", "").strip())
    health = _port(environ, "VAE_HEALTH_PORT", None)
    if health is None:
        health = DEFAULT_HEALTH_PORT if tls else 0
    if health:
        return health
    if tls:
        raise ConfigError(
            "VAE_HEALTH_PORT=0 turns the plaintext health listener off and the gRPC port speaks "
            "TLS: nothing answers a plaintext check; set VAE_HEALTH_PORT to a port, or pass --address"
        )
    port = _port(environ, "VAE_PORT", DEFAULT_PORT)
    assert port is not None
    return port


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
    parser = argparse.ArgumentParser(prog="healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--address",
        default=None,
        help="host:port to ask (default: loopback and $VAE_HEALTH_PORT, else $VAE_PORT)",
    )
    parser.add_argument("--service", default=DEFAULT_SERVICE, help="grpc.health.v1 service name")
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds to wait for a reply")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    address = args.address
    if address is None:
        try:
            address = f"127.0.0.1:{plaintext_port(os.environ)}"
        except ConfigError as exc:
            print(f"unhealthy: {exc}")
            return 1
    return 0 if check(address, args.service, args.timeout) else 1


if __name__ == "__main__":
    sys.exit(main())

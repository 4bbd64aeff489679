"""TLS and mutual-TLS server credentials from PEM files."""

from __future__ import annotations

from pathlib import Path

import grpc


class TlsConfigError(ValueError):
    """The TLS flags are inconsistent or name unreadable files."""


def _read(flag: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"{flag} {path!r} cannot be read: {exc.strerror}") from exc


def server_credentials(cert: str, key: str, client_ca: str = "") -> grpc.ServerCredentials | None:
    """None for plaintext (no cert and no key); TLS with both; mTLS when `client_ca` is also set."""
    if not cert and not key:
        if client_ca:
            raise TlsConfigError("--tls-client-ca needs --tls-cert and --tls-key as well")
        return None
    if not (cert and key):
        raise TlsConfigError("set both --tls-cert and --tls-key (PEM files), or neither")
    pair = (_read("--tls-key", key), _read("--tls-cert", cert))
    if client_ca:
        return grpc.ssl_server_credentials(
            [pair], root_certificates=_read("--tls-client-ca", client_ca), require_client_auth=True
        )
    return grpc.ssl_server_credentials([pair])

"""TLS and mutual-TLS server credentials from PEM files."""

from __future__ import annotations

import ssl
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


def ssl_context(cert: str, key: str, client_ca: str = "") -> ssl.SSLContext | None:
    """The HTTP front's TLS from the same flags: None for plaintext; clients must present a
    certificate `client_ca` signed when it is set (mTLS)."""
    if server_credentials(cert, key, client_ca) is None:  # the same checks and messages
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
        if client_ca:
            context.load_verify_locations(client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except ssl.SSLError as exc:
        raise TlsConfigError(
            f"--tls-cert {cert!r} and --tls-key {key!r} do not make a usable pair, or "
            f"--tls-client-ca is not PEM: {exc.reason or exc}"
        ) from exc
    context.set_alpn_protocols(["http/1.1"])
    return context

"""What a failed call means, in one line that says what to check: gRPC's connection and TLS errors
("Socket closed", "Hostname Verification Check failed", "WRONG_VERSION_NUMBER") in the user's terms.

The server's own refusals (INVALID_ARGUMENT, NOT_FOUND, ...) already say what was wrong and what is
allowed, so they pass through as `CODE: details`; only failures to reach the server, to agree on TLS
with it, or to hear from it in time are reworded, each naming the flag that fixes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc


@dataclass(frozen=True)
class Connection:
    """How the client tried to reach the server: the address and the TLS files it was given."""

    address: str
    tls_ca: str = ""
    tls_cert: str = ""
    timeout: float = 30.0

    @property
    def host(self) -> str:
        host = self.address.rsplit(":", 1)[0] if not self.address.endswith("]") else self.address
        return host.removeprefix("[").removesuffix("]")


def explain(error: grpc.RpcError, connection: Connection) -> str:
    """One line for a failed call: what happened and what to check."""
    code: grpc.StatusCode = error.code()
    details = error.details() or ""
    at = connection.address
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return (
            f"no answer from {at} within --timeout {connection.timeout:g} s: the server may be "
            "busy or unreachable; raise --timeout or ask fewer images per call"
        )
    if code != grpc.StatusCode.UNAVAILABLE or "failed to connect" not in details:
        return f"{code.name}: {details}"  # the server's own message, or an unforeseen failure
    if "Connection refused" in details:
        return (
            f"nothing accepts connections at {at}: is vae-serve running there, on that port? "
            "(--address host:port; the server's default port is 50051)"
        )
    if "DNS resolution failed" in details or "Name or service not known" in details:
        return f"cannot resolve the host name in --address {at}: check its spelling"
    if "WRONG_VERSION_NUMBER" in details:
        return (
            f"{at} answered TLS with plaintext: that server does not use TLS; drop --tls-ca "
            "(and --tls-cert, --tls-key), or give vae-serve --tls-cert and --tls-key"
        )
    if "Hostname Verification Check failed" in details:
        return (
            f"the certificate of {at} is not issued for the host {connection.host!r}: connect by a "
            "name the certificate holds (its subject alternative names), e.g. the one the server's "
            "certificate was made for"
        )
    if "CERTIFICATE_VERIFY_FAILED" in details:
        return (
            f"the certificate of {at} is not signed by --tls-ca {connection.tls_ca}: pass the CA "
            "certificate that signed the server's certificate"
        )
    if "Socket closed" in details or "Connection reset" in details:
        if not connection.tls_ca:
            return (
                f"{at} closed the connection: the server probably uses TLS; pass --tls-ca with the "
                "CA certificate that signed its certificate"
            )
        if not connection.tls_cert:
            return (
                f"{at} closed the TLS connection: the server probably requires a client "
                "certificate (mutual TLS); pass --tls-cert and --tls-key"
            )
        return (
            f"{at} refused the client certificate --tls-cert {connection.tls_cert}: it must be "
            "signed by the CA the server trusts (its --tls-client-ca) and allow client "
            "authentication (extendedKeyUsage clientAuth)"
        )
    last = details.rpartition("last error: ")[2] or details
    return f"cannot reach {at}: {last}"

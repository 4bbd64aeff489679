"""TLS and mutual TLS from PEM files made at test time with the openssl command."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from client.api import VaeClient
from server.fronts.tls import TlsConfigError, server_credentials
from tests.server_helpers import running_server, settings

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _issue(name: str, cwd: Path, extension: str) -> None:
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=cwd)  # fmt: skip
    (cwd / f"{name}.ext").write_text(extension)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext",
             cwd=cwd)  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.pem", "-days", "1", "-subj", "/CN=test-ca", cwd=d)  # fmt: skip
    _issue("server", d, "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _issue("client", d, "extendedKeyUsage=clientAuth\n")
    return Pki(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key")


def _info(port: int, **tls: str) -> str:
    with VaeClient(f"localhost:{port}", timeout=10, **tls) as client:
        return client.info("tiny-vae").name


@pytest.fixture(scope="module")
def tls_server(repository: Path, pki: Pki):
    config = settings(repository, tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))
    with running_server(config) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_server(repository: Path, pki: Pki):
    config = settings(
        repository,
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca),
    )
    with running_server(config) as server:
        yield server


def test_a_client_trusting_the_ca_connects_over_tls(tls_server, pki):
    assert _info(tls_server.port, tls_ca=str(pki.ca)) == "tiny-vae"


def test_a_plaintext_client_cannot_talk_to_a_tls_server(tls_server):
    with pytest.raises(grpc.RpcError) as refused:
        _info(tls_server.port)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_with_a_certificate_connects_over_mtls(mtls_server, pki):
    tls = {"tls_ca": str(pki.ca), "tls_cert": str(pki.client_cert), "tls_key": str(pki.client_key)}
    assert _info(mtls_server.port, **tls) == "tiny-vae"


def test_a_client_without_a_certificate_is_refused_by_mtls(mtls_server, pki):
    with pytest.raises(grpc.RpcError) as refused:
        _info(mtls_server.port, tls_ca=str(pki.ca))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_key_without_a_certificate_is_a_configuration_error(pki):
    with pytest.raises(TlsConfigError, match="set both --tls-cert and --tls-key"):
        server_credentials("", str(pki.server_key))

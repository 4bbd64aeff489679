"""TLS and mutual TLS from PEM files made at test time with the openssl command."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from client.api import VaeClient
from server.fronts.tls import TlsConfigError, server_credentials
from tests.pki import Pki, make_pki
from tests.server_helpers import running_server, settings


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


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

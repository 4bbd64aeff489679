"""What a new user of vae-client hits, each answered in one line that says what to check: a missing
input file, an address without a port, connection and TLS mistakes against real loopback servers,
bad TLS files; and `info` prints numbers as numbers, `--label` means the same on every command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from client import api as client_api
from client.api import DEFAULT_PORT, with_default_port
from client.cli import build_parser
from client.cli import main as vae_client
from server.process.settings import Settings
from tests.conftest import free_port
from tests.pki import Pki, _issue, make_pki
from tests.server_helpers import running_server, settings

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


def client(*argv: str) -> subprocess.CompletedProcess:
    """vae-client as a user runs it: its own process, so gRPC's C-core logging shows on stderr too
    (a GRPC_VERBOSITY of the machine running the tests is left out)."""
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("VAE_", "GRPC_VERBOSITY"))
    }
    return subprocess.run(
        [str(BIN / "vae-client"), *argv], capture_output=True, text=True, timeout=120,
        cwd=ROOT, env=environment,
    )  # fmt: skip


def one_line(result: subprocess.CompletedProcess, status: int) -> str:
    assert (result.returncode, len(result.stderr.splitlines())) == (status, 1), result.stderr
    return result.stderr.strip()


# -------------------------------------------------------------------------------- input files


def test_encoding_a_missing_file_names_it_in_one_line(live_server, capsys):
    assert vae_client(["--address", live_server.address, "encode", "nothere.png"]) == 2
    assert capsys.readouterr().err == "vae-client encode: nothere.png: no such file\n"


def test_a_file_that_is_no_image_is_named_in_one_line(live_server, tmp_path, capsys):
    (tmp_path / "notes.png").write_text("not an image")
    argv = ["--address", live_server.address, "--model", "tiny-vae", "encode"]
    assert vae_client([*argv, str(tmp_path / "notes.png")]) == 2
    assert "notes.png: not an image file Pillow can read" in capsys.readouterr().err


def test_decoding_a_missing_array_names_it_in_one_line(live_server, capsys):
    assert vae_client(["--address", live_server.address, "decode", "nothere.npy"]) == 2
    assert capsys.readouterr().err == "vae-client decode: nothere.npy: no such file\n"


# ---------------------------------------------------------------------------- the address's port


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("localhost", f"localhost:{DEFAULT_PORT}"),
        ("localhost:6000", "localhost:6000"),
        ("10.0.0.7", f"10.0.0.7:{DEFAULT_PORT}"),
        ("[::1]", f"[::1]:{DEFAULT_PORT}"),
        ("[::1]:6000", "[::1]:6000"),
        ("::1", f"[::1]:{DEFAULT_PORT}"),
        ("unix:/tmp/vae.sock", "unix:/tmp/vae.sock"),
        ("dns:///vae.example:443", "dns:///vae.example:443"),
    ],
)
def test_an_address_without_a_port_gets_the_servers_default(given, used):
    assert with_default_port(given) == used


def test_the_clients_default_port_is_the_servers():
    assert Settings().port == DEFAULT_PORT


def test_vae_client_without_a_port_reaches_the_server_on_the_default_port(
    live_server, monkeypatch, capsys
):
    """The server's default port may be taken on the machine running the tests, so the default is
    pointed at the live server's port: what is tested is that a port-less address gets it."""
    port = int(live_server.address.rpartition(":")[2])
    monkeypatch.setattr(client_api, "DEFAULT_PORT", port)
    assert vae_client(["--address", "127.0.0.1", "--model", "tiny-vae", "info"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "tiny-vae"


# ------------------------------------------------------------------------- connection and TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    pki = make_pki(folder)
    # A server certificate for another host name only: the client connects as localhost.
    _issue("other", folder, "subjectAltName=DNS:other.example\nextendedKeyUsage=serverAuth\n")
    return pki


@pytest.fixture(scope="module")
def servers(repository, pki):
    """Plaintext, TLS, mutual TLS, and TLS with a certificate for another host: their ports."""
    configs = {
        "plain": settings(repository),
        "tls": settings(repository, tls_cert=str(pki.server_cert), tls_key=str(pki.server_key)),
        "mtls": settings(
            repository,
            tls_cert=str(pki.server_cert),
            tls_key=str(pki.server_key),
            tls_client_ca=str(pki.ca),
        ),
        "other": settings(
            repository,
            tls_cert=str(pki.ca.parent / "other.pem"),
            tls_key=str(pki.ca.parent / "other.key"),
        ),
    }
    from contextlib import ExitStack

    with ExitStack() as stack:
        yield {name: stack.enter_context(running_server(c)).port for name, c in configs.items()}


def test_nothing_listening_asks_whether_the_server_runs_on_that_port():
    line = one_line(client("--address", f"127.0.0.1:{free_port()}", "info"), 1)
    assert "nothing accepts connections" in line and "is vae-serve running there" in line


def test_plaintext_to_a_tls_server_says_to_pass_tls_ca(servers):
    line = one_line(client("--address", f"localhost:{servers['tls']}", "info"), 1)
    assert "probably uses TLS; pass --tls-ca" in line and "Socket closed" not in line


def test_tls_to_a_plaintext_server_says_it_does_not_use_tls_and_logs_nothing_else(servers, pki):
    result = client("--address", f"localhost:{servers['plain']}", "--tls-ca", str(pki.ca), "info")
    line = one_line(result, 1)  # no C-core "Handshake failed ... WRONG_VERSION_NUMBER" line before
    assert "does not use TLS; drop --tls-ca" in line and "WRONG_VERSION_NUMBER" not in line


def test_a_certificate_for_another_host_says_the_host_names_differ(servers, pki):
    line = one_line(
        client("--address", f"localhost:{servers['other']}", "--tls-ca", str(pki.ca), "info"), 1
    )
    assert "not issued for the host 'localhost'" in line and "Hostname Verification" not in line


def test_a_server_certificate_from_another_ca_says_to_pass_its_ca(servers, pki):
    wrong_ca = str(pki.client_cert)  # a certificate, but not the CA that signed the server's
    line = one_line(
        client("--address", f"localhost:{servers['tls']}", "--tls-ca", wrong_ca, "info"), 1
    )
    assert f"not signed by --tls-ca {wrong_ca}" in line


def test_mutual_tls_without_a_client_certificate_says_to_pass_one(servers, pki):
    line = one_line(
        client("--address", f"localhost:{servers['mtls']}", "--tls-ca", str(pki.ca), "info"), 1
    )
    assert "requires a client certificate" in line and "--tls-cert and --tls-key" in line


def test_mutual_tls_with_a_certificate_it_does_not_accept_says_why(servers, pki):
    other = pki.ca.parent
    result = client(
        "--address", f"localhost:{servers['mtls']}", "--tls-ca", str(pki.ca),
        "--tls-cert", str(other / "other.pem"), "--tls-key", str(other / "other.key"), "info",
    )  # fmt: skip
    assert "refused the client certificate" in one_line(result, 1)


def test_the_right_files_still_connect(servers, pki):
    tls = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert)]
    result = client(
        "--address", f"localhost:{servers['mtls']}", *tls, "--tls-key", str(pki.client_key),
        "--model", "tiny-vae", "info",
    )  # fmt: skip
    assert result.returncode == 0 and json.loads(result.stdout)["name"] == "tiny-vae"


def test_a_passed_deadline_says_which_timeout(live_server):
    line = one_line(client("--address", live_server.address, "--timeout", "1e-6", "info"), 1)
    assert "within --timeout 1e-06 s" in line


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--tls-ca", "nothere.pem"], "--tls-ca nothere.pem: cannot read it"),
        (["--tls-ca", "README.md"], "--tls-ca README.md: not a PEM file"),
        (["--tls-ca", "{ca}", "--tls-cert", "{cert}"], "give both --tls-cert and --tls-key"),
        (["--tls-cert", "{cert}", "--tls-key", "{key}"], "give the CA that signed"),
    ],
)
def test_unusable_tls_files_are_named_before_any_call(pki, flags, words):
    files = {"ca": pki.ca, "cert": pki.client_cert, "key": pki.client_key}
    argv = [f.format(**files) for f in flags]
    assert words in one_line(client("--address", "localhost:1", *argv, "info"), 2)


def test_the_server_s_own_refusals_keep_their_message(live_server, capsys):
    assert vae_client(["--address", live_server.address, "--model", "nope", "info"]) == 1
    assert "NOT_FOUND: unknown model 'nope'" in capsys.readouterr().err


# ------------------------------------------------------------------------------ info, --label


def test_info_prints_numbers_as_numbers(live_server, capsys):
    assert vae_client(["--address", live_server.address, "--model", "tiny-cvae", "info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert all(isinstance(info[k], int) for k in ("version", "latent_dim", "num_classes", "opset"))
    assert info["image_shape"] == [1, 28, 28] and info["num_classes"] == 10
    assert isinstance(info["metrics"]["test_elbo"], float)


@pytest.mark.parametrize("command", ["sample", "interpolate", "encode", "decode"])
def test_every_command_takes_label_and_explains_it(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--label" in help_text and "conditional (cvae) models" in help_text
    assert "[VAE_LABEL]" in help_text


def test_encode_and_decode_take_one_label_for_every_row_or_one_per_row(live_server, tmp_path):
    images = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    np.save(tmp_path / "images.npy", images)
    common = ["--address", live_server.address, "--model", "tiny-cvae"]
    latents = tmp_path / "z.npy"
    encode = [*common, "encode", str(tmp_path / "images.npy"), "-o", str(latents)]
    assert vae_client([*encode, "--label", "3"]) == 0
    one_label = np.load(latents)
    assert vae_client([*encode, "--label", "3", "3", "3"]) == 0
    assert np.array_equal(np.load(latents), one_label)
    assert vae_client([*encode, "--labels", "3", "3", "3"]) == 0  # the old spelling still works
    assert vae_client([*encode, "--label", "1", "2"]) == 2  # neither one nor one per row
    decode = [*common, "decode", str(latents), "--label", "3", "-o", str(tmp_path / "d.png")]
    assert vae_client(decode) == 0 and (tmp_path / "d.png").stat().st_size > 0

"""vae-client against the live server: PNG grids, .npy output, encode/decode files, info."""

import json

import numpy as np
from PIL import Image

from client.cli import main


def client(live_server, *args):
    return main(["--address", live_server.address, "--model", "tiny-vae", *args])


def test_sample_writes_a_png_grid(live_server, tmp_path):
    out = tmp_path / "samples.png"
    assert client(live_server, "sample", "--count", "16", "--seed", "1", "-o", str(out)) == 0
    image = Image.open(out)
    assert image.size == (8 * 30 + 2, 2 * 30 + 2)  # 8 columns of 28 px + 2 px padding, 2 rows


def test_sample_as_npy_holds_the_images(live_server, tmp_path):
    out = tmp_path / "samples.npy"
    assert client(live_server, "sample", "--count", "3", "--format", "npy", "-o", str(out)) == 0
    assert np.load(out).shape == (3, 1, 28, 28)


def test_encode_then_decode_files(live_server, tmp_path):
    images = tmp_path / "images.npy"
    np.save(images, np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32))
    latents = tmp_path / "latents.npy"
    assert client(live_server, "encode", str(images), "-o", str(latents)) == 0
    assert np.load(latents).shape == (2, 8)
    decoded = tmp_path / "decoded.npy"
    assert client(live_server, "decode", str(latents), "--format", "npy", "-o", str(decoded)) == 0
    assert np.load(decoded).shape == (2, 1, 28, 28)


def test_interpolate_writes_one_row_of_steps(live_server, tmp_path):
    out = tmp_path / "path.png"
    assert (
        client(live_server, "interpolate", "--steps", "6", "--method", "spherical", "-o", str(out))
        == 0
    )
    assert Image.open(out).size == (6 * 30 + 2, 30 + 2)


def test_info_prints_json(live_server, capsys):
    assert client(live_server, "info") == 0
    assert json.loads(capsys.readouterr().out)["latent_dim"] == 8  # a number, not "8"


def test_server_errors_exit_non_zero_with_the_status(live_server, capsys):
    assert client(live_server, "sample", "--count", "100000") == 1
    assert "RESOURCE_EXHAUSTED" in capsys.readouterr().err


def test_scale_enlarges_each_pixel(live_server, tmp_path):
    out = tmp_path / "big.png"
    assert client(live_server, "sample", "--count", "1", "--scale", "3", "-o", str(out)) == 0
    assert Image.open(out).size == (84 + 4, 84 + 4)  # one 84 px image plus 2 px padding each side

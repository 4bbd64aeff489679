"""The preprocessing a model was trained with travels in model.json and GetModelInfo, and vae-client
applies it: a face photo is centre-cropped and resized as training did, not squashed to 64x64."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from client.api import VaeClient
from client.cli import main as vae_client
from export.pipeline import export_checkpoint
from server.preprocessing import Preprocessing, prepare_image
from server.repository import ModelMetadata, RepositoryError, read_metadata
from tests.conftest import CELEBA_SAMPLE
from tests.server_helpers import running_server, settings
from tests.test_export_models import tiny_model, train_and_save
from training.images import celeba_transform

FACES = sorted(CELEBA_SAMPLE.glob("*.jpg"))[:4]


@pytest.fixture(scope="module")
def face_repository(tmp_path_factory, mnist_dir) -> Path:
    """A face VAE (3x64x64) whose checkpoint says it was trained on celeba, exported."""
    if not FACES:
        pytest.fail(f"test data missing: {CELEBA_SAMPLE} (set VAE_SHARED_DATA)")
    model = tiny_model("face", "vae")
    assert tuple(model.config.image_shape) == (3, 64, 64)
    checkpoint = train_and_save(model, mnist_dir, tmp_path_factory.mktemp("runs") / "faces")
    repository = tmp_path_factory.mktemp("repo")
    result = export_checkpoint(checkpoint, repository, data_dir=mnist_dir)
    assert result.status == "exported", result.detail
    return repository


def test_export_records_how_training_read_the_images(face_repository, repository):
    faces = read_metadata(face_repository / "faces" / "1").preprocessing
    digits = read_metadata(repository / "tiny-vae" / "1").preprocessing
    assert faces == Preprocessing(center_crop=148, resample="bilinear")
    assert digits == Preprocessing()  # MNIST is read as it is: resize only (a no-op at 28x28)
    written = json.loads((face_repository / "faces" / "1" / "model.json").read_text())
    assert written["preprocessing"] == {"center_crop": 148, "resample": "bilinear"}


@pytest.mark.parametrize("face", FACES, ids=lambda p: p.name)
def test_prepare_image_gives_exactly_the_pixels_training_saw(face):
    with Image.open(face) as image:
        trained_on = celeba_transform()(image.convert("RGB")).numpy()
        prepared = prepare_image(image, Preprocessing(148, "bilinear"), (3, 64, 64))
    assert prepared.dtype == np.float32 and np.array_equal(prepared, trained_on)


@pytest.mark.parametrize("size", [(100, 101), (101, 100), (60, 200), (148, 148)])
def test_images_smaller_than_the_crop_are_padded_as_training_pads_them(size):
    pixels = np.random.default_rng(sum(size)).integers(0, 256, (size[1], size[0], 3), np.uint8)
    image = Image.fromarray(pixels)
    trained_on = celeba_transform()(image).numpy()
    assert np.array_equal(
        prepare_image(image, Preprocessing(148, "bilinear"), (3, 64, 64)), trained_on
    )


def test_a_model_json_without_preprocessing_means_resize_only_as_before(repository, tmp_path):
    version = tmp_path / "tiny-vae" / "1"
    shutil.copytree(repository / "tiny-vae" / "1", version)
    data = json.loads((version / "model.json").read_text())
    del data["preprocessing"]
    (version / "model.json").write_text(json.dumps(data))
    assert read_metadata(version).preprocessing == Preprocessing()
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30), np.uint8))
    before = np.asarray(photo.resize((28, 28)), dtype=np.float32)[None] / 255.0  # the old client
    assert np.array_equal(prepare_image(photo, Preprocessing(), (1, 28, 28)), before)


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({"center_crop": -1}, "center_crop must be an integer >= 0"),
        ({"center_crop": "148"}, "center_crop must be an integer"),
        ({"resample": "cubic"}, "resample 'cubic' is not one of nearest, bilinear"),
        ({"crop": 148}, "unknown fields ['crop']"),
        ([148], "must be an object"),
    ],
)
def test_a_malformed_preprocessing_entry_is_refused_naming_it(repository, entry, words):
    data = json.loads((repository / "tiny-vae" / "1" / "model.json").read_text())
    with pytest.raises(RepositoryError, match=r"preprocessing") as refused:
        ModelMetadata.from_dict({**data, "preprocessing": entry})
    assert words in str(refused.value)


def test_vae_client_encodes_a_photo_as_the_model_saw_its_training_faces(
    face_repository, tmp_path, capsys
):
    with running_server(settings(face_repository)) as server:
        address = f"127.0.0.1:{server.port}"
        output = tmp_path / "latents.npy"
        argv = ["--address", address, "encode", str(FACES[0]), "-o", str(output)]
        assert vae_client(argv) == 0, capsys.readouterr().err
        with Image.open(FACES[0]) as image:
            trained_on = celeba_transform()(image.convert("RGB")).numpy()[None]
        with VaeClient(address) as client:
            info = client.info("faces")
            expected, _ = client.encode(trained_on, model="faces")
    assert (info.preprocessing.center_crop, info.preprocessing.resample) == (148, "bilinear")
    assert np.array_equal(np.load(output), expected)

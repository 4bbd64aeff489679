"""The model repository format: names, versions, model.json validation, path safety."""

import json
from pathlib import Path

import pytest

from server.repository import (
    ModelMetadata,
    RepositoryError,
    list_versions,
    read_metadata,
    validate_model_name,
    version_dir,
)


def _metadata(**overrides) -> ModelMetadata:
    fields = dict(
        name="m",
        version=1,
        kind="vae",
        latent_dim=4,
        image_shape=(1, 28, 28),
        likelihood="bernoulli",
    )
    fields.update(overrides)
    return ModelMetadata(**fields)


def _write_version(root: Path, name: str, version: str, meta: ModelMetadata | None) -> Path:
    directory = root / name / version
    directory.mkdir(parents=True)
    (directory / "encoder.onnx").write_bytes(b"x")
    (directory / "decoder.onnx").write_bytes(b"x")
    if meta is not None:
        (directory / "model.json").write_text(meta.to_json())
    return directory


@pytest.mark.parametrize("name", ["fashion-vae", "a", "m.v2_final", "A1"])
def test_valid_model_names_are_accepted(name):
    assert validate_model_name(name) == name


@pytest.mark.parametrize("name", ["", "..", "../etc", "a/b", ".hidden", "a..b", "x" * 65, "sp ace"])
def test_unsafe_model_names_are_refused_with_the_rule(name):
    with pytest.raises(RepositoryError, match="letters, digits"):
        validate_model_name(name)


def test_metadata_round_trips_through_json():
    meta = _metadata(metrics={"test_elbo": -100.5}, num_classes=0)
    assert ModelMetadata.from_dict(json.loads(meta.to_json())) == meta


def test_metadata_with_unknown_kind_is_refused():
    with pytest.raises(RepositoryError, match="kind 'gan' is not one of"):
        _metadata(kind="gan").validate()


def test_conditional_kind_needs_classes():
    with pytest.raises(RepositoryError, match="num_classes must be positive"):
        _metadata(kind="cvae", num_classes=0).validate()


def test_newer_format_version_asks_for_an_upgrade():
    with pytest.raises(RepositoryError, match="upgrade the server"):
        _metadata(format_version=99).validate()


def test_list_versions_skips_temporary_and_non_numeric_directories(tmp_path):
    for version in ("1", "3", "10", ".tmp-export-abc", "latest", "007"):
        (tmp_path / "m" / version).mkdir(parents=True)
    assert list_versions(tmp_path / "m") == [1, 3, 10]


def test_read_metadata_reports_a_missing_graph(tmp_path):
    directory = _write_version(tmp_path, "m", "1", _metadata())
    (directory / "decoder.onnx").unlink()
    with pytest.raises(RepositoryError, match=r"missing decoder\.onnx"):
        read_metadata(directory)


def test_read_metadata_reports_invalid_json(tmp_path):
    directory = _write_version(tmp_path, "m", "1", None)
    (directory / "model.json").write_text("{not json")
    with pytest.raises(RepositoryError, match="not valid JSON"):
        read_metadata(directory)


def test_read_metadata_refuses_a_version_that_names_another_location(tmp_path):
    directory = _write_version(tmp_path, "m", "2", _metadata(version=1))
    with pytest.raises(RepositoryError, match="says m/1 but lives in m/2"):
        read_metadata(directory)


def test_version_dir_refuses_names_that_escape(tmp_path):
    with pytest.raises(RepositoryError):
        version_dir(tmp_path, "../outside", 1)


def test_version_dir_refuses_a_symlinked_model_leaving_the_repository(tmp_path):
    outside = tmp_path / "outside"
    (outside / "1").mkdir(parents=True)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "linked").symlink_to(outside)
    with pytest.raises(RepositoryError, match="outside the repository"):
        version_dir(repo, "linked", 1)

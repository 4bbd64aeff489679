"""The learned priors in the repository format: the two-stage prior's model.json block and file
(refused alone, with a message, when bad), the recommended prior, and model.json files written
before either existed."""

import hashlib
import json
from pathlib import Path

import pytest

from server.repository import (
    FORMAT_VERSION,
    PRIOR_DECODER_FILE,
    ModelMetadata,
    RepositoryError,
    read_metadata,
    read_prior_decoder,
)

GRAPH = b"stand-in bytes: the format checks the file, onnxruntime parses it"


def _two_stage(**overrides) -> dict:
    block = {
        "sha256": hashlib.sha256(GRAPH).hexdigest(),
        "input": "noise",
        "output": "latent",
        "noise_dim": 8,
        "latent_dim": 4,
        "parity": {"max_abs_diff": 2e-7, "max_rel_diff": 1e-6, "batch": 512, "tolerance": 1e-4},
    }
    block.update(overrides)
    return block


def _version(tmp_path: Path, write_graph: bool = True, **overrides) -> tuple[Path, ModelMetadata]:
    fields = dict(
        name="m", version=1, kind="vae", latent_dim=4, image_shape=(1, 28, 28),
        likelihood="bernoulli", two_stage=_two_stage(),
    )  # fmt: skip
    fields.update(overrides)
    meta = ModelMetadata(**fields)
    directory = tmp_path / "m" / "1"
    directory.mkdir(parents=True)
    for name in ("encoder.onnx", "decoder.onnx"):
        (directory / name).write_bytes(b"x")
    if write_graph:
        (directory / PRIOR_DECODER_FILE).write_bytes(GRAPH)
    (directory / "model.json").write_text(meta.to_json())
    return directory, read_metadata(directory)


def test_a_version_with_a_two_stage_prior_lists_it_and_reads_its_decoder(tmp_path):
    directory, meta = _version(tmp_path)
    assert meta.priors == ("standard_normal", "two_stage")
    decoder = read_prior_decoder(directory, meta)
    assert decoder is not None and decoder.model_bytes == GRAPH
    assert (decoder.input, decoder.output, decoder.noise_dim, decoder.latent_dim) == (
        "noise", "latent", 8, 4,
    )  # fmt: skip


def test_a_version_without_one_has_no_prior_decoder(tmp_path):
    directory, meta = _version(tmp_path, write_graph=False, two_stage={})
    assert meta.priors == ("standard_normal",) and read_prior_decoder(directory, meta) is None


def test_a_missing_prior_decoder_is_refused_alone_saying_how_to_fix_it(tmp_path):
    directory, meta = _version(tmp_path, write_graph=False)  # model.json itself still reads
    with pytest.raises(RepositoryError, match=r"prior_decoder.onnx: missing.*export the version"):
        read_prior_decoder(directory, meta)


def test_a_prior_decoder_that_differs_from_its_sha256_is_refused(tmp_path):
    directory, meta = _version(tmp_path)
    (directory / PRIOR_DECODER_FILE).write_bytes(GRAPH + b"tampered")
    with pytest.raises(RepositoryError, match=r"differs from the .* that model.json records"):
        read_prior_decoder(directory, meta)


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (_two_stage(sha256="abc"), "two_stage.sha256 must be the 64 hex digits"),
        (
            _two_stage(parity={"max_abs_diff": 3e-3, "tolerance": 1e-2}),
            r"two_stage.parity.max_abs_diff must be a number in \[0, 0.0001\].*got 0.003",
        ),
        (_two_stage(parity={}), "two_stage.parity.max_abs_diff must be a number"),
        (_two_stage(noise_dim=0), "two_stage.noise_dim must be a positive integer, got 0"),
        (_two_stage(latent_dim=5), "two_stage.latent_dim must equal the model's latent_dim 4"),
        (_two_stage(input=""), "two_stage.input must name the graph's input tensor"),
    ],
)
def test_a_malformed_two_stage_block_is_refused_alone_naming_the_field(tmp_path, block, message):
    directory, meta = _version(tmp_path, two_stage=block)  # the version's metadata still reads
    with pytest.raises(RepositoryError, match=message):
        read_prior_decoder(directory, meta)


def test_a_recommended_prior_the_version_lacks_is_refused(tmp_path):
    meta = ModelMetadata(
        name="m", version=1, kind="vae", latent_dim=4, image_shape=(1, 28, 28),
        likelihood="bernoulli", recommended_prior="mixture",
    )  # fmt: skip
    with pytest.raises(RepositoryError, match="recommended_prior 'mixture' is not a prior"):
        meta.validate()


def test_an_unknown_recommended_prior_is_refused():
    data = json.loads(_version_json(recommended_prior="flow"))
    with pytest.raises(RepositoryError, match="recommended_prior 'flow' is not a prior"):
        ModelMetadata.from_dict(data)


def test_a_non_positive_recommended_temperature_is_refused():
    with pytest.raises(RepositoryError, match="recommended_temperature must be a positive"):
        ModelMetadata.from_dict(json.loads(_version_json(recommended_temperature=0.0)))


def test_the_recommendation_round_trips(tmp_path):
    _, meta = _version(tmp_path, recommended_prior="two_stage", recommended_temperature=1.25)
    assert (meta.recommended_prior, meta.recommended_temperature) == ("two_stage", 1.25)
    assert ModelMetadata.from_dict(json.loads(meta.to_json())) == meta


def test_a_model_json_from_before_the_learned_priors_still_reads():
    """A version exported before this change: no two_stage, no recommendation, format 1."""
    data = json.loads(_version_json())
    for key in ("two_stage", "recommended_prior", "recommended_temperature", "mixture"):
        data.pop(key)
    meta = ModelMetadata.from_dict(data)
    assert meta.priors == ("standard_normal",) and meta.recommended_prior == ""
    assert meta.format_version == FORMAT_VERSION == 1


def _version_json(**overrides) -> str:
    fields = dict(
        name="m", version=1, kind="vae", latent_dim=4, image_shape=(1, 28, 28),
        likelihood="bernoulli",
    )  # fmt: skip
    fields.update(overrides)
    return json.dumps({**json.loads(ModelMetadata(**fields).to_json()), **overrides})

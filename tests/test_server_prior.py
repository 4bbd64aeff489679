"""Sampling the learned prior through a real server on loopback: the mixture travels from the run
through export, same seed gives the same images, and bad requests or files get clear errors."""

from __future__ import annotations

import json
import logging
import shutil

import grpc
import numpy as np
import pytest

from client.api import VaeClient
from client.cli import main as client_main
from server.codecs import tensor_to_numpy
from server.dataplane import latent_space
from server.proto_gen.vae.v1 import vae_pb2
from server.repository import MIXTURE_FILE, GaussianMixture
from tests.server_helpers import running_server, sample_request, settings, stub_for
from training.prior import load_mixture


@pytest.fixture(scope="module")
def client(live_server):
    with VaeClient(live_server.address) as c:
        yield c


def test_export_carries_the_runs_mixture_unchanged(repository, trained_runs):
    arrays, _, _ = load_mixture(trained_runs.vae / "best.prior.npz")
    with np.load(repository / "tiny-vae" / "1" / MIXTURE_FILE, allow_pickle=False) as served:
        for name, array in arrays.items():
            assert np.array_equal(served[name], array)


def test_mixture_samples_are_the_decoded_mixture_draws_of_the_seed(client, repository):
    images, latents, seed = client.sample(6, seed=11, prior="mixture", model="tiny-vae")
    with np.load(repository / "tiny-vae" / "1" / MIXTURE_FILE, allow_pickle=False) as npz:
        mixture = GaussianMixture.from_arrays(dict(npz), latent_dim=8)
    expected = latent_space.draw_mixture(latent_space.prior_generator(11), 6, mixture)
    assert seed == 11 and np.array_equal(latents, expected)
    assert np.array_equal(images, client.decode(expected, model="tiny-vae"))


def test_the_same_seed_gives_the_same_mixture_images(client):
    first, _, _ = client.sample(4, seed=5, prior="mixture", model="tiny-vae")
    again, _, _ = client.sample(4, seed=5, prior="mixture", model="tiny-vae")
    normal, _, _ = client.sample(4, seed=5, model="tiny-vae")
    assert np.array_equal(first, again) and not np.array_equal(first, normal)


def test_unspecified_prior_is_the_standard_normal(client):
    unset, _, _ = client.sample(3, seed=2, model="tiny-vae")
    request = sample_request(count=3, seed=2, prior=vae_pb2.PRIOR_STANDARD_NORMAL)
    explicit = client.stub.Sample(request, timeout=10)
    assert np.array_equal(unset, tensor_to_numpy(explicit.images))


def test_a_mixture_stream_equals_one_mixture_sample_however_chunked(client):
    whole, _, _ = client.sample(20, seed=9, prior="mixture", model="tiny-vae")
    chunks = list(client.sample_stream(20, 7, seed=9, prior="mixture", model="tiny-vae"))
    assert np.array_equal(np.concatenate([c[0] for c in chunks]), whole)
    assert [c[2] for c in chunks] == [0, 7, 14]


def test_an_autoencoder_samples_its_mixture(client):
    images, latents, _ = client.sample(4, seed=1, prior="mixture", model="tiny-ae")
    assert images.shape == (4, 1, 28, 28) and latents.shape == (4, 8)


def test_a_conditional_model_samples_its_mixture_with_the_label(client):
    three, _, _ = client.sample(2, seed=1, label=3, prior="mixture", model="tiny-cvae")
    four, _, _ = client.sample(2, seed=1, label=4, prior="mixture", model="tiny-cvae")
    assert not np.array_equal(three, four)


def test_model_info_lists_the_priors(client):
    assert list(client.info("tiny-vae").priors) == ["PRIOR_STANDARD_NORMAL", "PRIOR_MIXTURE"]


def test_an_unknown_prior_is_invalid_and_lists_the_allowed_ones(client):
    with pytest.raises(grpc.RpcError) as info:
        client.stub.Sample(sample_request(count=1, prior=7), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "prior 7 is not a known value" in info.value.details()
    assert "PRIOR_MIXTURE" in info.value.details()


def test_an_unknown_prior_on_a_stream_is_invalid(client):
    request = vae_pb2.SampleStreamRequest(model=vae_pb2.ModelRef(name="tiny-vae"), count=2, prior=5)
    with pytest.raises(grpc.RpcError) as info:
        list(client.stub.SampleStream(request, timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_vae_client_samples_the_mixture(live_server, tmp_path):
    out = tmp_path / "mixture.npy"
    argv = ["--address", live_server.address, "--model", "tiny-vae", "sample", "--count", "3"]
    assert client_main([*argv, "--prior", "mixture", "--format", "npy", "-o", str(out)]) == 0
    assert np.load(out).shape == (3, 1, 28, 28)


# --- a repository with a version lacking the mixture and one whose mixture file is corrupt --------


@pytest.fixture(scope="module")
def mixed_repository(repository, tmp_path_factory):
    """tiny-vae: 1 as exported (with its mixture), 2 without one (as an older export), 3 with a
    corrupt prior.npz (refused alone: the version serves N(0, I))."""
    root = tmp_path_factory.mktemp("mixed")
    shutil.copytree(repository / "tiny-vae", root / "tiny-vae")
    for version in (2, 3):
        target = root / "tiny-vae" / str(version)
        shutil.copytree(root / "tiny-vae" / "1", target)
        meta = json.loads((target / "model.json").read_text())
        meta["version"] = version
        if version == 2:
            del meta["mixture"]
            (target / MIXTURE_FILE).unlink()
        (target / "model.json").write_text(json.dumps(meta))
    (root / "tiny-vae" / "3" / MIXTURE_FILE).write_bytes(b"PK\x03\x04 truncated")
    return root


@pytest.fixture(scope="module")
def mixed_server(mixed_repository):
    with running_server(settings(mixed_repository)) as server:
        yield server


def test_a_corrupt_mixture_file_is_refused_alone_with_a_clear_log(mixed_repository, caplog):
    with (
        caplog.at_level(logging.ERROR, logger="server.inference.sessions"),
        running_server(settings(mixed_repository)) as server,
    ):
        assert server.store.versions("tiny-vae") == [1, 2, 3]  # the version itself loads
    (record,) = [r for r in caplog.records if "tiny-vae/3" in r.getMessage()]
    assert "prior.npz refused" in record.getMessage() and "corrupt" in record.getMessage()


def test_the_version_with_the_corrupt_mixture_still_serves_n01(mixed_server):
    with stub_for(mixed_server) as stub:
        reply = stub.Sample(sample_request(count=2, seed=1), timeout=10)
        with pytest.raises(grpc.RpcError) as info:
            stub.Sample(sample_request(count=1, prior=vae_pb2.PRIOR_MIXTURE), timeout=10)
    assert reply.model.version == 3 and len(reply.images.shape) == 4
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "prior.npz was refused at load" in info.value.details()


def test_a_version_without_a_mixture_is_failed_precondition_saying_how_to_add_one(mixed_server):
    request = sample_request(count=1, prior=vae_pb2.PRIOR_MIXTURE)
    request.model.version = 2
    with stub_for(mixed_server) as stub, pytest.raises(grpc.RpcError) as info:
        stub.Sample(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "has no mixture prior" in info.value.details()
    assert "vae-train prior" in info.value.details() and "vae-export" in info.value.details()


def test_a_stream_from_a_version_without_a_mixture_is_failed_precondition(mixed_server):
    request = vae_pb2.SampleStreamRequest(
        model=vae_pb2.ModelRef(name="tiny-vae"), count=2, prior=vae_pb2.PRIOR_MIXTURE
    )
    with stub_for(mixed_server) as stub, pytest.raises(grpc.RpcError) as info:
        list(stub.SampleStream(request, timeout=10))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_model_info_of_a_version_without_a_mixture_lists_only_the_standard_normal(mixed_server):
    with stub_for(mixed_server) as stub:
        old, new, corrupt = (
            stub.GetModelInfo(
                vae_pb2.GetModelInfoRequest(model=vae_pb2.ModelRef(name="tiny-vae", version=v))
            )
            for v in (2, 1, 3)
        )
    assert list(old.priors) == ["PRIOR_STANDARD_NORMAL"]
    assert list(new.priors) == ["PRIOR_STANDARD_NORMAL", "PRIOR_MIXTURE"]
    assert list(corrupt.priors) == ["PRIOR_STANDARD_NORMAL"]  # listed as loaded, not as declared

"""The two-stage prior served: a real server on loopback runs prior_decoder.onnx (u -> z) then the
decoder, seeded and temperature-scaled, batched like the decoder; versions without it, or with a bad
prior file, still serve N(0, I) and say which command adds the prior back."""

from __future__ import annotations

import json
import logging
import shutil
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from client.api import VaeClient
from client.bench import main as bench_main
from client.cli import main as client_main
from export.pipeline import export_checkpoint
from export.prior_export import reference_two_stage_sample
from server.dataplane import latent_space
from server.inference.batching import BatchingConfig
from server.proto_gen.vae.v1 import vae_pb2
from server.repository import MIXTURE_FILE, PRIOR_DECODER_FILE, read_class_mixtures, read_metadata
from tests.server_helpers import metric, running_server, settings, stub_for
from training.two_stage import TwoStageConfig, fit_run_two_stage

SMALL = TwoStageConfig(hidden_dims=(16,), epochs=2, batch_size=128)
NAME = "tiny-vae"


@pytest.fixture(scope="module")
def repository(trained_runs, mnist_dir, tmp_path_factory):
    """tiny-vae exported with its mixture and a two-stage prior as version 1; copies of it as
    2 (prior_decoder.onnx corrupt), 3 (prior_decoder.onnx and prior.npz gone) and 4 (prior.npz
    corrupt), each model.json recommending the two-stage prior at 1.25; and tiny-cvae (per-class
    mixtures, no two-stage prior)."""
    runs = tmp_path_factory.mktemp("runs")
    shutil.copytree(trained_runs.vae, runs / NAME)
    fit_run_two_stage(runs / NAME, config=SMALL)
    repo = tmp_path_factory.mktemp("repo")
    assert export_checkpoint(runs / NAME / "best.pt", repo, data_dir=mnist_dir).status == "exported"
    cvae = export_checkpoint(trained_runs.cvae / "best.pt", repo, data_dir=mnist_dir)
    assert cvae.status == "exported", cvae.detail
    first = repo / NAME / "1"
    meta = json.loads((first / "model.json").read_text())
    meta.update(recommended_prior="two_stage", recommended_temperature=1.25)
    (first / "model.json").write_text(json.dumps(meta))
    for version in (2, 3, 4):
        target = repo / NAME / str(version)
        shutil.copytree(first, target)
        (target / "model.json").write_text(json.dumps({**meta, "version": version}))
    (repo / NAME / "2" / PRIOR_DECODER_FILE).write_bytes(b"not an onnx graph")
    (repo / NAME / "3" / PRIOR_DECODER_FILE).unlink()
    (repo / NAME / "3" / MIXTURE_FILE).unlink()
    (repo / NAME / "4" / MIXTURE_FILE).write_bytes(b"PK\x03\x04 truncated")
    return repo


@pytest.fixture(scope="module")
def server(repository):
    # A queue delay, so concurrent Samples share prior-decoder and decoder batches.
    batching = BatchingConfig(max_queue_delay_ms=20.0)
    with running_server(settings(repository, batching)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with VaeClient(f"127.0.0.1:{server.port}") as c:
        yield c


def _reference(repository, version, count, seed, temperature=1.0):
    return reference_two_stage_sample(
        repository / NAME / str(version) / PRIOR_DECODER_FILE, count, seed, temperature
    )


def test_a_two_stage_sample_is_the_prior_decoder_then_the_decoder(client, repository):
    images, latents, seed = client.sample(6, seed=11, prior="two-stage", model=NAME, version=1)
    assert seed == 11
    assert np.allclose(latents, _reference(repository, 1, 6, 11), atol=1e-6)
    assert np.array_equal(images, client.decode(latents, model=NAME, version=1))


@pytest.mark.parametrize("temperature", [0.5, 1.7])
def test_temperature_scales_the_second_stages_noise(client, repository, temperature):
    _, latents, _ = client.sample(
        5, seed=3, temperature=temperature, prior="two-stage", model=NAME, version=1
    )
    assert np.allclose(latents, _reference(repository, 1, 5, 3, temperature), atol=1e-6)


def test_the_same_seed_gives_the_same_images_whatever_the_batch(client, server):
    alone, alone_latents, _ = client.sample(4, seed=5, prior="two-stage", model=NAME, version=1)

    def call(seed: int):
        return client.sample(4, seed=seed, prior="two-stage", model=NAME, version=1)

    labels = {"model": NAME, "component": "prior_decoder"}
    batches = metric(server, "vae_batch_size_count", **labels)
    with ThreadPoolExecutor(8) as pool:  # eight at once
        results = list(pool.map(call, [5, 6, 7, 8, 5, 9, 10, 5]))
    # They rode in shared prior-decoder batches: fewer batches than calls.
    assert metric(server, "vae_batch_size_count", **labels) - batches < 8
    for index in (0, 4, 7):
        images, latents, _ = results[index]
        assert np.allclose(latents, alone_latents, atol=1e-6)
        assert np.allclose(images, alone, atol=1e-6)
    normal, _, _ = client.sample(4, seed=5, model=NAME, version=1)
    assert not np.allclose(normal, alone, atol=1e-3)


def test_the_prior_decoder_runs_through_its_own_batcher(server, client):
    client.sample(3, seed=1, prior="two-stage", model=NAME, version=1)
    labels = {"model": NAME, "component": "prior_decoder"}
    assert metric(server, "vae_batch_size_count", **labels) >= 1


def test_a_two_stage_stream_equals_one_sample_however_chunked(client):
    whole, _, _ = client.sample(20, seed=9, prior="two-stage", model=NAME, version=1)
    chunks = list(client.sample_stream(20, 7, seed=9, prior="two-stage", model=NAME, version=1))
    assert np.allclose(np.concatenate([c[0] for c in chunks]), whole, atol=1e-6)


def test_model_info_lists_the_loaded_priors_and_the_recommendation(client):
    info = client.info(NAME, version=1)
    assert list(info.priors) == ["PRIOR_STANDARD_NORMAL", "PRIOR_MIXTURE", "PRIOR_TWO_STAGE"]
    assert info.recommended_prior == vae_pb2.PRIOR_TWO_STAGE
    assert info.recommended_temperature == pytest.approx(1.25)


def test_vae_client_samples_the_two_stage_prior(server, tmp_path):
    out = tmp_path / "two-stage.npy"
    argv = ["--address", f"127.0.0.1:{server.port}", "--model", NAME, "sample", "--count", "3"]
    assert client_main([*argv, "--prior", "two-stage", "--format", "npy", "-o", str(out)]) == 0
    assert np.load(out).shape == (3, 1, 28, 28)


# --- refusals ------------------------------------------------------------------------------------


def _failed_precondition(server, version, prior, name=NAME, label=None):
    request = vae_pb2.SampleRequest(
        model=vae_pb2.ModelRef(name=name, version=version), count=1, prior=prior, label=label
    )
    with stub_for(server) as stub, pytest.raises(grpc.RpcError) as info:
        stub.Sample(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    return info.value.details()


def test_a_corrupt_prior_decoder_leaves_the_rest_of_the_version_serving(client, server):
    images, _, _ = client.sample(2, seed=1, model=NAME, version=2)
    mixture, _, _ = client.sample(2, seed=1, prior="mixture", model=NAME, version=2)
    assert images.shape == mixture.shape == (2, 1, 28, 28)
    assert list(client.info(NAME, version=2).priors) == ["PRIOR_STANDARD_NORMAL", "PRIOR_MIXTURE"]
    # The recommendation names a prior that did not load: left unset, clients use N(0, I).
    assert client.info(NAME, version=2).recommended_prior == vae_pb2.PRIOR_UNSPECIFIED
    details = _failed_precondition(server, 2, vae_pb2.PRIOR_TWO_STAGE)
    assert "has no two-stage prior (prior_decoder.onnx was refused at load" in details
    assert "`vae-train prior <run-dir> --kind two-stage`" in details and "vae-export" in details


def test_missing_prior_files_leave_n01_serving(client, server):
    images, _, _ = client.sample(2, seed=1, model=NAME, version=3)
    assert images.shape == (2, 1, 28, 28)
    assert list(client.info(NAME, version=3).priors) == ["PRIOR_STANDARD_NORMAL"]
    assert "prior_decoder.onnx: missing" in _failed_precondition(server, 3, vae_pb2.PRIOR_TWO_STAGE)
    details = _failed_precondition(server, 3, vae_pb2.PRIOR_MIXTURE)
    assert "prior.npz: missing" in details and "`vae-train prior <run-dir>`" in details


def test_a_corrupt_mixture_leaves_the_two_stage_prior_serving(client, repository):
    _, latents, _ = client.sample(3, seed=2, prior="two-stage", model=NAME, version=4)
    assert np.allclose(latents, _reference(repository, 4, 3, 2), atol=1e-6)
    assert list(client.info(NAME, version=4).priors) == ["PRIOR_STANDARD_NORMAL", "PRIOR_TWO_STAGE"]


def test_each_refused_file_is_logged_on_one_line_with_the_command_that_remakes_it(
    repository, caplog
):
    with (
        caplog.at_level(logging.ERROR, logger="server.inference.sessions"),
        running_server(settings(repository)) as running,
    ):
        assert running.store.versions(NAME) == [1, 2, 3, 4]  # every version loads
    lines = [r.getMessage() for r in caplog.records]
    assert all("\n" not in line for line in lines)
    for version, file, command in (
        (2, "prior_decoder.onnx", "`vae-train prior <run-dir> --kind two-stage`"),
        (3, "prior_decoder.onnx", "`vae-train prior <run-dir> --kind two-stage`"),
        (3, "prior.npz", "`vae-train prior <run-dir>`"),
        (4, "prior.npz", "`vae-train prior <run-dir>`"),
    ):
        (line,) = [m for m in lines if m.startswith(f"{NAME}/{version}: {file} refused")]
        assert command in line and "serves without it" in line


def test_a_conditional_model_has_no_two_stage_prior_and_says_what_it_has(server):
    details = _failed_precondition(server, 0, vae_pb2.PRIOR_TWO_STAGE, name="tiny-cvae", label=1)
    assert "conditional models have none" in details and "mixture prior" in details


def test_a_conditional_model_samples_the_mixture_of_the_requested_class(client, repository):
    version = repository / "tiny-cvae" / "1"
    per_class = read_class_mixtures(version, read_metadata(version))
    assert per_class is not None
    for label in (2, 7):
        _, latents, _ = client.sample(5, seed=4, label=label, prior="mixture", model="tiny-cvae")
        rng = latent_space.prior_generator(4)
        assert np.array_equal(latents, latent_space.draw_mixture(rng, 5, per_class[label]))


def test_vae_client_samples_the_recommended_prior_at_its_temperature(server, tmp_path, capsys):
    argv = ["--address", f"127.0.0.1:{server.port}", "--model", NAME, "--version", "1"]
    out = tmp_path / "recommended.npy"
    sample = ["sample", "--count", "2", "--seed", "4", "--prior", "recommended", "--format", "npy"]
    assert client_main([*argv, *sample, "-o", str(out)]) == 0
    assert "prior two-stage at temperature 1.25 (recommended)" in capsys.readouterr().out
    with VaeClient(f"127.0.0.1:{server.port}") as client:
        expected, _, _ = client.sample(
            2, seed=4, temperature=1.25, prior="two-stage", model=NAME, version=1
        )
    assert np.allclose(np.load(out), expected, atol=1e-6)


def test_without_a_loaded_recommendation_the_client_falls_back_to_n01(client):
    assert client.recommended_prior(NAME, version=2) == ("standard-normal", 1.0)


def test_vae_bench_loads_the_two_stage_prior(server, capsys):
    """Version 4 (the latest) has the two-stage prior and a refused mixture: the prior is sent."""
    flags = ["--duration=0.5", "--warmup=0.1", f"--model={NAME}", "--concurrency=2"]
    address = f"--address=127.0.0.1:{server.port}"
    assert bench_main([*flags, address, "--prior=two-stage"]) == 0
    two_stage = json.loads(capsys.readouterr().out)
    assert (two_stage["prior"], two_stage["error_count"]) == ("two-stage", 0)
    assert two_stage["requests_ok"] > 0
    assert bench_main([*flags, address, "--prior=mixture"]) == 3
    assert list(json.loads(capsys.readouterr().out)["errors"]) == ["FAILED_PRECONDITION"]

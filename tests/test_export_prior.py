"""Export of the two-stage prior: prior_decoder.onnx beside the encoder and decoder, its parity with
PyTorch, model.json's two_stage block, and the reference sampler a server must match."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import onnx
import pytest
import torch

from export import cli
from export.parity import ParityError
from export.prior_export import (
    check_prior_parity,
    export_prior_decoder,
    reference_two_stage_sample,
)
from server.repository import PRIOR_DECODER_FILE, read_metadata, read_prior_decoder
from training.two_stage import TwoStageConfig, fit_run_two_stage, load_two_stage, sample_two_stage

SMALL = TwoStageConfig(hidden_dims=(16,), epochs=2, batch_size=128)


@pytest.fixture(scope="module")
def runs_with_both_priors(trained_runs, tmp_path_factory):
    """A directory of one run (the tiny VAE) with its mixture and a two-stage prior."""
    runs = tmp_path_factory.mktemp("runs")
    shutil.copytree(trained_runs.vae, runs / "tiny-vae")
    fit_run_two_stage(runs / "tiny-vae", config=SMALL)
    return runs


@pytest.fixture(scope="module")
def exported(runs_with_both_priors, mnist_dir, tmp_path_factory):
    """The run exported by `vae-export <directory>`: the version directory."""
    repo = tmp_path_factory.mktemp("repo")
    argv = [str(runs_with_both_priors), "--repository", str(repo), "--data-dir", str(mnist_dir)]
    assert cli.main(argv) == 0
    return repo / "tiny-vae" / "1"


def test_a_directory_export_writes_both_prior_files(exported):
    assert (exported / "prior.npz").is_file() and (exported / PRIOR_DECODER_FILE).is_file()
    assert read_metadata(exported).priors == ("standard_normal", "mixture", "two_stage")


def test_model_json_describes_the_prior_decoder_as_the_server_reads_it(exported):
    meta = read_metadata(exported)
    block = meta.two_stage
    assert (
        block["sha256"] == hashlib.sha256((exported / PRIOR_DECODER_FILE).read_bytes()).hexdigest()
    )
    assert (block["input"], block["output"], block["noise_dim"], block["latent_dim"]) == (
        "noise", "latent", 16, 8,
    )  # fmt: skip
    assert 0 <= block["parity"]["max_abs_diff"] <= 1e-4 and block["parity"]["tolerance"] == 1e-4
    assert block["epochs"] == 2 and block["hidden_dims"] == [16]
    decoder = read_prior_decoder(exported, meta)
    assert decoder is not None and decoder.noise_dim == 16


def test_the_reference_sampler_matches_pytorch_at_any_batch_and_temperature(
    exported, runs_with_both_priors
):
    second_stage, _, _ = load_two_stage(runs_with_both_priors / "tiny-vae" / "best.two_stage.pt")
    for count, seed, temperature in ((1, 0, 1.0), (3, 5, 0.5), (130, 9, 1.7)):
        onnx_latents = reference_two_stage_sample(
            exported / PRIOR_DECODER_FILE, count, seed, temperature
        )
        torch_latents = sample_two_stage(second_stage, count, seed, temperature)
        assert onnx_latents.shape == (count, 8) and onnx_latents.dtype == np.float32
        assert np.abs(onnx_latents - torch_latents).max() <= 1e-4


def test_the_prior_decoder_holds_no_random_op(exported):
    ops = {n.op_type for n in onnx.load(str(exported / PRIOR_DECODER_FILE)).graph.node}
    assert ops and not any(op.startswith("Random") or op == "Multinomial" for op in ops)


def test_a_prior_decoder_that_differs_from_pytorch_is_refused(runs_with_both_priors, tmp_path):
    second_stage, _, _ = load_two_stage(runs_with_both_priors / "tiny-vae" / "best.two_stage.pt")
    path = export_prior_decoder(second_stage, tmp_path)
    with torch.no_grad():
        second_stage.decoder[0].bias += 0.01  # PyTorch moves on; the ONNX file does not
    with pytest.raises(
        ParityError, match=r"over the tolerance 0\.0001; the export was not written"
    ):
        check_prior_parity(second_stage, path)


def test_a_two_stage_prior_of_another_checkpoint_is_left_out(runs_with_both_priors, trained_runs,
                                                             mnist_dir, tmp_path):  # fmt: skip
    run = tmp_path / "runs" / "tiny-vae"
    shutil.copytree(runs_with_both_priors / "tiny-vae", run)
    shutil.copy(trained_runs.ae / "best.pt", run / "best.pt")  # best.pt replaced, prior not
    (run / "best.prior.npz").unlink()
    repo = tmp_path / "repo"
    from export.pipeline import export_checkpoint

    result = export_checkpoint(run / "best.pt", repo, name="other", data_dir=mnist_dir)
    assert result.status == "exported"
    assert "two-stage prior left out" in result.detail
    assert not (repo / "other" / "1" / PRIOR_DECODER_FILE).exists()
    assert read_metadata(repo / "other" / "1").two_stage == {}

"""Foundation facts of training: IDX parsing on real MNIST, the ELBO terms, checkpoints."""

import gzip
import hashlib
import shutil

import pytest
import torch

from tests.conftest import MNIST_T10K
from training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from training.data import DatasetNotFound, load_idx_split, locate, read_idx
from training.losses import kl_divergence, negative_elbo, reconstruction_loss
from training.models import ModelConfig, build_model


def gunzip(path):
    with gzip.open(path) as handle:
        return handle.read()


def test_read_idx_parses_the_real_mnist_test_images():
    images = read_idx(MNIST_T10K / "t10k-images-idx3-ubyte.gz")
    assert images.shape == (10000, 28, 28)
    # The decompressed file's md5 is given in shared/data/README.md; the parsed payload is its tail.
    raw = gunzip(MNIST_T10K / "t10k-images-idx3-ubyte.gz")
    assert hashlib.md5(raw).hexdigest() == "2646ac647ad5339dbf082846283269ea"
    assert images.tobytes() == raw[16:]


def test_read_idx_refuses_a_truncated_file(tmp_path):
    raw = gunzip(MNIST_T10K / "t10k-labels-idx1-ubyte.gz")
    truncated = tmp_path / "t10k-labels-idx1-ubyte"
    truncated.write_bytes(raw[:-10])
    with pytest.raises(ValueError, match="header says"):
        read_idx(truncated)


def test_plain_folder_and_torchvision_layout_are_both_found(tmp_path, mnist_dir):
    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(mnist_dir, raw)
    assert locate("mnist", mnist_dir, download=False) == mnist_dir
    assert locate("mnist", tmp_path, download=False) == raw


def test_missing_data_names_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv("VAE_DATA_DIR", raising=False)
    monkeypatch.setattr("training.data.DEFAULT_CACHE", tmp_path / "cache")
    with pytest.raises(DatasetNotFound, match=str(tmp_path)):
        locate("mnist", tmp_path, download=False)


def test_splits_are_scaled_to_unit_interval_with_labels(mnist_dir):
    test = load_idx_split("mnist", "test", mnist_dir)
    assert test.images.shape == (10000, 1, 28, 28)
    assert float(test.images.min()) == 0.0 and float(test.images.max()) == 1.0
    assert sorted(test.labels.unique().tolist()) == list(range(10))


def test_kl_is_zero_at_the_prior():
    assert torch.allclose(kl_divergence(torch.zeros(3, 5), torch.zeros(3, 5)), torch.zeros(3))


def test_kl_matches_its_closed_form_for_one_dimension():
    mean, log_variance = torch.tensor([[1.0]]), torch.tensor([[0.0]])
    assert torch.allclose(kl_divergence(mean, log_variance), torch.tensor([0.5]))


def test_bernoulli_reconstruction_sums_bce_over_pixels():
    target = torch.ones(2, 1, 2, 2)
    reconstruction = torch.full((2, 1, 2, 2), 0.5)
    expected = 4 * torch.log(torch.tensor(2.0))
    assert torch.allclose(
        reconstruction_loss(reconstruction, target, "bernoulli"), expected.repeat(2)
    )


def test_reparameterisation_passes_gradients_to_mean_and_log_variance():
    model = build_model(ModelConfig(hidden_dims=(16,), latent_dim=4))
    x = torch.rand(8, 1, 28, 28)
    output = model(x)
    negative_elbo(output, x, "bernoulli").loss.backward()
    assert model.to_mean.weight.grad.abs().sum() > 0
    assert model.to_log_variance.weight.grad.abs().sum() > 0


def test_training_lowers_the_test_loss_and_logs_each_epoch(trained_runs):
    lines = (trained_runs.vae / "log.jsonl").read_text().splitlines()
    import json

    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[-1]["test_loss"] < records[0]["train_loss"]


def test_checkpoint_loads_with_weights_only_and_rebuilds_the_model(trained_runs):
    document = load_checkpoint(trained_runs.vae / "best.pt")
    model = model_from_checkpoint(document)
    assert model.config.latent_dim == 8 and not model.training
    assert document["metrics"]["test_elbo"] < 0


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path, trained_runs):
    broken = tmp_path / "broken.pt"
    broken.write_bytes((trained_runs.vae / "best.pt").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"truncated or corrupt \(1000 bytes"):
        load_checkpoint(broken)


def test_foreign_torch_file_is_not_taken_for_a_checkpoint(tmp_path):
    foreign = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a checkpoint written by vae-train"):
        load_checkpoint(foreign)


def test_pickled_objects_are_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"format": "vae-service-checkpoint", "payload": ValueError("x")}, evil)
    with pytest.raises(CheckpointError, match="holds Python objects besides tensors") as refused:
        load_checkpoint(evil)
    assert "weights_only" not in str(refused.value)  # never PyTorch's advice to load it anyway

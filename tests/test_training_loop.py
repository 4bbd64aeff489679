"""The training loop on real data: exact resume, NaN handling, checkpoints, IWAE, figures, CelebA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import CELEBA_SAMPLE
from training import reporting
from training import train as train_module
from training.batching import load_data
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.config import TrainConfig
from training.data import DatasetNotFound
from training.evaluation import evaluate, iwae_nll
from training.models import ModelConfig
from training.train import NonFiniteLoss, train


def tiny(run_dir: Path, data_dir: Path, **overrides) -> TrainConfig:
    """A few dozen steps of a small MLP on real MNIST: seconds on one core."""
    model = overrides.pop("model", ModelConfig(hidden_dims=(32,), latent_dim=2))
    fields = dict(
        dataset="mnist",
        data_dir=str(data_dir),
        run_dir=str(run_dir),
        epochs=2,
        batch_size=64,
        val_size=200,
        train_subset=640,
        eval_batch_size=500,
        threads=1,
        progress=False,
        tensorboard=False,
        figures=False,
        iwae_samples=0,
        model=model,
    )
    return TrainConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("loop") / "run"
    train(tiny(run_dir, mnist_dir, figures=True, tensorboard=True, iwae_samples=10))
    return run_dir


class Interrupted(Exception):
    """Stands in for a killed process."""


def test_resume_continues_exactly_where_the_run_stopped(
    tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    schedules = {"epochs": 3, "lr_schedule": "cosine", "kl_anneal": "cyclical", "kl_cycles": 2}
    train(tiny(tmp_path / "straight", mnist_dir, **schedules))
    real_record = reporting.epoch_record

    def crash_in_epoch_two(model, data, likelihood, epoch, *args):
        if epoch == 2:
            raise Interrupted  # after epoch 2's steps, before its checkpoint
        return real_record(model, data, likelihood, epoch, *args)

    with monkeypatch.context() as patch:
        patch.setattr(reporting, "epoch_record", crash_in_epoch_two)
        with pytest.raises(Interrupted):
            train(tiny(tmp_path / "split", mnist_dir, **schedules))
    train(tiny(tmp_path / "split", mnist_dir, resume=True, **schedules))
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    resumed = load_checkpoint(tmp_path / "split" / "last.pt")
    logged_epochs = [
        json.loads(line)["epoch"] for line in (tmp_path / "split" / "log.jsonl").open()
    ]
    assert logged_epochs == [1, 2, 3]  # picked up at epoch 2, not started over
    assert all(
        torch.equal(straight["model_state"][k], v) for k, v in resumed["model_state"].items()
    )


def test_resume_restores_the_optimiser_and_scheduler(finished_run: Path, mnist_dir: Path) -> None:
    document = load_checkpoint(finished_run / "last.pt")
    assert {"optimizer_state", "scheduler_state", "epoch", "step"} <= set(document)


def test_resume_without_a_checkpoint_says_where_it_looked(tmp_path: Path, mnist_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"last\.pt: no such checkpoint"):
        train(tiny(tmp_path / "empty", mnist_dir, resume=True))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_loss = train_module.negative_elbo
    calls = {"n": 0}

    def nan_in_epoch_two(output, target, likelihood, beta=1.0):
        calls["n"] += 1
        terms = real_loss(output, target, likelihood, beta)
        if calls["n"] > 12:  # epoch 1 has 10 steps of 64 out of 640 rows
            terms.loss = terms.loss * float("nan")
        return terms

    monkeypatch.setattr(train_module, "negative_elbo", nan_in_epoch_two)
    with pytest.raises(NonFiniteLoss, match="last good checkpoint"):
        train(tiny(tmp_path / "run", mnist_dir))
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1


def test_checkpoint_loads_with_weights_only(finished_run: Path) -> None:
    document = torch.load(finished_run / "best.pt", map_location="cpu", weights_only=True)
    assert {"test_loss", "test_reconstruction", "test_kl", "test_elbo", "val_loss"} <= set(
        document["metrics"]
    )


def test_same_seed_gives_the_same_weights(tmp_path: Path, mnist_dir: Path) -> None:
    for name in ("a", "b"):
        train(tiny(tmp_path / name, mnist_dir, epochs=1))
    a, b = (load_checkpoint(tmp_path / n / "last.pt")["model_state"] for n in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_run_writes_every_figure_for_a_2d_latent(finished_run: Path) -> None:
    expected = {
        "reconstructions",
        "samples",
        "latent_scatter",
        "interpolation",
        "manifold",
        "loss_curves",
    }
    assert {p.stem for p in finished_run.glob("*.png")} == expected


def test_run_writes_tensorboard_events(finished_run: Path) -> None:
    assert list((finished_run / "tensorboard").glob("events.out.tfevents.*"))


def test_iwae_bound_is_tighter_than_the_elbo(finished_run: Path, mnist_dir: Path) -> None:
    model = model_from_checkpoint(load_checkpoint(finished_run / "best.pt"))
    data = load_data(tiny(finished_run, mnist_dir), torch.device("cpu"))
    negative_elbo = evaluate(model, data.test.epoch(), "bernoulli")["loss"]
    nll = iwae_nll(model, data.test.epoch(), samples=50, max_images=1000)
    assert nll < negative_elbo


def test_missing_data_folder_names_where_it_looked(tmp_path: Path) -> None:
    config = tiny(tmp_path / "run", tmp_path / "nothing-here", dataset="celeba")
    with pytest.raises(DatasetNotFound, match="nothing-here"):
        train(config)


def test_unknown_dataset_lists_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="celeba"):
        train(tiny(tmp_path / "run", tmp_path, dataset="cifar10"))


def test_face_model_trains_on_the_celeba_sample_folder(tmp_path: Path) -> None:
    face = ModelConfig(
        architecture="face", hidden_dims=(8, 8, 16, 16), latent_dim=8, likelihood="gaussian"
    )
    config = tiny(tmp_path / "run", CELEBA_SAMPLE, dataset="celeba", val_size=4, test_size=4, batch_size=8,
                  eval_batch_size=8, train_subset=0, epochs=1, num_workers=1, model=face)  # fmt: skip
    summary = train(config)
    assert summary["steps"] == 3  # 24 training images in batches of 8


def test_mixed_precision_run_keeps_finite_losses(tmp_path: Path, mnist_dir: Path) -> None:
    summary = train(tiny(tmp_path / "run", mnist_dir, epochs=1, amp=True, grad_clip=1.0))
    assert torch.isfinite(torch.tensor(summary["test_loss"]))


def test_evaluate_takes_a_split_held_in_memory_as_before(
    finished_run: Path, mnist_dir: Path
) -> None:
    model = model_from_checkpoint(load_checkpoint(finished_run / "best.pt"))
    data = load_data(tiny(finished_run, mnist_dir), torch.device("cpu"))
    split = data.test.data  # the TensorDataset behind the batches
    assert evaluate(model, split, "bernoulli", 500) == evaluate(
        model, data.test.epoch(), "bernoulli"
    )


def test_compiled_run_matches_the_eager_one(tmp_path: Path, mnist_dir: Path) -> None:
    """--compile really compiles the training forward (dynamo counts the graphs) and trains as well
    as eager; weights differ in rounding and in the noise (inductor draws its own random numbers)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    compiled = train(tiny(tmp_path / "compiled", mnist_dir, epochs=1, compile=True))
    assert counters["stats"]["unique_graphs"] >= 1
    eager = train(tiny(tmp_path / "eager", mnist_dir, epochs=1))
    assert compiled["steps"] == eager["steps"] == 10
    assert abs(compiled["test_loss"] - eager["test_loss"]) < 0.03 * eager["test_loss"]
    state = load_checkpoint(tmp_path / "compiled" / "last.pt")["model_state"]
    assert set(state) == set(load_checkpoint(tmp_path / "eager" / "last.pt")["model_state"])
    torch._dynamo.reset()

"""The training loop: data in memory, Adam, per-epoch validation and test ELBO, checkpoints, logs."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from training.checkpoint import save_checkpoint
from training.data import TensorDataset, train_val_test
from training.losses import negative_elbo
from training.models import GenerativeModel, ModelConfig, build_model

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """One training run; every field is also a `vae-train` flag."""

    dataset: str = "fashion-mnist"
    data_dir: str = ""  # empty: VAE_DATA_DIR, the Debian package's folder, then download
    run_dir: str = "runs/mlp-vae"
    epochs: int = 10
    batch_size: int = 128  # the classic example's batch size
    learning_rate: float = 1e-3  # Adam's usual default, as in the classic example
    beta: float = 1.0  # weight of the KL term; 1 is the ELBO, > 1 a beta-VAE
    seed: int = 0
    val_size: int = 5000  # rows held out of the training set for choosing the best checkpoint
    train_subset: int = 0  # train on the first N training rows only (0: all); for quick checks
    max_steps: int = 0  # stop after this many optimiser steps in total (0: no limit)
    eval_batch_size: int = 1000
    device: str = "auto"  # auto picks cuda when available
    model: ModelConfig = field(default_factory=ModelConfig)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["model"] = self.model.to_dict()
        return data


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _labels(model: GenerativeModel, labels: torch.Tensor) -> torch.Tensor | None:
    return labels if model.config.num_classes else None


@torch.no_grad()
def evaluate(
    model: GenerativeModel,
    data: TensorDataset,
    likelihood: str,
    batch_size: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Mean per-image negative ELBO and its terms over a whole split (beta = 1, one z sample each).

    The sampling noise is drawn from a fixed seed so that two evaluations of the same weights agree.
    """
    was_training = model.training
    model.eval()
    totals = {"loss": 0.0, "reconstruction": 0.0, "kl": 0.0}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, len(data), batch_size):
            images = data.images[start : start + batch_size]
            labels = _labels(model, data.labels[start : start + batch_size])
            terms = negative_elbo(model(images, labels), images, likelihood).as_floats()
            for key, value in terms.items():
                totals[key] += value * len(images)
    model.train(was_training)
    return {key: value / len(data) for key, value in totals.items()}


def train(config: TrainConfig) -> dict[str, Any]:
    """Train, evaluate each epoch, write checkpoints and logs into `config.run_dir`; final summary."""
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(config.data_dir) if config.data_dir else None
    train_set, val_set, test_set = train_val_test(
        config.dataset, data_dir, config.val_size, config.seed
    )
    if config.train_subset:
        train_set = train_set.subset(slice(0, config.train_subset))
    train_set, val_set, test_set = (d.to(device) for d in (train_set, val_set, test_set))
    model_config = config.model
    model_config.image_shape = tuple(train_set.images.shape[1:])  # type: ignore[assignment]
    model = build_model(model_config).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    log_file = (run_dir / "log.jsonl").open("a", encoding="utf-8")
    likelihood = model_config.likelihood
    generator = torch.Generator(device=device).manual_seed(config.seed)
    best_val = math.inf
    step = 0
    history: list[dict[str, Any]] = []
    print(
        f"training {model_config.kind}/{model_config.architecture} on {config.dataset} "
        f"({len(train_set)} train, {len(val_set)} val, {len(test_set)} test) on {device}",
        flush=True,
    )
    for epoch in range(1, config.epochs + 1):
        model.train()
        started = time.perf_counter()
        order = torch.randperm(len(train_set), generator=generator, device=device)
        running = {"loss": 0.0, "reconstruction": 0.0, "kl": 0.0}
        seen = 0
        for start in range(0, len(order), config.batch_size):
            index = order[start : start + config.batch_size]
            images = train_set.images[index]  # (B, C, H, W)
            labels = _labels(model, train_set.labels[index])
            terms = negative_elbo(model(images, labels), images, likelihood, config.beta)
            if not torch.isfinite(terms.loss):
                log_file.close()
                raise NonFiniteLoss(
                    f"loss became {float(terms.loss)} at epoch {epoch}, step {step}; stopped. The "
                    f"last good checkpoint is {run_dir / 'last.pt'}. Lower --learning-rate or "
                    "tighten the log-variance clamp."
                )
            optimiser.zero_grad(set_to_none=True)
            terms.loss.backward()
            optimiser.step()
            step += 1
            for key, value in terms.as_floats().items():
                running[key] += value * len(images)
            seen += len(images)
            if config.max_steps and step >= config.max_steps:
                break
        epoch_seconds = time.perf_counter() - started
        train_terms = {k: v / max(seen, 1) for k, v in running.items()}
        val_terms = (
            evaluate(model, val_set, likelihood, config.eval_batch_size) if len(val_set) else {}
        )
        test_terms = evaluate(model, test_set, likelihood, config.eval_batch_size)
        record = {
            "epoch": epoch,
            "step": step,
            "epoch_seconds": round(epoch_seconds, 3),
            **{f"train_{k}": v for k, v in train_terms.items()},
            **{f"val_{k}": v for k, v in val_terms.items()},
            **{f"test_{k}": v for k, v in test_terms.items()},
            "test_elbo": -test_terms["loss"],
        }
        history.append(record)
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()
        print(
            f"epoch {epoch:3d}  train loss {train_terms['loss']:.2f}  "
            f"test loss {test_terms['loss']:.2f} (recon {test_terms['reconstruction']:.2f}, "
            f"KL {test_terms['kl']:.2f})  {epoch_seconds:.1f}s",
            flush=True,
        )
        payload = {
            "model_config": model_config.to_dict(),
            "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer_state": optimiser.state_dict(),
            "train_config": config.to_dict(),
            "epoch": epoch,
            "step": step,
            "metrics": {k: v for k, v in record.items() if k.startswith(("test_", "val_"))},
            "history": history,
            "dataset": config.dataset,
            "class_names": list(train_set.class_names),
        }
        save_checkpoint(run_dir / "last.pt", payload)
        val_loss = val_terms.get("loss", test_terms["loss"])
        if val_loss < best_val:
            best_val = val_loss
            save_checkpoint(run_dir / "best.pt", payload)
        if config.max_steps and step >= config.max_steps:
            break
    log_file.close()
    summary = {"run_dir": str(run_dir), "epochs": len(history), "steps": step, **history[-1]}
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    _save_figures(model, test_set, run_dir)
    return summary


@torch.no_grad()
def _save_figures(model: GenerativeModel, test_set: TensorDataset, run_dir: Path) -> None:
    """samples.png (64 prior draws) and reconstructions.png (originals above, reconstructions below)."""
    from torchvision.utils import save_image

    model.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        labels = None
        if model.config.num_classes:
            labels = torch.arange(64, device=test_set.images.device) % model.config.num_classes
        save_image(model.sample(64, labels).cpu(), run_dir / "samples.png", nrow=8)
        images = test_set.images[:8]
        mean, _ = model.encode(images, _labels(model, test_set.labels[:8]))
        reconstructions = model.decode(mean, _labels(model, test_set.labels[:8]))
        save_image(
            torch.cat([images, reconstructions]).cpu(), run_dir / "reconstructions.png", nrow=8
        )

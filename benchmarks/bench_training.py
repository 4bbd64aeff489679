"""Epoch time of this training loop against the classic example's pipeline, in one run.

The classic pipeline (pytorch/examples vae/main.py): torchvision's FashionMNIST through a DataLoader
with a per-item ToTensor, batch 128, Adam 1e-3, the loss summed over the batch. Ours: the whole split
held as one tensor and batched by indexing (training/batching.py), the same 784-400-20 MLP from the
same initial weights, batch 128, Adam 1e-3. Both train on all 60,000 training images for the same
number of epochs, their epochs alternating; both test losses come from the same evaluator (per-image negative ELBO on the
10,000 test images, one seeded z sample each).

    .venv/bin/python benchmarks/bench_training.py --epochs 3 --threads 1
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from training.batching import TensorBatches
from training.checkpoint import load_checkpoint
from training.config import TrainConfig
from training.data import load_idx_split, locate
from training.evaluation import evaluate
from training.models import ModelConfig, build_model
from training.train import train


def torchvision_root(data_dir: Path | None, scratch: Path) -> Path:
    """torchvision's FashionMNIST/raw layout, decompressed from the IDX files found on disk."""
    raw = scratch / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for path in locate("fashion-mnist", data_dir).iterdir():
        if path.name.endswith(".gz"):
            with gzip.open(path) as source, open(raw / path.name[:-3], "wb") as target:
                shutil.copyfileobj(source, target)
    return scratch


class Classic:
    """The classic example's loop, in substance: per-item ToTensor, the loss summed over the batch."""

    def __init__(self, root: Path, seed: int) -> None:
        from torchvision import datasets, transforms

        torch.manual_seed(seed)
        self.model = build_model(ModelConfig())
        train_set = datasets.FashionMNIST(str(root), train=True, transform=transforms.ToTensor())
        self.loader = torch.utils.data.DataLoader(train_set, batch_size=128, shuffle=True)
        self.optimiser = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def epoch(self) -> float:
        """Train one epoch; its seconds."""
        model, optimiser = self.model.train(), self.optimiser
        started = time.perf_counter()
        for data, _labels in self.loader:
            optimiser.zero_grad()
            mu, logvar = model.encode(data)
            recon = model.decode(model.reparameterise(mu, logvar))
            bce = F.binary_cross_entropy(recon.view(-1, 784), data.view(-1, 784), reduction="sum")
            kld = -0.5 * torch.sum(
                1 + logvar - mu.pow(2) - logvar.exp()
            )  # Kingma & Welling, App. B
            (bce + kld).backward()
            optimiser.step()
        return time.perf_counter() - started


def input_pipelines(root: Path, data_dir: Path | None) -> tuple[float, float]:
    """Seconds to hand over one epoch of batches, with no model: (classic, ours)."""
    from torchvision import datasets, transforms

    train_set = datasets.FashionMNIST(str(root), train=True, transform=transforms.ToTensor())
    loader = torch.utils.data.DataLoader(train_set, batch_size=128, shuffle=True)
    started = time.perf_counter()
    for _batch in loader:
        pass
    classic_seconds = time.perf_counter() - started
    batches = TensorBatches(load_idx_split("fashion-mnist", "train", data_dir), 128, shuffle=True)
    started = time.perf_counter()
    for _batch in batches.epoch(1):
        pass
    return classic_seconds, time.perf_counter() - started


def train_ours(data_dir: Path | None, epoch: int, seed: int, run_dir: Path) -> float:
    """Train our loop up to `epoch`, resuming from the previous call's checkpoint; its seconds."""
    config = TrainConfig(
        dataset="fashion-mnist",
        data_dir=str(data_dir or ""),
        run_dir=str(run_dir),
        epochs=epoch,
        val_size=0,  # train on all 60,000, as the classic example does
        seed=seed,
        device="cpu",
        progress=False,
        tensorboard=False,
        figures=False,
        iwae_samples=0,
        prior_two_stage=False,  # the loop is measured, not the priors fitted after it
        resume=epoch > 1,
    )
    train(config)
    return json.loads((run_dir / "log.jsonl").read_text().splitlines()[-1])["epoch_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    test = load_idx_split("fashion-mnist", "test", args.data_dir)
    with tempfile.TemporaryDirectory() as scratch:
        root = torchvision_root(args.data_dir, Path(scratch) / "tv")
        classic_input, ours_input = input_pipelines(root, args.data_dir)
        # Epochs alternate between the two, so that load from other jobs on a shared machine falls
        # on both alike; ours resumes from its own checkpoint each time (the loop alone is timed).
        classic_run = Classic(root, args.seed)
        classic_seconds, ours_seconds = [], []
        for epoch in range(1, args.epochs + 1):
            classic_seconds.append(classic_run.epoch())
            ours_seconds.append(train_ours(args.data_dir, epoch, args.seed, Path(scratch) / "run"))
        classic_model = classic_run.model
        ours_model = build_model(ModelConfig())
        ours_model.load_state_dict(
            load_checkpoint(Path(scratch) / "run" / "last.pt")["model_state"]
        )
    batches = TensorBatches(test, 1000, shuffle=False)
    classic_loss = evaluate(classic_model, batches.epoch(), "bernoulli")["loss"]
    ours_loss = evaluate(ours_model, batches.epoch(), "bernoulli")["loss"]
    classic_epoch, ours_epoch = statistics.mean(classic_seconds), statistics.mean(ours_seconds)
    report = {
        "epochs": args.epochs,
        "torch_threads": torch.get_num_threads(),
        "classic_epoch_seconds": [round(s, 2) for s in classic_seconds],
        "ours_epoch_seconds": [round(s, 2) for s in ours_seconds],
        "classic_mean_epoch_seconds": round(classic_epoch, 2),
        "ours_mean_epoch_seconds": round(ours_epoch, 2),
        "speed_ratio": round(classic_epoch / ours_epoch, 2),
        "per_epoch_ratios": [
            round(c / o, 2) for c, o in zip(classic_seconds, ours_seconds, strict=True)
        ],
        "classic_input_pipeline_seconds_per_epoch": round(classic_input, 3),
        "ours_input_pipeline_seconds_per_epoch": round(ours_input, 3),
        "classic_test_loss": round(classic_loss, 3),
        "ours_test_loss": round(ours_loss, 3),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

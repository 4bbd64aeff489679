"""The feature network of the sample-quality score: a small CNN classifier per data set, trained once
(`vae-train classifier`) and cached as a checkpoint that loads with torch.load(weights_only=True).

Its penultimate activations stand in for the Inception features of FID (Heusel et al. 2017), which
neither fit 28x28 grey images nor download here: the usual practice on MNIST-sized data.
"""

from __future__ import annotations

import os
import pickle
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.data import TensorDataset, load_idx_split

CLASSIFIER_FORMAT = "vae-service-classifier"
CLASSIFIER_VERSION = 1
DEFAULT_DIR = Path("runs/classifiers")  # runs/ is git-ignored, like every run directory


def default_path(dataset: str) -> Path:
    return DEFAULT_DIR / f"{dataset}.pt"


class FeatureClassifier(nn.Module):
    """Conv 3x3 (32) - ReLU - max-pool 2 - Conv 3x3 (64) - ReLU - max-pool 2 - Linear (features) -
    ReLU - dropout - Linear (classes). `features` returns the post-ReLU penultimate layer."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, feature_dim: int = 128):
        super().__init__()
        channels, height, width = image_shape
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (32, H/2, W/2)
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (64, H/4, W/4)
            nn.Flatten(),
            nn.Linear(64 * (height // 4) * (width // 4), feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(feature_dim, num_classes))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [0, 1] -> (N, feature_dim)."""
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> class logits (N, num_classes)."""
        return self.head(self.body(images))


@dataclass
class Classifier:
    """A trained feature network and what it was trained on."""

    network: FeatureClassifier
    dataset: str
    image_shape: tuple[int, int, int]
    test_accuracy: float
    path: Path | None = None

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch: int = 1000) -> torch.Tensor:
        """Penultimate features of (N, C, H, W) images in [0, 1]: (N, feature_dim) float32 on CPU."""
        self.network.eval()
        device = next(self.network.parameters()).device
        return torch.cat(
            [
                self.network.features(images[i : i + batch].to(device)).cpu()
                for i in range(0, len(images), batch)
            ]
        )


@torch.no_grad()
def accuracy(network: nn.Module, data: TensorDataset, batch: int = 1000) -> float:
    network.eval()
    correct = 0
    for start in range(0, len(data), batch):
        logits = network(data.images[start : start + batch])
        correct += int((logits.argmax(dim=1) == data.labels[start : start + batch]).sum())
    return correct / max(len(data), 1)


def train_classifier(
    dataset: str,
    data_dir: Path | None = None,
    epochs: int = 2,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    seed: int = 0,
    max_steps: int = 0,
    train_subset: int = 0,
) -> tuple[Classifier, dict[str, Any]]:
    """Train on the whole training split (it never sees a test image); report test accuracy."""
    train = load_idx_split(dataset, "train", data_dir)
    test = load_idx_split(dataset, "test", data_dir)
    if train_subset:
        train = train.subset(slice(0, train_subset))
    image_shape = tuple(train.images.shape[1:])
    num_classes = len(train.class_names)
    torch.manual_seed(seed)
    network = FeatureClassifier(image_shape, num_classes)  # type: ignore[arg-type]
    optimiser = torch.optim.Adam(network.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    started, step = time.perf_counter(), 0
    for _ in range(epochs):
        network.train()
        order = torch.randperm(len(train), generator=generator)
        for start in range(0, len(train), batch_size):
            index = order[start : start + batch_size]
            loss = F.cross_entropy(network(train.images[index]), train.labels[index])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            step += 1
            if max_steps and step >= max_steps:
                break
        if max_steps and step >= max_steps:
            break
    test_accuracy = accuracy(network, test)
    info = {
        "dataset": dataset,
        "test_accuracy": test_accuracy,
        "epochs": epochs,
        "steps": step,
        "train_images": len(train),
        "test_images": len(test),
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return Classifier(network.eval(), dataset, image_shape, test_accuracy), info  # type: ignore[arg-type]


def save_classifier(path: Path, classifier: Classifier, info: dict[str, Any]) -> None:
    """A plain dict of tensors and numbers, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "format": CLASSIFIER_FORMAT,
        "format_version": CLASSIFIER_VERSION,
        "image_shape": list(classifier.image_shape),
        "num_classes": classifier.network.head[-1].out_features,
        "feature_dim": classifier.network.head[-1].in_features,
        "state": {k: v.detach().cpu() for k, v in classifier.network.state_dict().items()},
        **info,
    }
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(document, temporary)
    os.replace(temporary, path)


class ClassifierError(ValueError):
    """The classifier checkpoint is missing, unreadable or for another data set; says how to fix."""


def load_classifier(path: Path, dataset: str | None = None) -> Classifier:
    """Load with weights_only=True (no code runs); refuse one trained on another data set."""
    hint = (
        f"train it with `vae-train classifier --dataset {dataset or '<dataset>'} --output {path}`"
    )
    if not path.is_file():
        raise ClassifierError(f"no classifier at {path}; {hint}")
    try:
        document = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError) as exc:
        raise ClassifierError(
            f"{path}: not a readable classifier checkpoint ({exc}); {hint}"
        ) from exc
    if not isinstance(document, dict) or document.get("format") != CLASSIFIER_FORMAT:
        raise ClassifierError(f"{path}: not a classifier written by vae-train; {hint}")
    if dataset is not None and document["dataset"] != dataset:
        raise ClassifierError(
            f"{path} was trained on {document['dataset']}, the run on {dataset}: features of "
            f"another data set's classifier are not comparable; {hint}"
        )
    image_shape = tuple(int(d) for d in document["image_shape"])
    network = FeatureClassifier(
        image_shape,  # type: ignore[arg-type]
        int(document["num_classes"]),
        int(document["feature_dim"]),
    )
    network.load_state_dict(document["state"])
    return Classifier(
        network.eval(),
        str(document["dataset"]),
        image_shape,  # type: ignore[arg-type]
        float(document["test_accuracy"]),
        path,
    )

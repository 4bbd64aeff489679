"""Image data sets held as tensors: MNIST and Fashion-MNIST from IDX files, found offline or downloaded.

IDX files are looked for, in order, in `--data-dir` / VAE_DATA_DIR (as a plain folder of the four
files, gzipped or not, or torchvision's `<root>/<FashionMNIST|MNIST>/raw/` layout), then in the folder
the Debian package `dataset-fashion-mnist` installs, and only then downloaded with torchvision.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_CACHE = Path.home() / ".cache" / "vae-service" / "data"

# name -> (torchvision class name, fallback system folders, class names)
DATASETS: dict[str, tuple[str, tuple[Path, ...], tuple[str, ...]]] = {
    "fashion-mnist": (
        "FashionMNIST",
        (DEBIAN_FASHION_MNIST,),
        (
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
    ),
    "mnist": ("MNIST", (), tuple(str(d) for d in range(10))),
}
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DatasetNotFound(FileNotFoundError):
    """The data set is neither on disk nor downloadable; the message lists where it looked."""


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (LeCun et al.), gzipped or not, as a uint8 array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4:
        raise ValueError(f"{path}: too short to be an IDX file")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    payload = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    expected = int(np.prod(dims))
    if payload.size != expected:
        raise ValueError(
            f"{path}: header says {dims} ({expected} bytes), file holds {payload.size}"
        )
    return payload.reshape(dims)


def _find_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def candidate_folders(name: str, data_dir: Path | None) -> list[Path]:
    tv_name, system_folders, _ = DATASETS[name]
    folders: list[Path] = []
    env_dir = os.environ.get("VAE_DATA_DIR")
    for root in [data_dir, Path(env_dir) if env_dir else None]:
        if root is not None:
            folders += [root, root / tv_name / "raw", root / name]
    folders += list(system_folders)
    folders.append(DEFAULT_CACHE / tv_name / "raw")
    return folders


def locate(name: str, data_dir: Path | None = None, download: bool = True) -> Path:
    """The folder holding all four IDX files of `name`, downloading with torchvision if allowed."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {sorted(DATASETS)}")
    stems = [stem for pair in IDX_FILES.values() for stem in pair]
    folders = candidate_folders(name, data_dir)
    for folder in folders:
        if all(_find_file(folder, stem) for stem in stems):
            return folder
    if download:
        root = data_dir or (
            Path(os.environ["VAE_DATA_DIR"]) if "VAE_DATA_DIR" in os.environ else DEFAULT_CACHE
        )
        try:
            import torchvision.datasets as tv

            dataset_class = getattr(tv, DATASETS[name][0])
            for train in (True, False):
                dataset_class(root=str(root), train=train, download=True)
        except Exception as exc:  # no network, or a mirror failed
            raise DatasetNotFound(
                f"{name}: IDX files not found in {[str(f) for f in folders]} and the torchvision "
                f"download into {root} failed ({exc}). Put the four .gz files in a folder and pass "
                "--data-dir, or on Debian `apt-get install dataset-fashion-mnist`."
            ) from exc
        return locate(name, data_dir=root, download=False)
    raise DatasetNotFound(
        f"{name}: IDX files not found in {[str(f) for f in folders]}; pass --data-dir or allow the "
        "download"
    )


@dataclass
class TensorDataset:
    """A whole split in memory: images (N, C, H, W) float32 in [0, 1] and labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor
    name: str
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.images)

    def to(self, device: torch.device | str) -> TensorDataset:
        return TensorDataset(
            self.images.to(device), self.labels.to(device), self.name, self.class_names
        )

    def subset(self, index: torch.Tensor | slice) -> TensorDataset:
        return TensorDataset(self.images[index], self.labels[index], self.name, self.class_names)


def load_idx_split(name: str, split: str, data_dir: Path | None = None) -> TensorDataset:
    """One split ('train' or 'test') of MNIST or Fashion-MNIST as tensors."""
    folder = locate(name, data_dir)
    images_stem, labels_stem = IDX_FILES[split]
    images = read_idx(_find_file(folder, images_stem))  # type: ignore[arg-type]
    labels = read_idx(_find_file(folder, labels_stem))  # type: ignore[arg-type]
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(
            f"{folder}: {split} images {images.shape} and labels {labels.shape} differ"
        )
    image_tensor = torch.from_numpy(images.copy()).float().div_(255.0).unsqueeze(1)  # (N, 1, H, W)
    label_tensor = torch.from_numpy(labels.astype(np.int64))
    return TensorDataset(image_tensor, label_tensor, name, DATASETS[name][2])


def train_val_test(
    name: str, data_dir: Path | None = None, val_size: int = 5000, seed: int = 0
) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """Training set split into train and validation (a seeded random `val_size` rows), and test."""
    train = load_idx_split(name, "train", data_dir)
    test = load_idx_split(name, "test", data_dir)
    if not 0 <= val_size < len(train):
        raise ValueError(f"val_size must be in [0, {len(train)}), got {val_size}")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return train.subset(order[val_size:]), train.subset(order[:val_size]), test

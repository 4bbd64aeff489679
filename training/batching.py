"""Batches for the training loop: in-memory tensors indexed a batch at a time (MNIST-sized data), or
an image folder through a DataLoader with workers; both shuffled per epoch from (seed, epoch) and
sharded across data-parallel ranks."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from training.data import DATASETS, TensorDataset, train_val_test
from training.images import IMAGE_DATASETS, ImageFiles, celeba_splits

MAX_AUTO_WORKERS = 4  # image decoding and a 148 -> 64 resize: a few workers keep a GPU fed
ALL_DATASETS = (*sorted(DATASETS), *IMAGE_DATASETS)
Batch = tuple[torch.Tensor, torch.Tensor]  # images (B, C, H, W) float32, labels (B,) int64


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A distinct seed per (run seed, epoch, rank): a resumed epoch replays the same draws."""
    return (seed * 1_000_003 + epoch * 1_009 + rank) % (2**63)


class TensorBatches:
    """Batches of a whole split held as one tensor, by indexing; no per-item Python work."""

    def __init__(
        self, data: TensorDataset, batch_size: int, shuffle: bool, seed: int = 0,
        rank: int = 0, world_size: int = 1,
    ) -> None:  # fmt: skip
        self.data, self.batch_size, self.shuffle, self.seed = data, batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.per_rank = len(data) // world_size  # equal shares keep the ranks' steps in lock-step

    def __len__(self) -> int:
        return -(-self.per_rank // self.batch_size)

    def epoch(self, epoch: int = 0) -> Iterator[Batch]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            order = torch.randperm(len(self.data), generator=generator)
        else:
            order = torch.arange(len(self.data))
        mine = order[self.rank :: self.world_size][: self.per_rank].to(self.data.images.device)
        for start in range(0, len(mine), self.batch_size):
            index = mine[start : start + self.batch_size]
            yield self.data.images[index], self.data.labels[index]


def loader_workers(requested: int) -> int:
    """DataLoader workers: `requested`, or for -1 one per core this process may run on, at most
    MAX_AUTO_WORKERS (more workers than cores only contend, and torch warns about it)."""
    if requested < -1:
        raise ValueError(f"num_workers {requested}: use -1 (one per core) or a count of 0 or more")
    if requested >= 0:
        return requested
    return min(MAX_AUTO_WORKERS, len(os.sched_getaffinity(0)))


class LoaderBatches:
    """Batches of an image folder from a DataLoader with workers, moved to `device`."""

    def __init__(
        self, data: ImageFiles, batch_size: int, shuffle: bool, device: torch.device,
        seed: int = 0, rank: int = 0, world_size: int = 1, num_workers: int = 2,
    ) -> None:  # fmt: skip
        # drop_last: equal shares by leaving out the remainder, as TensorBatches does, rather than
        # padding the last share with repeats, which would train on some images twice an epoch.
        self.sampler = DistributedSampler(
            data, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=True
        )
        self.loader = DataLoader(
            data,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=num_workers > 0,
        )
        self.device = device

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int = 0) -> Iterator[Batch]:
        self.sampler.set_epoch(epoch)
        for images, labels in self.loader:
            yield images.to(self.device, non_blocking=True), labels.to(self.device)


@dataclass
class DataBundle:
    train: TensorBatches | LoaderBatches
    val: TensorBatches | LoaderBatches | None
    test: TensorBatches | LoaderBatches
    figure_images: torch.Tensor  # (M, C, H, W) test images for the pictures, on the device
    figure_labels: torch.Tensor  # (M,)
    class_names: tuple[str, ...]
    sizes: dict[str, int]


def load_data(config, device: torch.device, rank: int = 0, world_size: int = 1) -> DataBundle:
    """The three splits of `config.dataset` as batch sources (config: a TrainConfig)."""
    data_dir = Path(config.data_dir) if config.data_dir else None
    if config.dataset in IMAGE_DATASETS:
        splits = celeba_splits(data_dir, config.val_size, config.test_size, config.seed)
        train_files = splits.train
        if config.train_subset:
            train_files = ImageFiles(train_files.files[: config.train_subset])
        workers = loader_workers(config.num_workers)

        def loader(files: ImageFiles, shuffle: bool, world: int = 1, rank_: int = 0):
            size = config.batch_size if shuffle else config.eval_batch_size
            return LoaderBatches(files, size, shuffle, device, config.seed, rank_, world, workers)

        figures = torch.stack([splits.test[i][0] for i in range(min(len(splits.test), 64))])
        return DataBundle(
            loader(train_files, True, world_size, rank),
            loader(splits.val, False) if len(splits.val) else None,
            loader(splits.test, False),
            figures.to(device),
            torch.zeros(len(figures), dtype=torch.int64, device=device),
            (),
            {"train": len(train_files), "val": len(splits.val), "test": len(splits.test)},
        )
    if config.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {config.dataset!r}; choose one of {ALL_DATASETS}")
    train, val, test = train_val_test(config.dataset, data_dir, config.val_size, config.seed)
    if config.train_subset:
        train = train.subset(slice(0, config.train_subset))
    train, val, test = (d.to(device) for d in (train, val, test))
    size = config.eval_batch_size
    return DataBundle(
        TensorBatches(train, config.batch_size, True, config.seed, rank, world_size),
        TensorBatches(val, size, False) if len(val) else None,
        TensorBatches(test, size, False),
        test.images[:5000],
        test.labels[:5000],
        train.class_names,
        {"train": len(train), "val": len(val), "test": len(test)},
    )

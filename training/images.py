"""Image-folder data sets (CelebA): torchvision's `img_align_celeba` layout or any folder of images,
centre crop 148 and resize 64 (the common CelebA preprocessing), read through a DataLoader.

Where `<root>/celeba/list_eval_partition.txt` exists its official train/val/test split is used;
otherwise the sorted file list is split with a seeded shuffle into `val_size` and `test_size` rows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from training.data import DEFAULT_CACHE, DatasetNotFound

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
CELEBA_CROP = 148  # the face region of the 178x218 aligned images
CELEBA_SIDE = 64
IMAGE_DATASETS = ("celeba",)  # read from folders of image files, through celeba_transform


def celeba_transform(side: int = CELEBA_SIDE):
    from torchvision import transforms

    return transforms.Compose(
        [transforms.CenterCrop(CELEBA_CROP), transforms.Resize(side), transforms.ToTensor()]
    )


def preprocessing_of(dataset: str) -> dict[str, int | str]:
    """What model.json records of how training read `dataset`'s images, for clients to repeat with
    server/preprocessing.py: image folders go through celeba_transform (centre crop, then
    torchvision's Resize, bilinear on PIL images); IDX data sets ({}) are used as they are."""
    if dataset in IMAGE_DATASETS:
        return {"center_crop": CELEBA_CROP, "resample": "bilinear"}
    return {}


class ImageFiles(Dataset):
    """Files -> (image (3, side, side) float32 in [0, 1], label 0); the folder has no classes."""

    def __init__(self, files: list[Path], side: int = CELEBA_SIDE) -> None:
        self.files = files
        self.transform = celeba_transform(side)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.files[index]) as image:
            return self.transform(image.convert("RGB")), 0


def image_folder(root: Path) -> Path:
    """The folder holding the images: `<root>/celeba/img_align_celeba`, `<root>/img_align_celeba`,
    or `root` itself."""
    for candidate in (root / "celeba" / "img_align_celeba", root / "img_align_celeba", root):
        if candidate.is_dir() and any(
            p.suffix.lower() in IMAGE_SUFFIXES for p in candidate.iterdir()
        ):
            return candidate
    raise DatasetNotFound(
        f"celeba: no images ({', '.join(IMAGE_SUFFIXES)}) in {root}, {root / 'img_align_celeba'} "
        f"or {root / 'celeba' / 'img_align_celeba'}; pass --data-dir with a folder of images"
    )


def _download_celeba(root: Path) -> None:
    import torchvision.datasets as tv

    try:
        tv.CelebA(root=str(root), split="all", download=True)
    except Exception as exc:  # no network, or Google Drive's quota
        raise DatasetNotFound(
            f"celeba: no images under {root} and the torchvision download failed ({exc}). "
            "Put the images in a folder and pass --data-dir."
        ) from exc


def _official_split(folder: Path) -> dict[str, list[Path]] | None:
    partition = folder.parent / "list_eval_partition.txt"
    if not partition.is_file():
        return None
    splits: dict[str, list[Path]] = {"train": [], "val": [], "test": []}
    names = ("train", "val", "test")
    for line in partition.read_text().split("\n"):
        if line.strip():
            filename, code = line.split()
            if (folder / filename).is_file():
                splits[names[int(code)]].append(folder / filename)
    return splits


@dataclass
class ImageSplits:
    train: ImageFiles
    val: ImageFiles
    test: ImageFiles
    folder: Path


def celeba_splits(
    data_dir: Path | None,
    val_size: int,
    test_size: int,
    seed: int = 0,
    download: bool = True,
    side: int = CELEBA_SIDE,
) -> ImageSplits:
    """Train, validation and test sets of the image folder found under `data_dir` (or VAE_DATA_DIR,
    or the download cache)."""
    env_dir = os.environ.get("VAE_DATA_DIR")
    root = data_dir or (Path(env_dir) if env_dir else DEFAULT_CACHE)
    try:
        folder = image_folder(root)
    except DatasetNotFound:
        if not download or data_dir is not None:
            raise
        _download_celeba(root)
        folder = image_folder(root)
    splits = _official_split(folder)
    if splits is None:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if val_size < 0 or test_size < 1 or val_size + test_size >= len(files):
            raise ValueError(
                f"celeba: {len(files)} images in {folder} cannot hold val_size={val_size} and "
                f"test_size={test_size} and still leave training images; lower them"
            )
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
        shuffled = [files[i] for i in order]
        held = val_size + test_size
        splits = {
            "val": shuffled[:val_size],
            "test": shuffled[val_size:held],
            "train": shuffled[held:],
        }
    return ImageSplits(
        ImageFiles(splits["train"], side),
        ImageFiles(splits["val"], side),
        ImageFiles(splits["test"], side),
        folder,
    )

"""How an image file becomes a model's input, as training prepared its images: the `preprocessing`
entry of model.json, and `prepare_image`, which applies it with Pillow and numpy only.

Training reads CelebA-style folders by centre-cropping a 148-pixel square and resizing it to 64x64
with bilinear filtering (training/images.py), and MNIST-style data sets as they are. An image file
sent to such a model must go through the same steps, or its encoding is of a squashed, differently
framed face. Export writes the steps into model.json, the server returns them in GetModelInfo, and
vae-client (and any front that takes image files) applies them with `prepare_image`. A model.json
written before the field existed means what clients always did: resize straight to (H, W), bicubic.
Torch-free, so the server and the client may import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

# Pillow's filters by the names model.json uses.
RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
# What clients did before model.json said anything: Pillow's default filter for Image.resize.
LEGACY_RESAMPLE = "bicubic"


class PreprocessingError(ValueError):
    """A `preprocessing` entry that cannot be applied; the message says which value and why."""


@dataclass(frozen=True)
class Preprocessing:
    """The steps from an image file to the model's (C, H, W) input, in order:

    1. convert to grey (C = 1) or RGB (C = 3);
    2. if `center_crop` > 0, cut the centred `center_crop` x `center_crop` square, in pixels of the
       file (padding with black where the image is smaller, as torchvision's CenterCrop does);
    3. resize to (H, W) with the `resample` filter (no-op when already that size);
    4. scale to float32 in [0, 1].
    """

    center_crop: int = 0  # side of the square cut from the file first, pixels; 0: no crop
    resample: str = LEGACY_RESAMPLE  # nearest, bilinear, bicubic or lanczos

    @classmethod
    def from_dict(cls, data: Any, where: str = "preprocessing") -> Preprocessing:
        """From model.json's entry (absent or {}: the legacy steps); PreprocessingError if malformed."""
        if data is None or data == {}:
            return cls()
        if not isinstance(data, dict):
            raise PreprocessingError(f"{where} must be an object, got {data!r}")
        unknown = sorted(set(data) - {"center_crop", "resample"})
        if unknown:
            raise PreprocessingError(f"{where}: unknown fields {unknown}")
        crop = data.get("center_crop", 0)
        resample = data.get("resample", LEGACY_RESAMPLE) or LEGACY_RESAMPLE
        if isinstance(crop, bool) or not isinstance(crop, int) or crop < 0:
            raise PreprocessingError(f"{where}.center_crop must be an integer >= 0, got {crop!r}")
        if resample not in RESAMPLE:
            raise PreprocessingError(
                f"{where}.resample {resample!r} is not one of {', '.join(RESAMPLE)}"
            )
        return cls(crop, resample)

    def to_dict(self) -> dict[str, Any]:
        return {"center_crop": self.center_crop, "resample": self.resample}


def _center_crop(image: Image.Image, side: int) -> Image.Image:
    """torchvision's CenterCrop for PIL images: pad with black to at least `side` (the odd pixel
    on the right and bottom), then cut the centred square at round((size - side) / 2)."""
    width, height = image.size
    if width < side or height < side:
        pad_left, pad_top = max(side - width, 0) // 2, max(side - height, 0) // 2
        padded = Image.new(image.mode, (max(width, side), max(height, side)))
        padded.paste(image, (pad_left, pad_top))
        image, (width, height) = padded, padded.size
    left = round((width - side) / 2.0)  # half to even, as torchvision
    top = round((height - side) / 2.0)
    return image.crop((left, top, left + side, top + side))


def prepare_image(
    image: Image.Image, preprocessing: Preprocessing, image_shape: tuple[int, ...]
) -> np.ndarray:
    """One image file's pixels as the model's input: (C, H, W) float32 in [0, 1]."""
    channels, height, width = image_shape
    image = image.convert("L" if channels == 1 else "RGB")
    if preprocessing.center_crop > 0:
        image = _center_crop(image, preprocessing.center_crop)
    if image.size != (width, height):
        image = image.resize((width, height), RESAMPLE[preprocessing.resample])
    pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)

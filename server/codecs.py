"""Conversions between protobuf tensors, numpy arrays and PNG images, with request validation."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from server.errors import InvalidArgument, ResourceExhausted
from server.proto_gen.vae.v1 import vae_pb2

FLOAT32 = np.dtype("<f4")


def tensor_to_proto(array: np.ndarray) -> vae_pb2.Tensor:
    data = np.ascontiguousarray(array, dtype=FLOAT32)
    return vae_pb2.Tensor(shape=list(data.shape), data=data.tobytes())


def tensor_from_proto(tensor: vae_pb2.Tensor, what: str, max_elements: int) -> np.ndarray:
    """Decode a request tensor, refusing bad shapes, sizes that disagree, and NaN or inf values."""
    shape = tuple(int(d) for d in tensor.shape)
    if not shape:
        raise InvalidArgument(f"{what}: shape is empty; send the tensor's shape, e.g. [N, C, H, W]")
    if any(d <= 0 for d in shape):
        raise InvalidArgument(f"{what}: shape {list(shape)} has a non-positive dimension")
    count = int(np.prod(shape, dtype=np.int64))
    if count > max_elements:
        raise ResourceExhausted(
            f"{what}: {count} values is over this server's limit of {max_elements}; "
            "split the request"
        )
    expected = count * FLOAT32.itemsize
    if len(tensor.data) != expected:
        raise InvalidArgument(
            f"{what}: shape {list(shape)} needs {expected} bytes of little-endian float32, "
            f"got {len(tensor.data)}"
        )
    array = np.frombuffer(tensor.data, dtype=FLOAT32).reshape(shape)
    if not np.isfinite(array).all():
        raise InvalidArgument(
            f"{what}: contains NaN or infinite values; only finite values are allowed"
        )
    return array.astype(np.float32, copy=False)


def tensor_to_numpy(tensor: vae_pb2.Tensor) -> np.ndarray:
    """Client-side decode of a response tensor (trusted, no limits)."""
    return np.frombuffer(tensor.data, dtype=FLOAT32).reshape(tuple(tensor.shape))


def to_uint8(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) floats in [0, 1] -> (N, H, W, C) uint8."""
    clipped = np.clip(images, 0.0, 1.0)
    return (clipped.transpose(0, 2, 3, 1) * 255.0 + 0.5).astype(np.uint8)


def _png(pixels: np.ndarray) -> bytes:
    """(H, W, C) uint8 with C in {1, 3} -> PNG bytes."""
    mode_pixels = pixels[:, :, 0] if pixels.shape[2] == 1 else pixels
    buffer = io.BytesIO()
    Image.fromarray(mode_pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def images_to_png(images: np.ndarray) -> list[bytes]:
    """One PNG per image of an (N, C, H, W) batch."""
    return [_png(pixels) for pixels in to_uint8(images)]


def image_grid(images: np.ndarray, columns: int, padding: int = 2) -> np.ndarray:
    """Tile (N, C, H, W) images into one (C, rows*(H+p)+p, columns*(W+p)+p) image, white padding."""
    n, c, h, w = images.shape
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    grid = np.ones(
        (c, rows * (h + padding) + padding, columns * (w + padding) + padding), np.float32
    )
    for i in range(n):
        r, col = divmod(i, columns)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = images[i]
    return grid


def grid_png(images: np.ndarray, columns: int) -> bytes:
    """A PNG of the images tiled `columns` wide."""
    return images_to_png(image_grid(images, columns)[None])[0]

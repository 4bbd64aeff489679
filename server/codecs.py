"""Conversions between protobuf tensors, numpy arrays and PNG images, with request validation."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from server.errors import InvalidArgument, ResourceExhausted
from server.proto_gen.vae.v1 import vae_pb2

FLOAT32 = np.dtype("<f4")


UINT8 = np.dtype("u1")
_MAX_COUNT = 2**63  # beyond int64: no tensor of this size can exist, whatever the data
_DTYPE_NAMES = {
    vae_pb2.DATA_TYPE_FLOAT32: "DATA_TYPE_FLOAT32",
    vae_pb2.DATA_TYPE_UINT8: "DATA_TYPE_UINT8",
}


def tensor_to_proto(array: np.ndarray) -> vae_pb2.Tensor:
    data = np.ascontiguousarray(array, dtype=FLOAT32)
    return vae_pb2.Tensor(shape=data.shape, data=data.tobytes())


def set_tensor(field: vae_pb2.Tensor, array: np.ndarray) -> None:
    """Fill a response's Tensor field in place with float32 values: one copy of the data into the
    message, where building a Tensor and CopyFrom-ing it in makes two."""
    data = np.ascontiguousarray(array, dtype=FLOAT32)
    field.shape.extend(data.shape)
    field.data = data.tobytes()


def set_uint8_tensor(field: vae_pb2.Tensor, images: np.ndarray) -> None:
    """Fill a response's Tensor field with (N, C, H, W) images in [0, 1] as uint8 0..255."""
    pixels = images_to_uint8(images)
    field.shape.extend(pixels.shape)
    field.data = pixels.tobytes()
    field.dtype = vae_pb2.DATA_TYPE_UINT8


def images_to_uint8(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) floats in [0, 1] -> the same shape as uint8 0..255, rounded to nearest."""
    scaled = np.multiply(images, 255.0, dtype=np.float32)
    np.add(scaled, 0.5, out=scaled)
    np.clip(scaled, 0.0, 255.0, out=scaled)
    return scaled.astype(UINT8)


def _check_dims(shape: tuple[int, ...], what: str) -> None:
    if not shape:
        raise InvalidArgument(f"{what}: shape is empty; send the tensor's shape, e.g. [N, C, H, W]")
    if any(d <= 0 for d in shape):
        raise InvalidArgument(f"{what}: shape {list(shape)} has a non-positive dimension")


def element_count(shape: tuple[int, ...], what: str, max_elements: int) -> int:
    """The element count of a request tensor's shape, refusing empty and non-positive shapes, and
    shapes over `max_elements` (RESOURCE_EXHAUSTED), in exact integers that stop at the limit."""
    _check_dims(shape, what)
    count = 1
    for d in shape:
        count *= d
        if count > max_elements:
            dims = list(shape) if len(shape) <= 8 else f"of {len(shape)} dimensions"
            raise ResourceExhausted(
                f"{what}: shape {dims} is over this server's limit of {max_elements} values; "
                "split the request"
            )
    return count


def check_shape(shape: tuple[int, ...], what: str, data_bytes: int, itemsize: int) -> int:
    """The element count of a request tensor's shape, checked against the bytes that came with it.

    Refuses empty and non-positive shapes, and shapes the data does not fill, before any fixed-width
    arithmetic: the product is taken in Python integers and stops once it passes 2**63, so a shape
    like [2**40, 2**40] or a thousand huge dimensions costs nothing and overflows nothing.
    """
    _check_dims(shape, what)
    count, complete = 1, True
    for d in shape:
        count *= d
        if count > _MAX_COUNT:
            complete = False  # no message holds this much: no need for the exact product
            break
    if not complete or count * itemsize != data_bytes:
        kind = "uint8" if itemsize == 1 else "little-endian float32"
        needs = (
            f"{count * itemsize} bytes" if complete else "over 2**63 values (no message holds that)"
        )
        dims = list(shape) if len(shape) <= 8 else f"of {len(shape)} dimensions"
        raise InvalidArgument(
            f"{what}: shape {dims} needs {needs} of {kind}, got {data_bytes}; "
            "send shape and data that agree"
        )
    return count


def tensor_from_proto(
    tensor: vae_pb2.Tensor, what: str, max_elements: int, allow_uint8: bool = False
) -> np.ndarray:
    """Decode a request tensor to float32, refusing bad shapes, sizes that disagree, and NaN or inf.

    With `allow_uint8` (image inputs), a DATA_TYPE_UINT8 tensor is read as value / 255.
    """
    dtype = tensor.dtype
    if dtype not in (vae_pb2.DATA_TYPE_FLOAT32, vae_pb2.DATA_TYPE_UINT8) or (
        dtype == vae_pb2.DATA_TYPE_UINT8 and not allow_uint8
    ):
        allowed = "DATA_TYPE_FLOAT32 or DATA_TYPE_UINT8" if allow_uint8 else "DATA_TYPE_FLOAT32"
        raise InvalidArgument(
            f"{what}: dtype {_DTYPE_NAMES.get(dtype, dtype)} is not accepted here; allowed: "
            f"{allowed}"
        )
    shape = tuple(int(d) for d in tensor.shape)
    uint8 = dtype == vae_pb2.DATA_TYPE_UINT8
    count = check_shape(shape, what, len(tensor.data), 1 if uint8 else FLOAT32.itemsize)
    if count > max_elements:
        raise ResourceExhausted(
            f"{what}: {count} values is over this server's limit of {max_elements}; "
            "split the request"
        )
    if uint8:
        pixels = np.frombuffer(tensor.data, dtype=UINT8).reshape(shape)
        return np.multiply(pixels, np.float32(1.0 / 255.0), dtype=np.float32)
    array = np.frombuffer(tensor.data, dtype=FLOAT32).reshape(shape)
    if not np.isfinite(array).all():
        raise InvalidArgument(
            f"{what}: contains NaN or infinite values; only finite values are allowed"
        )
    return array


def tensor_to_numpy(tensor: vae_pb2.Tensor) -> np.ndarray:
    """Client-side decode of a response tensor (trusted, no limits): float32, or uint8 as sent."""
    dtype = UINT8 if tensor.dtype == vae_pb2.DATA_TYPE_UINT8 else FLOAT32
    return np.frombuffer(tensor.data, dtype=dtype).reshape(tuple(tensor.shape))


def to_uint8(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) floats in [0, 1] -> (N, H, W, C) uint8, the layout image files use."""
    return np.ascontiguousarray(images_to_uint8(images).transpose(0, 2, 3, 1))


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

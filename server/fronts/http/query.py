"""Query parameters and JSON arrays of the image routes, read with one-line refusals that name the
parameter, what was sent and what is allowed."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from server.errors import InvalidArgument


def _range(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f"an integer in {low}..{high}"
    if low is not None:
        return f"an integer >= {low}"
    return "an integer"


def optional_integer(
    query: Mapping[str, str], name: str, low: int | None = None, high: int | None = None
) -> int | None:
    text = query.get(name)
    if text is None or text == "":
        return None
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or (low is not None and value < low) or (high is not None and value > high):
        raise InvalidArgument(f"query parameter {name} must be {_range(low, high)}, got {text!r}")
    return value


def integer(
    query: Mapping[str, str],
    name: str,
    default: int,
    low: int | None = None,
    high: int | None = None,
) -> int:
    value = optional_integer(query, name, low, high)
    return default if value is None else value


def number(query: Mapping[str, str], name: str, default: float) -> float:
    text = query.get(name)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise InvalidArgument(f"query parameter {name} must be a finite number, got {text!r}")
    return value


def choice(query: Mapping[str, str], name: str, allowed: Sequence[str], default: str) -> str:
    value = query.get(name) or default
    if value not in allowed:
        raise InvalidArgument(
            f"query parameter {name} must be one of {', '.join(allowed)}, got {value!r}"
        )
    return value


def vector(query: Mapping[str, str], name: str, dim: int) -> np.ndarray:
    """A latent vector from comma-separated numbers, (dim,) float32."""
    text = query.get(name, "")
    try:
        values = [float(part) for part in text.split(",")] if text else []
    except ValueError:
        values = [math.nan]
    if len(values) != dim or not all(math.isfinite(v) for v in values):
        raise InvalidArgument(
            f"query parameter {name} must be {dim} finite numbers separated by commas (the "
            f"model's latent size), got {text[:80]!r}"
        )
    return np.asarray(values, dtype=np.float32)


def array(value: Any, name: str, ndim: int) -> np.ndarray:
    """A float32 array of `ndim` dimensions from nested JSON lists, finite values only."""
    layout = "[[...], ...] (N, D)" if ndim == 2 else "[[[[...]]]] (N, C, H, W)"
    try:
        loose = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        loose = np.zeros(0)
    result = loose.astype(np.float32) if loose.dtype.kind in "iuf" else np.zeros(0)
    if result.ndim != ndim or result.size == 0:
        raise InvalidArgument(
            f"{name} must be a non-empty list of numbers nested {ndim} deep, {layout}"
        )
    if not np.isfinite(result).all():
        raise InvalidArgument(f"{name} contains NaN or infinite values; only finite values")
    return result

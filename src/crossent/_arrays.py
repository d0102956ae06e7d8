"""Turning user arguments into NumPy arrays, with errors that name the argument.

Kept apart from :mod:`crossent._semantics` because it is NumPy-specific: the semantics module
decides the rules, this module only coerces and describes arrays for the NumPy executor.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))

# NumPy's bad-axis error: a ValueError and an IndexError (PyTorch raises IndexError for a
# dimension out of range).  It moved to numpy.exceptions in NumPy 1.25.
AxisError = getattr(np, "exceptions", np).AxisError


def describe(value: Any) -> str:
    """A short description of what arrived: ``float32 array of shape (2, 3)``."""
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {tuple(value.shape)}"
    return f"{type(value).__name__} {value!r}"[:120]


def as_float_array(value: Any, name: str, what: str = "a floating-point array") -> np.ndarray:
    """``value`` as a float16/32/64 array; integers, bools and complex are refused.

    Integer arrays are refused rather than converted because PyTorch refuses them for logits
    and probabilities, and because an integer array here is usually a swapped argument.
    """
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be {what}, got {describe(value)} ({exc})") from None
    if arr.dtype.kind != "f" or arr.dtype not in FLOAT_DTYPES:
        if arr.dtype.kind == "f":  # float128 and friends: no fast path, no PyTorch analogue
            raise TypeError(f"{name} must be float16, float32 or float64, got {arr.dtype}")
        raise TypeError(
            f"{name} must be {what} (float16, float32 or float64), got {describe(arr)}"
            + (
                "; convert it with .astype(float)"
                if arr.dtype.kind in "iub"
                else ""
            )
        )
    return arr


def compute_dtype(*dtypes: np.dtype) -> np.dtype:
    """The precision losses are computed in: float16 is widened to float32 (as on GPUs)."""
    dt = np.result_type(*dtypes)
    return np.dtype(np.float32) if dt == np.float16 else np.dtype(dt)


def as_grad_output(grad_output: Any, loss_shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """``grad_output`` broadcast to the loss's shape (default: ones)."""
    if grad_output is None:
        return np.ones(loss_shape, dtype=dtype)
    arr = np.asarray(grad_output)
    if arr.dtype.kind not in "fiu" or arr.dtype.kind == "b":
        raise TypeError(f"grad_output must be a real array or number, got {describe(grad_output)}")
    try:
        return np.broadcast_to(arr.astype(dtype, copy=False), loss_shape)
    except ValueError:
        raise ValueError(
            f"grad_output must have the loss's shape {tuple(loss_shape)} (or broadcast to it), "
            f"got shape {tuple(arr.shape)}"
        ) from None


def entry(name: str, arr: np.ndarray, position: tuple[int, ...]) -> str:
    """``name[i, j] = value`` for one entry (``name = value`` for a 0-d array)."""
    where = "[" + ", ".join(str(int(i)) for i in position) + "]" if position else ""
    return f"{name}{where} = {arr[position].item()!r}"


def first_position(mask: np.ndarray) -> tuple[int, ...]:
    """Index of the first True entry of ``mask`` (in C order)."""
    flat = int(np.flatnonzero(mask.reshape(-1))[0])
    return tuple(int(i) for i in np.unravel_index(flat, mask.shape))

"""Turning user arguments into NumPy arrays, with errors that name the argument.

Kept apart from :mod:`crossent._semantics` because it is NumPy-specific: the semantics module
decides the rules, this module only coerces and describes arrays for the NumPy executor.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _semantics as sem

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


def as_class_indices(target: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    """Integer class indices as int64, range-checked in their own dtype first.

    The one place a NumPy index target becomes int64.  Checking before the cast matters:
    a ``uint64`` index of ``2**63`` or more would wrap onto a negative number (``2**64 -
    100`` onto ``-100``, the default ``ignore_index``) and be silently ignored.  A bad index
    raises ``IndexError`` naming its value and position (C order, in the target's shape).
    ``ignore_index`` was checked by :func:`crossent._semantics.check_ignore_index`.
    """
    info = np.iinfo(target.dtype)
    bad = np.zeros(target.shape, dtype=bool)
    if num_classes <= info.max:  # else no value of this dtype reaches num_classes
        bad |= target >= num_classes
    if info.min < 0:
        bad |= target < 0
    if info.min <= ignore_index <= info.max:  # else no value of this dtype equals it
        bad &= target != ignore_index
    if bad.any():
        position = first_position(bad)
        raise IndexError(sem.out_of_range_message(int(target[position]), position,
                                                  num_classes, ignore_index))
    return target.astype(np.int64, copy=False)


def as_class_weight(weight: Any, num_classes: int, input_dtype: np.dtype, *,
                    probability: bool) -> np.ndarray:
    """Class weights ``(C,)`` for the softmax losses, by PyTorch's dtype rule.

    An array (or anything else that carries a floating dtype) must have the input's dtype
    for class-index targets (:func:`crossent._semantics.check_class_weight_dtype`); with
    probability targets it keeps its dtype and takes part in the promotion of the loss, as
    in PyTorch.  A Python list or tuple carries no dtype: it is converted to the input's.
    """
    w = as_float_array(weight, "weight", "a floating-point array of class weights")
    sem.check_class_weight(w.shape, num_classes)
    if hasattr(weight, "dtype"):
        sem.check_class_weight_dtype(w.dtype, input_dtype, probability)
        return w
    return w.astype(input_dtype)


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

"""Triton executor of crossent's cross-entropy (CUDA, or the CPU interpreter for tests).

* :func:`cross_entropy_fwd` (in :mod:`crossent.torch.triton.cross_entropy`): per-row losses
  and, in the same pass, the gradient, for every option of :class:`CrossEntropyParams`.
* :func:`is_available` / :func:`require_triton`: whether the kernels can run for a device;
  the dispatcher uses the first for ``impl="auto"`` and the second for an explicit
  ``impl="triton"``, which must fail loudly, never fall back.
* :func:`cross_entropy_rows_ref` (in :mod:`crossent.torch.triton.reference`): the plain
  float64 PyTorch definition the kernels are tested against.

Importing this package does not import Triton; the kernel modules do.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

__all__ = [
    "cross_entropy_fwd",
    "cross_entropy_rows_ref",
    "interpreter_enabled",
    "is_available",
    "plan_launch",
    "require_triton",
]


def interpreter_enabled() -> bool:
    """True when Triton's interpreter is switched on (``TRITON_INTERPRET=1``).

    Triton reads the variable when a kernel is *defined*; our kernel module is re-imported
    when the setting no longer matches (see ``cross_entropy._kernel_module``).
    """
    try:
        from triton import knobs

        return bool(knobs.runtime.interpret)
    except (ImportError, AttributeError):  # older Triton without knobs
        return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _missing(device: Any = None) -> str | None:
    """What stops the kernels from running on ``device`` (None: any device), or None."""
    if importlib.util.find_spec("triton") is None:
        return "the 'triton' package is not installed (pip install 'crossent[triton]')"
    try:
        import triton  # noqa: F401
    except Exception as exc:  # a broken install raises all sorts of things
        return f"'import triton' failed: {type(exc).__name__}: {exc}"
    import torch

    interpret = interpreter_enabled()
    if device is None:
        if interpret or torch.cuda.is_available():
            return None
        return "no CUDA device is available and TRITON_INTERPRET=1 is not set"
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "a CUDA device was asked for but torch.cuda.is_available() is False"
        return None
    if device.type == "cpu":
        if interpret:
            return None
        return (
            "tensors on the CPU need Triton's interpreter: set TRITON_INTERPRET=1 before "
            "triton is imported (slow; meant for tests), or move the tensors to a CUDA device"
        )
    return f"the Triton kernels run on CUDA devices (or the CPU interpreter), not on {device}"


def is_available(device: Any = None) -> bool:
    """Whether the Triton kernels can run: Triton importable and either a CUDA device
    (``device`` of type ``cuda``, or any CUDA device when ``device`` is None) or
    ``TRITON_INTERPRET=1`` for CPU tensors."""
    return _missing(device) is None


def require_triton(device: Any = None) -> None:
    """Raise ``RuntimeError`` naming what is missing when the kernels cannot run on
    ``device``; return None otherwise.  For an explicit ``impl="triton"``."""
    why = _missing(device)
    if why is not None:
        where = "" if device is None else f" for tensors on {device}"
        raise RuntimeError(f"impl='triton' cannot run{where}: {why}")


def __getattr__(name: str) -> Any:  # lazy: these import triton / torch
    if name in ("cross_entropy_fwd", "plan_launch"):
        from . import cross_entropy

        return getattr(cross_entropy, name)
    if name == "cross_entropy_rows_ref":
        from .reference import cross_entropy_rows_ref

        return cross_entropy_rows_ref
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

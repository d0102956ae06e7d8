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
import sys
from typing import Any

__all__ = [
    "cross_entropy_fwd",
    "cross_entropy_rows_ref",
    "interpreter_enabled",
    "is_available",
    "plan_launch",
    "require_triton",
]


def _env_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def interpreter_enabled() -> bool:
    """True when Triton runs kernels with its interpreter (CPU tensors allowed).

    Triton fixes the mode when it is *imported* (its own ``tl.sum``, ``tl.max`` are defined
    then), so once triton is imported this reports the mode it was imported in, whatever
    ``TRITON_INTERPRET`` says now; before that, it reports what the variable will select.
    Checking does not import triton.
    """
    if "triton" not in sys.modules:
        return _env_interpret()
    try:
        import triton.language.standard as standard
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # a Triton without these modules: trust the variable
        return _env_interpret()
    return isinstance(standard.sum, InterpretedFunction)


def _missing(device: Any = None, allow_interpreter: bool = True) -> str | None:
    """What stops the kernels from running on ``device`` (None: any device), or None."""
    if "triton" not in sys.modules and importlib.util.find_spec("triton") is None:
        return "the 'triton' package is not installed (pip install 'crossent[triton]')"
    import torch

    interpret = allow_interpreter and interpreter_enabled()
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
        if not allow_interpreter:
            return "the Triton kernels run on CUDA devices; CPU tensors are not accepted here"
        if _env_interpret():  # set, but too late
            return (
                "TRITON_INTERPRET=1 was set after triton had been imported; Triton reads it "
                "at import, so set it before the first 'import triton'"
            )
        return (
            "tensors on the CPU need Triton's interpreter: set TRITON_INTERPRET=1 before "
            "triton is imported (slow; meant for tests), or move the tensors to a CUDA device"
        )
    return f"the Triton kernels run on CUDA devices (or the CPU interpreter), not on {device}"


def is_available(device: Any = None, *, allow_interpreter: bool = True) -> bool:
    """Whether the Triton kernels can run: Triton installed and either a CUDA device
    (``device`` of type ``cuda``, or any CUDA device when ``device`` is None) or, for CPU
    tensors, Triton's interpreter (``TRITON_INTERPRET=1`` before triton is imported).

    ``allow_interpreter=False`` leaves the interpreter out: an ``impl="auto"`` dispatcher
    should not send CPU tensors to a kernel that runs hundreds of times slower than the CPU
    executor just because a test process switched the interpreter on.  Does not import
    triton (a broken installation shows up at the first launch).
    """
    return _missing(device, allow_interpreter) is None


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

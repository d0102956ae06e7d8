"""Choosing an executor explicitly: ``impl="auto" | "cpu" | "torch" | "triton"``.

* ``"cpu"``: crossent's fused NumPy pass (:mod:`crossent._kernel`) on the tensor's memory,
  threaded over row blocks; CPU tensors only.  The fastest choice on CPUs.
* ``"torch"``: the same maths in row blocks of plain torch operations; any device.
* ``"triton"``: Triton kernels (:mod:`crossent.torch.triton`); CUDA tensors, or CPU tensors
  under ``TRITON_INTERPRET=1`` (how the test-suite checks them without a GPU).
* ``"auto"``: ``"cpu"`` for CPU tensors, ``"triton"`` for float32/float16/bfloat16 CUDA
  tensors when triton is installed, ``"torch"`` otherwise (float64 included: the kernels
  compute in float32).

An explicit choice that cannot run raises ``RuntimeError`` naming what is missing; an unknown
name raises ``ValueError``.  Nothing falls back silently.
"""

from __future__ import annotations

import torch

IMPLS = ("auto", "cpu", "torch", "triton")


def _triton_ready(device: torch.device) -> bool:
    try:
        from .triton import is_available
    except ImportError:
        return False
    return bool(is_available(device, allow_interpreter=False))


def check_impl(impl: object) -> str:
    """``impl`` validated: one of :data:`IMPLS` (whether it can run is decided later)."""
    if not isinstance(impl, str) or impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(map(repr, IMPLS))}, got {impl!r}")
    return impl


def auto_impl(device_type: str, dtype: torch.dtype, triton_ready: bool) -> str:
    """What ``impl="auto"`` means on a device type for logits of ``dtype``: ``"cpu"`` on
    CPUs, ``"triton"`` for float32/float16/bfloat16 CUDA tensors when the kernels can run
    (``triton_ready``), ``"torch"`` otherwise."""
    if device_type == "cpu":
        return "cpu"
    if device_type == "cuda" and dtype != torch.float64 and triton_ready:
        return "triton"
    return "torch"


def resolve_impl(impl: str, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """The concrete executor for ``impl`` on ``device`` for logits of ``dtype``."""
    check_impl(impl)
    if impl == "auto":
        return auto_impl(device.type, dtype, device.type == "cuda" and _triton_ready(device))
    if impl == "cpu" and device.type != "cpu":
        raise RuntimeError(
            f"impl='cpu' runs crossent's NumPy pass on CPU tensors only, got a tensor on "
            f"{device}; use impl='auto', 'torch' or 'triton'"
        )
    if impl == "triton":
        try:
            from .triton import require_triton
        except ImportError as exc:
            raise RuntimeError(
                f"impl='triton' needs the triton package, which failed to import ({exc}); "
                "install crossent[triton] or use impl='auto'"
            ) from exc
        require_triton(device)
        if dtype == torch.float64:
            raise RuntimeError(
                "impl='triton' computes in float32 and does not take float64 logits; use "
                "impl='auto' (which picks 'cpu' or 'torch' for float64) or 'torch'"
            )
    return impl

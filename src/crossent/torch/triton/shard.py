"""Host side of the Triton shard pass: check, plan, launch (:mod:`crossent.torch._shard`).

:func:`shard_statistics_triton` and :func:`shard_gradient_triton` are the ``"triton"``
executor of the shard pass.  One program per row; a shard of at most
:data:`~crossent.torch.triton.cross_entropy.SINGLE_BLOCK_MAX` real columns is one block,
a longer one is streamed in blocks of ``STREAM_BLOCK`` (the statistics by the online rule).
Like the fused kernels' host code, nothing here reads the data: no ``.item()``, no host
synchronisation, a plan that depends only on shapes.
"""

from __future__ import annotations

import torch

from crossent.torch._params import CrossEntropyParams

from . import require_triton
from .cross_entropy import (
    SINGLE_BLOCK_MAX,
    STREAM_BLOCK,
    _check,
    _device_guard,
    _next_pow2,
    _warps,
)

__all__ = ["shard_gradient_triton", "shard_statistics_triton"]


def _block(real: int, block_size: int | None) -> int:
    if block_size is not None:
        if block_size < 1 or block_size & (block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {block_size!r}")
        return block_size
    whole = _next_pow2(max(real, 1))
    return whole if whole <= SINGLE_BLOCK_MAX else STREAM_BLOCK


def _launch_args(logits, target, params, weight, col_start, num_classes):
    if not isinstance(col_start, int) or col_start < 0:
        raise ValueError(f"col_start must be an int >= 0, got {col_start!r}")
    rows, columns = logits.shape
    real = max(0, min(columns, num_classes - col_start))
    eps = float(params.label_smoothing)
    softcap = params.softcap
    if params.probability and columns > 1 and target.stride(1) != 1:
        target = target.contiguous()  # the kernels read target rows like logits rows
    w = weight.contiguous() if weight is not None else None
    if w is not None and tuple(w.shape) != (num_classes,):
        raise ValueError(f"weight must have shape ({num_classes},), got {tuple(w.shape)}")
    flags = dict(
        IS_PROB=bool(params.probability),
        HAS_WEIGHT=w is not None,
        SMOOTH=eps > 0.0,
        HAS_SOFTCAP=softcap is not None,
    )
    scalars = dict(
        keep=1.0 - eps,
        uniform=eps / num_classes,  # label smoothing's eps / C over the real classes
        softcap=float(softcap) if softcap is not None else 1.0,
        inv_softcap=1.0 / float(softcap) if softcap is not None else 1.0,
    )
    return target, w, real, flags, scalars


def shard_statistics_triton(
    logits: torch.Tensor, target: torch.Tensor, params: CrossEntropyParams,
    weight: torch.Tensor | None, col_start: int, num_classes: int, *,
    block_size: int | None = None,
) -> torch.Tensor:
    """The shard's ``(4, M)`` float32 statistics ``(m, s, d, A)`` (see ``_shard``)."""
    # the fused kernels' checks, with the shard's own weight rule (full, not per column)
    _check(logits, target, params, None, None, None)
    device = logits.device
    require_triton(device)
    from . import _shard_kernels as k

    rows, _ = logits.shape
    target, w, real, flags, scalars = _launch_args(logits, target, params, weight,
                                                   col_start, num_classes)
    stats = torch.empty((4, rows), dtype=torch.float32, device=device)
    if rows == 0:
        return stats
    block = _block(real, block_size)
    with _device_guard(device):
        k.shard_stats_kernel[(rows,)](
            logits, logits.stride(0), target, target.stride(0),
            w if w is not None else stats, stats, rows, real, col_start,
            int(params.ignore_index), **scalars, BLOCK=block, num_warps=_warps(block), **flags,
        )
    return stats


def shard_gradient_triton(
    logits: torch.Tensor, combined: torch.Tensor, target: torch.Tensor,
    params: CrossEntropyParams, weight: torch.Tensor | None, col_start: int, num_classes: int,
    grad_scale: torch.Tensor, grad_out: torch.Tensor, *, block_size: int | None = None,
) -> torch.Tensor:
    """Write the shard's gradient into ``grad_out`` (may be ``logits``) and return it."""
    _check(logits, target, params, None, grad_scale, grad_out)
    device = logits.device
    require_triton(device)
    from . import _shard_kernels as k

    rows, columns = logits.shape
    if tuple(combined.shape) != (4, rows):
        raise ValueError(f"combined must have shape (4, {rows}), got {tuple(combined.shape)}")
    target, w, real, flags, scalars = _launch_args(logits, target, params, weight,
                                                   col_start, num_classes)
    if rows == 0:
        return grad_out
    combined = combined.to(torch.float32).contiguous()
    scale = grad_scale.to(torch.float32)
    block = _block(real, block_size)
    with _device_guard(device):
        k.shard_grad_kernel[(rows,)](
            logits, logits.stride(0), target, target.stride(0),
            w if w is not None else combined, combined, rows,
            scale, scale.stride(0) if scale.dim() == 1 else 0,
            grad_out, grad_out.stride(0), real, columns, col_start,
            int(params.ignore_index), z_loss=float(params.z_loss), **scalars, BLOCK=block,
            HAS_ZLOSS=params.z_loss != 0.0, num_warps=_warps(block), **flags,
        )
    return grad_out

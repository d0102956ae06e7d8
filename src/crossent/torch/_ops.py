"""The fused pass as ``torch.library`` custom ops, so ``torch.compile(fullgraph=True)`` can
trace through it (each op has a fake implementation that only says shapes and dtypes).

* ``crossent::cross_entropy_fwd``: per-row losses, the ``'mean'`` denominator and, if asked,
  a freshly allocated gradient (for ``d reduced loss / d logits`` with upstream gradient 1);
* ``crossent::cross_entropy_fwd_inplace``: the same, with the gradient written over the
  logits (the caller agreed they are consumed);
* ``crossent::scale_rows_``: multiplies a gradient in place by the upstream gradient (a
  scalar, or one factor per row for ``reduction='none'``).

The executor is chosen by the caller (:func:`crossent.torch._impl.resolve_impl`) and passed
as a string, so these ops never decide anything by themselves.
"""

from __future__ import annotations

import numpy as np
import torch

from ._params import CrossEntropyParams
from ._rows import check_targets_and_scale, compute_dtype, rows_executor


def _forward(logits, target, weight, reduction, params, impl, grad_out, target_shape):
    """Range check, the 'mean' denominator, then the executor; returns (per_row, denominator)."""
    cd = compute_dtype(logits.dtype, target.dtype if params.probability else logits.dtype)
    w = weight.to(torch.float32 if impl == "triton" else cd) if weight is not None else None
    denominator, scale = check_targets_and_scale(
        target, params, w, logits.shape[1], reduction, cd, tuple(target_shape))
    if impl == "triton":
        scale = scale.float()
    per_row = rows_executor(impl)(logits, target, params, w,
                                  scale if grad_out is not None else None, grad_out)
    return per_row.to(cd), denominator


def _new_gradient(logits: torch.Tensor, impl: str) -> torch.Tensor:
    """A fresh ``(M, C)`` gradient buffer.

    On CPU it comes from NumPy, whose allocator asks Linux for transparent huge pages on big
    arrays: first-touch page faults then cost about a fifth of what 4 KiB pages cost (0.05 s
    instead of 0.25 s for 500 MB, measured on the 2-core EPYC), which is most of the pass.
    """
    if impl != "cpu":
        return torch.empty_like(logits)
    if logits.dtype == torch.bfloat16:
        return torch.from_numpy(np.empty(tuple(logits.shape), np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(np.empty(tuple(logits.shape), _NUMPY_DTYPES[logits.dtype]))


_NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


def register_looping_vmap(op) -> None:
    """A ``torch.vmap`` rule for a custom op: call it once per batch element and stack.

    ``torch.func`` transforms of the autograd Functions (``vmap(grad(...))``, ``jacrev``,
    ``jacfwd``) vmap the forward; these ops keep their per-call semantics (a ``'mean'`` is
    the mean of each batch element), which a loop states plainly.
    """

    def rule(info, in_dims, *args):
        results = []
        for index in range(info.batch_size):
            results.append(op(*(arg.select(dim, index) if isinstance(dim, int) else arg
                                 for arg, dim in zip(args, in_dims))))
        stacked = tuple(torch.stack(parts) for parts in zip(*results))
        return stacked, (0,) * len(stacked)

    torch.library.register_vmap(op, rule)


def _fake_outputs(logits, target, probability):
    cd = compute_dtype(logits.dtype, target.dtype if probability else logits.dtype)
    rows = logits.shape[0] * (logits.shape[2] if logits.ndim == 3 else 1)
    return (logits.new_empty((rows,), dtype=cd), logits.new_empty((), dtype=cd))


@torch.library.custom_op("crossent::cross_entropy_fwd", mutates_args=())
def cross_entropy_fwd(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, reduction: str,
    probability: bool, ignore_index: int, label_smoothing: float, z_loss: float,
    softcap: float | None, want_grad: bool, impl: str, target_shape: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grad = _new_gradient(logits, impl) if want_grad else logits.new_empty((0,))
    params = CrossEntropyParams(probability, ignore_index, label_smoothing, z_loss, softcap)
    per_row, denominator = _forward(logits, target, weight, reduction, params, impl,
                                    grad if want_grad else None, target_shape)
    return per_row, denominator, grad


@cross_entropy_fwd.register_fake
def _(logits, target, weight, reduction, probability, ignore_index, label_smoothing, z_loss,
      softcap, want_grad, impl, target_shape):
    grad = torch.empty_like(logits) if want_grad else logits.new_empty((0,))
    return (*_fake_outputs(logits, target, probability), grad)


@torch.library.custom_op("crossent::cross_entropy_fwd_inplace", mutates_args=("logits",))
def cross_entropy_fwd_inplace(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, reduction: str,
    probability: bool, ignore_index: int, label_smoothing: float, z_loss: float,
    softcap: float | None, impl: str, target_shape: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    params = CrossEntropyParams(probability, ignore_index, label_smoothing, z_loss, softcap)
    return _forward(logits, target, weight, reduction, params, impl, logits, target_shape)


register_looping_vmap(cross_entropy_fwd)


@cross_entropy_fwd_inplace.register_fake
def _(logits, target, weight, reduction, probability, ignore_index, label_smoothing, z_loss,
      softcap, impl, target_shape):
    return _fake_outputs(logits, target, probability)


@torch.library.custom_op("crossent::scale_rows_", mutates_args=("grad",))
def scale_rows_(grad: torch.Tensor, scale: torch.Tensor) -> None:
    """``grad *= scale`` in place; ``scale`` is 0-d or one factor per row of ``grad``."""
    if grad.device.type == "cpu" and scale.numel() == 1 and scale.item() == 1.0:
        return  # loss.backward(): nothing to scale (a host value here, so no device sync)
    # multiply in the scale's (float32/64) precision; the product is rounded once
    grad.mul_(scale if scale.ndim == 0 else scale.reshape(-1, *([1] * (grad.ndim - 1))))


@scale_rows_.register_fake
def _(grad, scale):
    return None

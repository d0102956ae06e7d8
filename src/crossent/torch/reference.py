"""Plain-PyTorch references for the fused ops (DESIGN.md example 2): the definitions the
fast paths are tested against, written with ``torch.nn.functional`` in float64 (or float32)
so that a reader can check them by eye.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _semantics as sem


def cross_entropy_ref(
    input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
    ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0, *,
    z_loss: float = 0.0, softcap: float | None = None, dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """``F.cross_entropy`` in ``dtype`` plus the two extras, as formulas.

    softcap: ``x -> softcap * tanh(x / softcap)`` before the loss.  z-loss: each element adds
    ``z_loss * w[y_n] * logsumexp(x_n)**2`` (``w[y_n] = 0`` when ignored, 1 for probability
    targets), reduced with the loss's own reduction and ``'mean'`` denominator.
    """
    x = input.to(dtype)
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    w = weight.to(dtype) if weight is not None else None
    probability = sem.is_probability_target(tuple(input.shape), tuple(target.shape))
    t = target.to(dtype) if probability else target
    if z_loss == 0.0:
        return F.cross_entropy(x, t, w, ignore_index=ignore_index, reduction=reduction,
                               label_smoothing=label_smoothing)
    per_element = F.cross_entropy(x, t, w, ignore_index=ignore_index, reduction="none",
                                  label_smoothing=label_smoothing)
    class_axis = 0 if x.ndim == 1 else 1
    lse = torch.logsumexp(x, dim=class_axis)
    if probability:
        w_n = torch.ones_like(lse)
        denominator = sem.mean_denominator_probability(lse.numel())
    else:
        _, w_n = sem.index_row_weights(target, ignore_index, w)
        w_n = w_n.to(dtype)
        denominator = sem.mean_denominator_index(w_n)
    per_element = per_element + z_loss * w_n * lse * lse
    return sem.reduce_loss(per_element, reduction, denominator)


def linear_cross_entropy_ref(
    input: torch.Tensor, linear_weight: torch.Tensor, target: torch.Tensor, *,
    linear_bias: torch.Tensor | None = None, weight: torch.Tensor | None = None,
    reduction: str = "mean", ignore_index: int = -100, label_smoothing: float = 0.0,
    z_loss: float = 0.0, softcap: float | None = None, dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """The naive op: full logits ``input @ linear_weight.T + linear_bias`` in ``dtype``, rows
    flattened with classes last, then :func:`cross_entropy_ref`."""
    vocab = linear_weight.shape[0]
    logits = F.linear(input.to(dtype), linear_weight.to(dtype),
                      linear_bias.to(dtype) if linear_bias is not None else None)
    lead = tuple(input.shape[:-1])
    probability = tuple(target.shape) == lead + (vocab,)
    rows = logits.reshape(-1, vocab) if lead else logits
    rows_target = (target.reshape(-1, vocab) if probability else target.reshape(-1)) if lead \
        else target
    loss = cross_entropy_ref(rows, rows_target, weight, ignore_index, reduction,
                             label_smoothing, z_loss=z_loss, softcap=softcap, dtype=dtype)
    return loss.reshape(lead) if reduction == "none" else loss

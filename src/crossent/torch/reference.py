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
    r"""``F.cross_entropy`` in ``dtype`` plus the two extras, as formulas.

    .. math:: \ell_n = \operatorname{CE}(z_n, y_n) + \text{z\_loss}\; w_n
        \operatorname{lse}(z_n)^2, \qquad z = s \tanh(x / s) \text{ or } x

    softcap ``s``: ``x -> softcap * tanh(x / softcap)`` before the loss.  z-loss: each element
    adds ``z_loss * w_n * logsumexp(x_n)**2`` with ``w_n = w[y_n]`` (0 when ignored, 1 for
    probability targets), reduced with the loss's own reduction and ``'mean'`` denominator.
    Without the extras it is ``F.cross_entropy(input.to(dtype), target, ...)`` itself: the
    definition :func:`crossent.torch.cross_entropy` is tested against.

    Shapes are ``F.cross_entropy``'s: ``input`` ``(N, C)``, ``(C,)`` or
    ``(N, C, d1, ..., dK)``; ``target`` class indices ``(N,)``, ``()``, ``(N, d1, ..., dK)``
    or probabilities of the input's shape; ``weight`` ``(C,)``.  The loss is in ``dtype``
    (float64 by default): 0-d, or the batch shape for ``reduction='none'``.

    >>> import torch
    >>> import crossent.torch as ct
    >>> x, y = torch.tensor([[2.0, 4.0, 0.5], [1.0, 1.0, 1.0]]), torch.tensor([0, 2])
    >>> ct.cross_entropy_ref(x, y, z_loss=1e-2)
    tensor(1.7342, dtype=torch.float64)
    >>> round(ct.cross_entropy(x, y, z_loss=1e-2).item(), 6)  # the fast path, in float32
    1.734161
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
    r"""The naive op: full logits ``input @ linear_weight.T + linear_bias`` in ``dtype``, rows
    flattened with classes last, then :func:`cross_entropy_ref`.

    .. math:: \ell = \operatorname{CE}(h W^\top + b,\; y)

    the definition :func:`crossent.torch.linear_cross_entropy` is tested against; it holds
    the whole ``(N, V)`` logits in ``dtype`` (float64 by default).

    Shapes: ``input`` ``(..., D)`` (``(N, D)``, ``(B, T, D)``), ``linear_weight`` ``(V, D)``
    (a two-dimensional head only), ``linear_bias`` ``(V,)``; ``target`` class indices
    ``(...)`` or probabilities ``(..., V)``; the loss is 0-d, or ``(...)`` for
    ``reduction='none'``.

    >>> import torch
    >>> import crossent.torch as ct
    >>> h = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])                 # (B, T, D)
    >>> W = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.5, 0.5]])       # (V, D)
    >>> ct.linear_cross_entropy_ref(h, W, torch.tensor([[0, 1]]), reduction="none")
    tensor([[0.3064, 0.6803]], dtype=torch.float64)
    """
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

r"""The per-sample losses :class:`~crossent.SoftmaxRegression` trains on, as functions of the
logits: cross-entropy (the NumPy core's) and squared error on the softmax probabilities.

NumPy only, so that :mod:`crossent.plots` can draw these very functions without scikit-learn.
Each returns ``(per-sample loss, row_scale * d loss / d logits)``.
"""

from __future__ import annotations

import numpy as np

from . import _semantics as sem
from .functional import cross_entropy, cross_entropy_with_grad, softmax


def cross_entropy_rows(z, y, weight, label_smoothing, row_scale, want_grad=True):
    """Per-sample cross-entropies ``CE_i`` and ``row_scale_i * dCE_i/dz_i`` (the logits).

    Straight from the NumPy core: ``reduction='none'`` with ``grad_output=row_scale`` gives
    both in one fused pass.
    """
    if not want_grad:
        return cross_entropy(z, y, weight=weight, reduction="none",
                             label_smoothing=label_smoothing), None
    return cross_entropy_with_grad(z, y, weight=weight, reduction="none",
                                   label_smoothing=label_smoothing, grad_output=row_scale)


def squared_error_rows(z, y, weight, label_smoothing, row_scale, want_grad=True):
    r"""Per-sample squared errors ``SE_i`` and ``row_scale_i * dSE_i/dz_i`` (the logits).

    .. math:: \mathrm{SE}(z, y) = w_y \sum_c (\operatorname{softmax}(z)_c - t_c)^2,
        \qquad t = (1 - \varepsilon)\,\mathrm{onehot}(y) + \varepsilon / C

    This is the squared error the "why cross-entropy" argument compares against (its mean
    over samples is the multi-class Brier score).  The NumPy core is a cross-entropy library
    and has no squared-error loss, so the one new piece of maths lives here: the chain rule
    through the softmax.  With ``p = crossent.softmax(z)`` and the upstream gradient
    ``g = dSE/dp = 2 w_y (p - t)``, the softmax Jacobian ``J = diag(p) - p p^T`` is applied as
    the vector product

    .. math:: \frac{\partial \mathrm{SE}}{\partial z} = J^\top g = p \odot (g - (g \cdot p))

    which costs O(C) per sample instead of forming the C x C Jacobian.  The factor ``p`` in
    it is why squared error learns slowly when a confident prediction is wrong: as the
    probability of the true class goes to 0 its gradient vanishes, where cross-entropy's
    ``p - t`` stays large.
    """
    n, num_classes = z.shape
    p = softmax(z, axis=1)
    target = np.zeros_like(p)
    target[np.arange(n), y] = 1.0
    target = sem.smoothed_probabilities(target, label_smoothing, num_classes)
    residual = p - target
    w_y = np.ones(n) if weight is None else weight[y]
    per_row = w_y * np.einsum("ij,ij->i", residual, residual)
    if not want_grad:
        return per_row, None
    g = residual
    g *= (2.0 * w_y * row_scale)[:, None]  # dSE/dp, scaled per row
    grad = p * (g - np.einsum("ij,ij->i", g, p)[:, None])
    return per_row, grad


LOSS_ROWS = {"cross_entropy": cross_entropy_rows, "mse": squared_error_rows}

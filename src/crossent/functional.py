r"""Cross-entropy losses on NumPy arrays, with PyTorch's exact semantics and gradients.

Every loss ``f`` has a twin ``f_with_grad(<same arguments>, grad_output=None)`` that returns
``(loss, grad_input)`` from one fused pass; ``grad_input`` is what PyTorch's autograd gives
for ``input`` when the loss is back-propagated with ``grad_output`` (default 1).

The class axis is PyTorch's: axis 1 of ``(N, C)`` and ``(N, C, d1, ..., dK)`` inputs, axis 0
of an unbatched ``(C,)`` input.  float16 inputs are computed in float32 and returned as
float16; float32 and float64 keep their dtype.

Where PyTorch returns NaN only through ``0 * log 0``, these functions return the finite,
mathematically right value:

* :func:`cross_entropy`: a class whose target coefficient is 0 and whose logit is ``-inf``
  contributes 0 (PyTorch: NaN).  The coefficient is 0 for a probability-target entry of 0,
  for a class index whose class weight is 0, and, under label smoothing, for a class whose
  weight is 0.  A positive coefficient on a ``-inf`` logit still costs ``inf``;
* ignored elements whose logits are not finite: gradient 0 (PyTorch: NaN, pytorch#11551);
* :func:`binary_cross_entropy_with_logits` at ``(+inf, y=1)`` and ``(-inf, y=0)``: loss 0,
  gradient 0 (PyTorch: NaN, pytorch#49844); at ``(-inf, y>0)`` the loss is ``inf``, the
  right value (PyTorch: NaN through its ``(1 - y) * x`` term, ``0 * -inf`` at ``y = 1``);
* :func:`kl_div` where the target probability is 0 (a target of 0, or a ``log_target`` of
  ``-inf``) and the input is ``-inf``, or, with ``log_target=True``, any finite input: 0
  (PyTorch: NaN through ``0 * -inf``).  An input of ``+inf`` or NaN stays NaN, as in
  PyTorch: ``+inf`` is no log-probability, so ``0 * log 0`` does not arise there.

Everywhere else the numbers are PyTorch's, NaN included (an all ``-inf`` row, a ``+inf``
logit, a NaN logit).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from . import _semantics as sem
from ._arrays import (
    AxisError,
    as_class_indices,
    as_class_weight,
    as_float_array,
    as_grad_output,
    compute_dtype,
    describe,
    entry,
    first_position,
)
from ._kernel import build_row_targets, fused_softmax_cross_entropy

__all__ = [
    "softmax",
    "log_softmax",
    "logsumexp",
    "cross_entropy",
    "cross_entropy_with_grad",
    "nll_loss",
    "nll_loss_with_grad",
    "binary_cross_entropy",
    "binary_cross_entropy_with_grad",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_with_grad",
    "kl_div",
    "kl_div_with_grad",
]


# --------------------------------------------------------------------------------------------
# softmax, log_softmax, logsumexp
# --------------------------------------------------------------------------------------------


def _axes(x: np.ndarray, axis: Any, *, many: bool = False) -> tuple[np.ndarray, tuple[int, ...]]:
    """``(array, axes)``: the axes to work along, as non-negative ints, PyTorch's rules.

    ``axis`` is an int (``many``: also a tuple or list of ints, as ``torch.logsumexp``'s
    ``dim``).  A 0-d array is PyTorch's one-element vector: axis ``0`` or ``-1`` (or ``()``)
    works along it, and it comes back 0-d.  An axis out of range raises NumPy's
    ``AxisError`` (a ``ValueError`` and an ``IndexError``, PyTorch's type); an axis named
    twice, or ``()`` on an array with axes, raises ``ArgumentError`` (PyTorch:
    ``RuntimeError``).
    """
    what = "an int or a tuple of ints" if many else "an int"
    if many and isinstance(axis, (tuple, list)):
        items = list(axis)
    else:
        items = [axis]
    for a in items:
        if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
            raise TypeError(f"axis must be {what}, got {type(axis).__name__} {axis!r}")
    shape = x.shape
    if x.ndim == 0:
        x = x.reshape(1)  # PyTorch treats a 0-d tensor as one element along dim 0 / -1
        if not items:
            return x, (0,)
    if not items:
        raise sem.ArgumentError(
            f"axis must name at least one axis of the array of shape {shape}, got {axis!r}")
    ndim = x.ndim
    resolved = []
    for a in items:
        if not -ndim <= a < ndim:
            raise AxisError(f"axis {int(a)} is out of range for an array of shape {shape}: "
                            f"expected an axis in [{-ndim}, {ndim - 1}]")
        a = int(a) % ndim
        if a in resolved:
            raise sem.ArgumentError(f"axis {a} appears more than once in axis={axis!r}")
        resolved.append(a)
    return x, tuple(resolved)


def _max_shift(xc: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """The row max along ``axes``, kept as an axis; ``-inf`` over an empty axis (no error)."""
    return np.max(xc, axis=axes, keepdims=True, initial=-np.inf)


def logsumexp(x: Any, axis: Any = -1, keepdims: bool = False) -> np.ndarray:
    r"""``log(sum(exp(x), axis))``, stable for huge and infinite entries.

    .. math:: \operatorname{lse}(x) = m + \log \sum_i e^{x_i - m}, \quad m = \max_i x_i

    Same as ``torch.logsumexp(x, dim=axis, keepdim=keepdims)`` (and
    ``scipy.special.logsumexp``).  All ``-inf`` gives ``-inf``, and so does an empty axis (an
    empty sum); any ``+inf`` gives ``inf``; NaN gives NaN (as ``torch``).

    Args:
        x: floating-point values of any shape: logits ``(C,)``, ``(N, C)``,
            ``(N, C, d1, ..., dK)``; a 0-d array is its own logsumexp.
        axis: the axis summed over (default the last), or a tuple of axes (as
            ``torch.logsumexp(x, dim=(0, 1))``).
        keepdims: keep the summed axes with length 1, so the result broadcasts against ``x``.

    Returns:
        ``x``'s shape without ``axis`` (``(N,)`` for ``(N, C)`` and ``axis=1``), or with it
            as 1 under ``keepdims``; ``x``'s dtype.

    >>> float(logsumexp([1.0, 2.0, 3.0]))
    3.4076059644443806
    >>> logsumexp(np.array([[1.0, 2.0], [3.0, 4.0]]), axis=1)  # (N, C) -> (N,)
    array([2.31326169, 4.31326169])
    >>> round(float(logsumexp(np.zeros((2, 3)), axis=(0, 1))), 6)  # log 6
    1.791759
    """
    x = as_float_array(x, "x")
    zero_d = x.ndim == 0
    xs, axes = _axes(x, axis, many=True)
    cd = compute_dtype(x.dtype)
    xc = xs.astype(cd, copy=False)
    m = _max_shift(xc, axes)
    # an infinite max would make x - m NaN; shifting by 0 there gives the right +-inf
    m = np.where(np.isfinite(m), m, 0.0).astype(cd)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out = np.log(np.sum(np.exp(xc - m), axis=axes, keepdims=True)) + m
    if zero_d:
        out = out.reshape(())
    elif not keepdims:
        out = np.squeeze(out, axis=axes)
    return out.astype(x.dtype, copy=False)


def log_softmax(x: Any, axis: int = -1) -> np.ndarray:
    r"""``x - logsumexp(x)`` along ``axis``: log-probabilities of a logits vector.

    .. math:: \log \operatorname{softmax}(x)_i = x_i - m - \log \sum_j e^{x_j - m},
        \quad m = \max_j x_j

    Same as ``torch.log_softmax(x, dim=axis)``; more accurate than ``log(softmax(x))``,
    which gives ``-inf`` where a probability underflows to 0.

    Args:
        x: logits of any shape: ``(C,)``, ``(N, C)``, ``(N, C, d1, ..., dK)``; float16 is
            computed in float32.
        axis: the class axis (default the last; 1 for PyTorch's ``(N, C, d1, ..., dK)``).

    Returns:
        An array of ``x``'s shape and dtype (empty in, empty out; a finite 0-d value
            gives 0).

    >>> np.round(log_softmax([2.0, 4.0, 0.5]), 6)
    array([-2.153178, -0.153178, -3.653178])
    >>> log_softmax(np.array([[0.0, np.log(3.0)], [1.0, 1.0]]))  # (N, C), per row
    array([[-1.38629436, -0.28768207],
           [-0.69314718, -0.69314718]])
    """
    x = as_float_array(x, "x")
    xs, axes = _axes(x, axis)
    xc = xs.astype(compute_dtype(x.dtype), copy=False)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        shifted = xc - _max_shift(xc, axes)
        out = shifted - np.log(np.sum(np.exp(shifted), axis=axes, keepdims=True))
    return out.reshape(x.shape).astype(x.dtype, copy=False)


def softmax(x: Any, axis: int = -1) -> np.ndarray:
    r"""``exp(x) / sum(exp(x))`` along ``axis``, computed after subtracting the max.

    .. math:: \operatorname{softmax}(x)_i = \frac{e^{x_i - m}}{\sum_j e^{x_j - m}},
        \quad m = \max_j x_j

    Subtracting ``m`` changes nothing mathematically and keeps ``exp`` from overflowing.
    Same as ``torch.softmax(x, dim=axis)``: a row with ``+inf`` or only ``-inf`` is NaN, as
    in PyTorch.

    Args:
        x: logits of any shape: ``(C,)``, ``(N, C)``, ``(N, C, d1, ..., dK)``; float16 is
            computed in float32.
        axis: the class axis (default the last; 1 for PyTorch's ``(N, C, d1, ..., dK)``).

    Returns:
        Probabilities of ``x``'s shape and dtype, summing to 1 along ``axis`` (empty in,
            empty out; a finite 0-d value gives 1).

    >>> np.round(softmax([-9.0, 5.0, 10.0]), 6)
    array([0.      , 0.006693, 0.993307])
    >>> softmax(np.array([[0.0, np.log(3.0)], [1.0, 1.0]]))  # (N, C), per row
    array([[0.25, 0.75],
           [0.5 , 0.5 ]])
    """
    x = as_float_array(x, "x")
    xs, axes = _axes(x, axis)
    xc = xs.astype(compute_dtype(x.dtype), copy=False)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        e = np.exp(xc - _max_shift(xc, axes))
        out = e / np.sum(e, axis=axes, keepdims=True)
    return out.reshape(x.shape).astype(x.dtype, copy=False)


# --------------------------------------------------------------------------------------------
# Softmax cross-entropy (class indices or probabilities)
# --------------------------------------------------------------------------------------------


def _class_indices(target: np.ndarray, name: str = "target") -> np.ndarray:
    if target.dtype.kind not in "iu":
        kind = "floating-point" if target.dtype.kind == "f" else str(target.dtype)
        raise sem.ArgumentTypeError(
            f"{name} must hold integer class indices for this input (its shape differs from "
            f"the input's, so it is not a probability target), got a {kind} array "
            f"({describe(target)})"
        )
    return target


def _kernel_layout(a: np.ndarray, layout: sem.ClassLayout) -> np.ndarray:
    """The input (or its gradient, or a probability target) as the fused pass takes it.

    ``(M, C)`` with classes last for ``(C,)`` and ``(N, C)``; ``(N, C, S)`` with
    ``S = d1 * ... * dK`` for ``(N, C, d1, ..., dK)``: classes stay on axis 1, nothing is
    moved.  A view whenever the memory allows (always for a C-contiguous array); a
    K-dimensional input whose strides cannot merge its trailing axes is copied by NumPy.
    """
    classes = layout.num_classes
    if not layout.spatial:
        return a.reshape(layout.rows, classes)
    batches = layout.input_shape[0]
    spatial = math.prod(layout.input_shape[2:])
    if spatial == 1:  # (N, C, 1, ..., 1) is (N, C)
        return a.reshape(batches, classes)
    return a.reshape(batches, classes, spatial)


def _target_positions(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """Fancy index of each row's class ``y`` in the kernel layout ``(M, C)`` / ``(N, C, S)``
    (rows in ``(n, s)`` C order): three ``(M,)`` arrays at most, never ``(M, C)``."""
    rows = np.arange(y.shape[0])
    if x.ndim == 2:
        return rows, y
    spatial = x.shape[2]
    return rows // spatial, y, rows % spatial


def _softmax_cross_entropy_rows(
    x: np.ndarray,  # (M, C) or (N, C, S) logits: see _kernel_layout
    target: np.ndarray,  # (M,) int64 range-checked class indices, or x-shaped probabilities
    *,
    probability: bool,
    weight: np.ndarray | None,  # (C,) in the compute dtype
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    cd: np.dtype,
    grad_output: np.ndarray | None,  # scalar, or (M,) for 'none'; None: no gradient
    grad_out: np.ndarray | None = None,  # x-shaped buffer for the gradient
) -> tuple[np.ndarray, Any]:
    """Per-row losses and the gradient (into ``grad_out``), in one pass, for the NumPy API.

    Arguments are already validated and laid out for the kernel (the torch executor has its
    own entry, :func:`crossent.torch._rows.cross_entropy_rows_cpu`, because there the
    gradient scale arrives as a tensor).  ``grad_output`` is the upstream gradient of the
    *reduced* loss; the ``'mean'`` denominator is folded into the gradient here.  Returns
    ``(per-row losses in cd, the 'mean' denominator)``; reduce with
    :func:`crossent._semantics.reduce_loss`.
    """
    num_classes = x.shape[1]
    rows = x.shape[0] * (x.shape[2] if x.ndim == 3 else 1)
    targets, w_y = build_row_targets(
        target, probability=probability, weight=weight, ignore_index=ignore_index,
        label_smoothing=label_smoothing, z_loss=z_loss, num_classes=num_classes,
        compute_dtype=cd,
    )
    denominator = (sem.mean_denominator_probability(rows) if probability
                   else sem.mean_denominator_index(w_y))
    if grad_output is None:
        scale: np.ndarray | float = 0.0
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = sem.reduce_loss_grad(np.asarray(grad_output, dtype=cd), reduction,
                                         np.asarray(denominator, dtype=cd))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        per_row = fused_softmax_cross_entropy(
            x, targets, scale, cd, softcap=softcap,
            grad_out=grad_out if grad_output is not None else None,
        )
    return per_row, np.asarray(denominator, dtype=cd)


def _cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing, z_loss,
                   softcap, grad_output, want_grad):
    x = as_float_array(input, "input", "a floating-point array of logits")
    layout = sem.class_layout(x.shape)
    target = np.asarray(target)
    reduction = sem.check_reduction(reduction)
    label_smoothing = sem.check_label_smoothing(label_smoothing)
    ignore_index = sem.check_ignore_index(ignore_index)
    z_loss = sem.check_z_loss(z_loss)
    softcap = sem.check_softcap(softcap)
    sem.check_target_batch(x.shape, target.shape)
    probability = sem.is_probability_target(x.shape, target.shape)
    if probability:
        if target.dtype.kind != "f":
            raise sem.ArgumentTypeError(
                "target has the input's shape, so it must hold class probabilities as floats, "
                f"got {describe(target)}; class indices have shape {layout.batch_shape}"
            )
        target = as_float_array(target, "target", "an array of class probabilities")
        sem.check_probability_ignore_index(ignore_index)
    else:
        _class_indices(target)
        sem.check_index_target_shape(layout, target.shape)
    w = None
    if weight is not None:
        w = as_class_weight(weight, layout.num_classes, x.dtype, probability=probability)
    if probability:  # the loss takes the promoted dtype of all three, as in PyTorch
        dtypes = (x.dtype, target.dtype) + (() if w is None else (w.dtype,))
        cd, loss_dtype = compute_dtype(*dtypes), np.result_type(*dtypes)
        rows_target = _kernel_layout(target, layout)
    else:
        cd, loss_dtype = compute_dtype(x.dtype), x.dtype
        rows_target = as_class_indices(target, layout.num_classes, ignore_index).reshape(-1)
    if w is not None:
        w = w.astype(cd, copy=False)

    loss_shape = layout.batch_shape if reduction == "none" else ()
    go = None
    if want_grad:
        go = as_grad_output(grad_output, loss_shape, cd)
        go = go.reshape(-1) if reduction == "none" else go[()]
    # the gradient in the input's own layout: the kernel writes it in place, no copy after
    grad = np.empty(x.shape, dtype=x.dtype) if want_grad else None
    per_row, denominator = _softmax_cross_entropy_rows(
        _kernel_layout(x, layout), rows_target, probability=probability, weight=w,
        ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
        z_loss=z_loss, softcap=softcap, cd=cd, grad_output=go,
        grad_out=_kernel_layout(grad, layout) if want_grad else None,
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        loss = _as_loss(sem.reduce_loss(per_row, reduction, denominator), layout.batch_shape,
                        loss_dtype)
    return loss, grad


def _as_loss(loss: np.ndarray, batch_shape: tuple[int, ...], dtype: np.dtype) -> Any:
    """Per-element losses get the target's shape; reduced ones become NumPy scalars."""
    loss = np.asarray(loss)
    with np.errstate(over="ignore"):  # float16 overflows to inf, as in PyTorch
        if loss.ndim:
            return loss.reshape(batch_shape).astype(dtype, copy=False)
        return loss.astype(dtype)[()]


def cross_entropy(
    input: Any,
    target: Any,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> Any:
    r"""Softmax cross-entropy between logits and class indices or class probabilities.

    Same as ``torch.nn.functional.cross_entropy`` (``z_loss`` and ``softcap`` are extras).

    .. math:: \ell_n = -\sum_c a_{n,c} \log \operatorname{softmax}(x_n)_c

    with ``a = (1-eps) w[y] onehot(y) + (eps/C) w`` for a class index ``y`` (0 if ``y`` is
    ``ignore_index``) and ``a = w ((1-eps) t + eps/C)`` for class probabilities ``t``.

    Args:
        input: logits ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dK)``, floating point.  A
            K-dimensional input is read where it lies (classes on axis 1), not copied.
        target: class indices of shape ``()``, ``(N,)`` or ``(N, d1, ..., dK)`` (any integer
            dtype, range-checked in that dtype: a ``uint64`` of ``2**63`` or more is an
            ``IndexError``), or class probabilities of the input's shape (floating point).
        weight: ``(C,)`` class weights.  PyTorch's dtype rule: an array must have the
            input's dtype for class-index targets (else ``TypeError``, also a
            ``RuntimeError``); with probability targets it promotes the loss's dtype.  A
            list carries no dtype and takes the input's.
        ignore_index: a class index whose elements add nothing to the loss and to the
            ``'mean'`` denominator (index targets only).
        reduction: ``'none'`` (the target's shape), ``'sum'``, or ``'mean'``: the sum divided
            by the total weight ``sum_n w[y_n]`` of non-ignored elements for index targets, by
            the number of elements ``N*d1*...*dK`` for probability targets.
        label_smoothing: ``eps`` in [0, 1]: the target mixes with the uniform distribution.
        z_loss: adds ``z_loss * w[y_n] * logsumexp(x_n)**2`` per element (PaLM).
        softcap: logits pass through ``softcap * tanh(x / softcap)`` first (Gemma 2).

    Returns:
        A NumPy scalar for ``'mean'``/``'sum'``, else an array of the target's shape.

    >>> float(cross_entropy([[2.0, 4.0, 0.5]], [0]))  # doctest: +ELLIPSIS
    2.15317820...
    """
    return _cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing,
                          z_loss, softcap, None, want_grad=False)[0]


def cross_entropy_with_grad(
    input: Any,
    target: Any,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    grad_output: Any = None,
) -> tuple[Any, np.ndarray]:
    r""":func:`cross_entropy` and its gradient with respect to ``input``, in one pass.

    .. math:: \frac{\partial \ell_n}{\partial x_n} = A_n \operatorname{softmax}(x_n) - a_n,
        \quad A_n = \textstyle\sum_c a_{n,c}

    (times ``grad_output``, divided by the ``'mean'`` denominator).  For a plain class index
    this is the familiar ``softmax - onehot``.  ``grad_input`` is what
    ``torch.autograd.grad(F.cross_entropy(x, y, ...), x, grad_output)`` gives.

    The arguments are :func:`cross_entropy`'s, and:

    Args:
        grad_output: the upstream gradient ``d L / d loss``: a scalar for ``'mean'`` and
            ``'sum'``, an array of the target's shape for ``'none'``; None means 1.

    Returns:
        loss: the loss of :func:`cross_entropy`.
        grad_input: the gradient, an array of ``input``'s shape ``(N, C)`` (or ``(C,)``,
            ``(N, C, d1, ..., dK)``) and dtype.

    >>> loss, grad = cross_entropy_with_grad([[2.0, 4.0, 0.5]], [0])
    >>> np.round(grad, 6)
    array([[-0.883885,  0.857977,  0.025909]])
    """
    return _cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing,
                          z_loss, softcap, grad_output, want_grad=True)


# --------------------------------------------------------------------------------------------
# NLL loss (log-probabilities in, class indices as targets)
# --------------------------------------------------------------------------------------------


def _nll_loss(input, target, weight, ignore_index, reduction, grad_output, want_grad):
    x = as_float_array(input, "input", "a floating-point array of log-probabilities")
    layout = sem.class_layout(x.shape)
    target = np.asarray(target)
    sem.check_target_batch(x.shape, target.shape)
    target = _class_indices(target)
    sem.check_index_target_shape(layout, target.shape)
    reduction = sem.check_reduction(reduction)
    ignore_index = sem.check_ignore_index(ignore_index)
    cd = compute_dtype(x.dtype)
    w = None
    if weight is not None:
        w = as_class_weight(weight, layout.num_classes, x.dtype, probability=False).astype(cd)
    y = as_class_indices(target, layout.num_classes, ignore_index).reshape(-1)
    valid, w_y = sem.index_row_weights(y, ignore_index, w)
    w_y = w_y.astype(cd)
    rows = _kernel_layout(x, layout)  # laid out once: a copy when the strides cannot merge
    at_target = _target_positions(rows, np.where(valid, y, 0))
    picked = rows[at_target].astype(cd)
    # l_n = -w[y_n] x[n, y_n]; ignored elements are 0 even if their input is not finite
    per_row = np.where(valid, -w_y * picked, 0.0).astype(cd)
    denominator = sem.mean_denominator_index(w_y)
    with np.errstate(divide="ignore", invalid="ignore"):
        loss = _as_loss(sem.reduce_loss(per_row, reduction, denominator),
                        layout.batch_shape, x.dtype)
    if not want_grad:
        return loss, None
    loss_shape = layout.batch_shape if reduction == "none" else ()
    go = as_grad_output(grad_output, loss_shape, cd)
    go = go.reshape(-1) if reduction == "none" else go[()]
    # d l_n / d x[n, c] = -w[y_n] [c == y_n], written straight into the input's layout
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = sem.reduce_loss_grad(go, reduction, denominator)
        grad = np.zeros(x.shape, dtype=x.dtype)
        _kernel_layout(grad, layout)[at_target] = np.where(valid, -w_y * scale, 0.0)
    return loss, grad


def nll_loss(input: Any, target: Any, weight: Any = None, ignore_index: int = -100,
             reduction: str = "mean") -> Any:
    r"""Negative log-likelihood of class indices under log-probabilities ``input``.

    .. math:: \ell_n = -w_{y_n}\, x_{n, y_n}, \qquad
        \text{'mean'}: \frac{\sum_n \ell_n}{\sum_{n:\, y_n \ne \text{ignore}} w_{y_n}}

    with ``l_n = 0`` where ``y_n == ignore_index``.  Same as
    ``torch.nn.functional.nll_loss``; ``nll_loss(log_softmax(x, axis=1), y)`` is
    ``cross_entropy(x, y)``.  The input is not checked to be log-probabilities (nor is it in
    PyTorch).

    Args:
        input: log-probabilities ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dK)`` (classes on
            axis 1); an empty batch may have no classes, ``(0, 0)``: an empty ``'none'``,
            NaN ``'mean'``, 0 ``'sum'``.
        target: class indices ``()``, ``(N,)`` or ``(N, d1, ..., dK)``, any integer dtype.
        weight: ``(C,)`` class weights; an array must have the input's dtype, as in
            PyTorch (a list takes it).
        ignore_index: a class index whose elements add nothing, to the loss or to the
            ``'mean'`` denominator.
        reduction: ``'none'`` (the target's shape), ``'sum'``, or ``'mean'`` (the sum divided
            by the total weight of the non-ignored elements).

    Returns:
        A NumPy scalar for ``'mean'``/``'sum'``, else an array of the target's shape.

    >>> float(nll_loss(np.log([[0.6, 0.2, 0.2]]), [2]))  # doctest: +ELLIPSIS
    1.6094379...
    >>> x = np.array([[2.0, 4.0, 0.5], [1.0, 1.0, 1.0]])
    >>> round(float(nll_loss(log_softmax(x), [0, 2])), 6), round(float(cross_entropy(x, [0, 2])), 6)
    (1.625895, 1.625895)
    """
    return _nll_loss(input, target, weight, ignore_index, reduction, None, False)[0]


def nll_loss_with_grad(input: Any, target: Any, weight: Any = None, ignore_index: int = -100,
                       reduction: str = "mean", *, grad_output: Any = None
                       ) -> tuple[Any, np.ndarray]:
    r""":func:`nll_loss` and its gradient with respect to ``input``, in one call.

    .. math:: \frac{\partial \ell_n}{\partial x_{n,c}} = -w_{y_n}\, [c = y_n]

    times ``grad_output``, divided by the ``'mean'`` denominator; 0 for ignored elements.
    ``grad_input`` is what ``torch.autograd.grad(F.nll_loss(x, y, ...), x, grad_output)``
    gives.

    The arguments are :func:`nll_loss`'s, and:

    Args:
        grad_output: the upstream gradient ``d L / d loss``: a scalar for ``'mean'`` and
            ``'sum'``, an array of the loss's shape for ``'none'``; None means 1.

    Returns:
        loss: the loss of :func:`nll_loss`.
        grad_input: the gradient, an array of ``input``'s shape ``(N, C)`` (or ``(C,)``,
            ``(N, C, d1, ..., dK)``) and dtype.

    >>> log_p = np.log([[0.6, 0.2, 0.2], [0.1, 0.7, 0.2]])
    >>> loss, grad = nll_loss_with_grad(log_p, [2, 1], weight=[1.0, 1.0, 3.0])
    >>> round(float(loss), 6)  # (3 log 5 + log(1/0.7)) / (3 + 1)
    1.296247
    >>> grad
    array([[ 0.  ,  0.  , -0.75],
           [ 0.  , -0.25,  0.  ]])
    """
    return _nll_loss(input, target, weight, ignore_index, reduction, grad_output, True)


# --------------------------------------------------------------------------------------------
# Elementwise losses: binary cross-entropy and KL divergence
# --------------------------------------------------------------------------------------------


def _same_shape(x: np.ndarray, target: np.ndarray) -> None:
    """Binary cross-entropy takes no broadcasting: PyTorch raises ``ValueError`` for any
    other target shape (a deprecation turned error), so does this."""
    if x.shape != target.shape:
        raise ValueError(
            f"target must have the input's shape {x.shape}, got shape {target.shape}"
        )


def _broadcast_weight(weight: Any, shape: tuple[int, ...], name: str, cd: np.dtype):
    if weight is None:
        return None
    w = as_float_array(weight, name, f"a floating-point array that broadcasts to {shape}")
    try:
        return np.broadcast_to(w.astype(cd), shape)
    except ValueError:
        raise sem.ArgumentError(  # PyTorch: RuntimeError (the broadcast of an elementwise op)
            f"{name} must broadcast to the input's shape {shape}, got shape {w.shape}"
        ) from None


def _sum_to_shape(g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum a broadcast result back to an operand's ``shape`` (the chain rule of broadcasting):
    over the leading axes the operand lacks and the axes where it has length 1."""
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape)
                                       if n == 1 and g.shape[lead + i] != 1)
    return g.sum(axis=axes).reshape(shape) if axes else g


def _reduce_elementwise(per_elem, reduction, denominator, grad, go, want_grad, dtype,
                        out_dtype, input_shape=None, input_dtype=None):
    """Reduce an elementwise loss; scale its elementwise gradient ``grad`` by ``go``.

    The gradient has the input's shape and dtype, as PyTorch's ``input.grad``: summed back
    over the axes the target broadcast the input along (``input_shape``), rounded once to
    ``input_dtype`` (default: ``out_dtype``).
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        loss = sem.reduce_loss(per_elem, reduction, denominator)
        loss = np.asarray(loss).astype(out_dtype)
        loss = loss if loss.ndim else loss[()]
        if not want_grad:
            return loss, None
        go = as_grad_output(go, per_elem.shape if reduction == "none" else (), dtype)
        scale = sem.reduce_loss_grad(go, reduction, denominator)
        grad = grad * scale
        if grad.shape != per_elem.shape:
            grad = np.broadcast_to(grad, per_elem.shape)
        if input_shape is not None:
            grad = _sum_to_shape(grad, input_shape)
        return loss, grad.astype(input_dtype or out_dtype, copy=False)


def _binary_cross_entropy(input, target, weight, reduction, grad_output, want_grad):
    x = as_float_array(input, "input", "a floating-point array of probabilities")
    t = as_float_array(target, "target", "a floating-point array of probabilities")
    _same_shape(x, t)
    reduction = sem.check_reduction(reduction)
    outside = ~((x >= 0) & (x <= 1))  # also catches NaN
    if outside.any():
        bad = entry("input", x, first_position(outside))
        raise ValueError(f"input must hold probabilities in [0, 1], got {bad}")
    outside = ~((t >= 0) & (t <= 1))
    if outside.any():
        bad = entry("target", t, first_position(outside))
        raise ValueError(f"target must hold probabilities in [0, 1], got {bad}")
    cd = compute_dtype(x.dtype, t.dtype)
    xc, tc = x.astype(cd), t.astype(cd)
    w = _broadcast_weight(weight, x.shape, "weight", cd)
    with np.errstate(divide="ignore", invalid="ignore"):
        # PyTorch clamps each log at -100, so an exact 0 or 1 costs at most 100 per element
        log_p = np.maximum(np.log(xc), sem.BCE_LOG_CLAMP)
        log_q = np.maximum(np.log1p(-xc), sem.BCE_LOG_CLAMP)
        per_elem = -(tc * log_p + (1 - tc) * log_q)
        # d/dx = (x - y) / max(x (1 - x), 1e-12), PyTorch's clamp of the denominator
        grad = (xc - tc) / np.maximum(xc * (1 - xc), sem.BCE_GRAD_EPS) if want_grad else None
    if w is not None:
        per_elem = per_elem * w
        grad = grad * w if want_grad else None
    out = np.result_type(x.dtype, t.dtype)
    return _reduce_elementwise(per_elem, reduction, x.size if reduction == "mean" else None,
                               grad, grad_output, want_grad, cd, out, input_dtype=x.dtype)


def binary_cross_entropy(input: Any, target: Any, weight: Any = None,
                         reduction: str = "mean") -> Any:
    r"""Binary cross-entropy between probabilities ``input`` and targets in [0, 1].

    .. math:: \ell = -w\,[\,y \max(\log x, -100) + (1-y) \max(\log(1-x), -100)\,]

    Same as ``torch.nn.functional.binary_cross_entropy`` (whose clamp at -100 makes an
    exact 0 or 1 cost at most 100).  On logits, :func:`binary_cross_entropy_with_logits` is
    the stable form of ``binary_cross_entropy(sigmoid(z), y)``.

    Args:
        input: probabilities in [0, 1], any shape: ``(N,)``, ``(N, d1, ..., dK)`` (one
            probability per independent label).
        target: targets in [0, 1] (hard 0/1 labels or soft ones), of the input's shape.
        weight: rescales each element; broadcasts to the input's shape.
        reduction: ``'none'`` (the input's shape), ``'sum'``, or ``'mean'`` (over all
            elements).

    Returns:
        A NumPy scalar for ``'mean'``/``'sum'``, else an array of the input's shape.

    >>> round(float(binary_cross_entropy([0.9, 0.2], [1.0, 0.0])), 6)
    0.164252
    >>> binary_cross_entropy(np.array([[0.9, 0.2]]), np.array([[1.0, 0.0]]), reduction="none")
    array([[0.10536052, 0.22314355]])
    """
    return _binary_cross_entropy(input, target, weight, reduction, None, False)[0]


def binary_cross_entropy_with_grad(input: Any, target: Any, weight: Any = None,
                                   reduction: str = "mean", *, grad_output: Any = None
                                   ) -> tuple[Any, np.ndarray]:
    r""":func:`binary_cross_entropy` and its gradient with respect to ``input``, in one call.

    .. math:: \frac{\partial \ell}{\partial x} = w\, \frac{x - y}{\max(x (1 - x),\,
        10^{-12})}

    (PyTorch's clamp of the denominator), times ``grad_output``, divided by the element count
    for ``'mean'``.

    The arguments are :func:`binary_cross_entropy`'s, and:

    Args:
        grad_output: the upstream gradient ``d L / d loss``: a scalar for ``'mean'`` and
            ``'sum'``, an array of the loss's shape for ``'none'``; None means 1.

    Returns:
        loss: the loss of :func:`binary_cross_entropy`.
        grad_input: the gradient, an array of the input's shape (``(N,)``, ``(N, L)``, ...)
            and dtype.

    >>> loss, grad = binary_cross_entropy_with_grad([0.9, 0.2], [1.0, 0.0])
    >>> round(float(loss), 6), grad  # (0.9 - 1) / 0.09 / 2 and 0.2 / 0.16 / 2
    (0.164252, array([-0.55555556,  0.625     ]))
    """
    return _binary_cross_entropy(input, target, weight, reduction, grad_output, True)


def _softplus(v: np.ndarray) -> np.ndarray:
    """``log(1 + exp(v))`` without overflow."""
    return np.maximum(v, 0) + np.log1p(np.exp(-np.abs(v)))


def _sigmoid(v: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(v))
    return np.where(v >= 0, 1 / (1 + e), e / (1 + e))


def _times(coef: np.ndarray, term: np.ndarray) -> np.ndarray:
    """``coef * term`` with ``0 * inf = 0``: a weight of 0 on an impossible event adds 0."""
    return np.where(coef == 0, 0.0, coef * term)


def _binary_cross_entropy_with_logits(input, target, weight, reduction, pos_weight,
                                      grad_output, want_grad):
    x = as_float_array(input, "input", "a floating-point array of logits")
    t = as_float_array(target, "target", "a floating-point array of targets")
    _same_shape(x, t)
    reduction = sem.check_reduction(reduction)
    cd = compute_dtype(x.dtype, t.dtype)
    xc, tc = x.astype(cd), t.astype(cd)
    w = _broadcast_weight(weight, x.shape, "weight", cd)
    pw = _broadcast_weight(pos_weight, x.shape, "pos_weight", cd)
    pos = tc if pw is None else pw * tc
    with np.errstate(over="ignore", invalid="ignore"):
        # l = (1-y) softplus(x) + pw y softplus(-x): equal to PyTorch's
        # (1-y) x - (1 + (pw-1) y) logsigmoid(x), without its 0 * inf at infinite logits
        per_elem = _times(1 - tc, _softplus(xc)) + _times(pos, _softplus(-xc))
        # d/dx = (1-y) sigmoid(x) - pw y sigmoid(-x)
        grad = (1 - tc) * _sigmoid(xc) - pos * _sigmoid(-xc) if want_grad else None
    if w is not None:
        per_elem = per_elem * w
        grad = grad * w if want_grad else None
    out = np.result_type(x.dtype, t.dtype)
    return _reduce_elementwise(per_elem, reduction, x.size if reduction == "mean" else None,
                               grad, grad_output, want_grad, cd, out, input_dtype=x.dtype)


def binary_cross_entropy_with_logits(input: Any, target: Any, weight: Any = None,
                                     reduction: str = "mean", pos_weight: Any = None) -> Any:
    r"""Binary cross-entropy on logits, in the stable form (no ``exp`` overflow).

    .. math:: \ell = w\,[(1-y)\,\operatorname{softplus}(x) + p\,y\,\operatorname{softplus}(-x)]

    with ``softplus(x) = log(1 + exp(x))`` and ``p = pos_weight``: mathematically
    ``binary_cross_entropy(sigmoid(x), y)`` without its clamp.  Same as
    ``torch.nn.functional.binary_cross_entropy_with_logits``, except that infinite logits on
    the right side, ``(+inf, y=1)`` and ``(-inf, y=0)``, give 0 where PyTorch gives NaN.

    Args:
        input: logits, any shape: ``(N,)``, ``(N, L)`` for ``L`` independent labels,
            ``(N, L, d1, ..., dK)``.
        target: targets in [0, 1], of the input's shape.
        weight: rescales each element; broadcasts to the input's shape.
        reduction: ``'none'`` (the input's shape), ``'sum'``, or ``'mean'`` (over all
            elements).
        pos_weight: weight of the positive term, broadcast against the input from the last
            axis: ``(L,)`` weighs each label of ``(N, L)`` (``p > 1`` raises recall).

    Returns:
        A NumPy scalar for ``'mean'``/``'sum'``, else an array of the input's shape.

    >>> round(float(binary_cross_entropy_with_logits([2.0], [1.0])), 6)  # softplus(-2)
    0.126928
    >>> binary_cross_entropy_with_logits(np.array([[2.0, -1.0]]), np.array([[1.0, 1.0]]),
    ...                                  pos_weight=np.array([1.0, 3.0]), reduction="none")
    array([[0.12692801, 3.93978506]])
    """
    return _binary_cross_entropy_with_logits(input, target, weight, reduction, pos_weight,
                                             None, False)[0]


def binary_cross_entropy_with_logits_with_grad(
    input: Any, target: Any, weight: Any = None, reduction: str = "mean",
    pos_weight: Any = None, *, grad_output: Any = None,
) -> tuple[Any, np.ndarray]:
    r""":func:`binary_cross_entropy_with_logits` and its gradient with respect to ``input``.

    .. math:: \frac{\partial \ell}{\partial x} = w\,[(1-y)\,\sigma(x) - p\,y\,\sigma(-x)]

    (``sigmoid(x) - y`` when ``w = p = 1``), times ``grad_output``, divided by the element
    count for ``'mean'``.

    The arguments are :func:`binary_cross_entropy_with_logits`'s, and:

    Args:
        grad_output: the upstream gradient ``d L / d loss``: a scalar for ``'mean'`` and
            ``'sum'``, an array of the loss's shape for ``'none'``; None means 1.

    Returns:
        loss: the loss of :func:`binary_cross_entropy_with_logits`.
        grad_input: the gradient, an array of the input's shape (``(N,)``, ``(N, L)``, ...)
            and dtype.

    >>> loss, grad = binary_cross_entropy_with_logits_with_grad([2.0, -1.0], [1.0, 0.0])
    >>> round(float(loss), 6), grad  # (sigmoid(2) - 1) / 2 and sigmoid(-1) / 2
    (0.220095, array([-0.05960146,  0.13447071]))
    """
    return _binary_cross_entropy_with_logits(input, target, weight, reduction, pos_weight,
                                             grad_output, True)


def _kl_times(prob: np.ndarray, term: np.ndarray, x: np.ndarray, no_mass: np.ndarray
              ) -> np.ndarray:
    """``prob * term``, except that a target with no probability mass (``no_mass``: a target
    of 0, or a log-target of ``-inf``; not one whose ``exp`` merely underflows) adds 0
    (``0 log 0 = 0``) on an input that is a log-probability, ``-inf`` included.  An input of
    ``+inf`` (no log-probability) or NaN keeps PyTorch's NaN: ``0 * inf``, ``0 * nan``."""
    return np.where(no_mass & ~(np.isnan(x) | (x == np.inf)), 0.0, prob * term)


def _kl_div(input, target, reduction, log_target, grad_output, want_grad):
    x = as_float_array(input, "input", "a floating-point array of log-probabilities")
    t = as_float_array(target, "target", "a floating-point array of probabilities")
    try:  # the target broadcasts against the input (and the input against it), as in PyTorch
        out_shape = np.broadcast_shapes(x.shape, t.shape)
    except ValueError:
        raise sem.ArgumentError(
            f"target must broadcast against the input's shape {x.shape}, got shape {t.shape}"
        ) from None
    reduction = sem.check_reduction(reduction, sem.KL_REDUCTIONS)
    if not isinstance(log_target, (bool, np.bool_)):
        raise TypeError(f"log_target must be a bool, got {describe(log_target)}")
    if reduction == "mean":
        warnings.warn(
            "kl_div(reduction='mean') divides the sum by the number of elements, which is not "
            "the KL divergence; reduction='batchmean' divides by the batch size (as in "
            "PyTorch, where 'mean' is slated to become 'batchmean')",
            UserWarning,
            stacklevel=3,
        )
    cd = compute_dtype(x.dtype, t.dtype)
    xc, tc = x.astype(cd), t.astype(cd)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if log_target:
            # exp(t) (t - x); a target log-probability of -inf adds 0 (PyTorch: NaN)
            prob = np.exp(tc)
            per_elem = _kl_times(prob, tc - xc, xc, tc == -np.inf)
        else:
            # xlogy(t, t) - t x; t = 0 adds 0 even where x = -inf (PyTorch: NaN); t < 0 is NaN
            prob = tc
            t_log_t = np.where(tc == 0, 0.0, tc * np.log(tc))
            per_elem = t_log_t - _kl_times(tc, xc, xc, tc == 0)
        grad = -prob if want_grad else None
    per_elem = np.broadcast_to(per_elem, out_shape)
    denominator = sem.kl_div_denominator(x.shape, reduction, out_shape)
    reduce_as = "mean" if denominator is not None else reduction
    out = np.result_type(x.dtype, t.dtype)
    return _reduce_elementwise(per_elem, reduce_as, denominator, grad, grad_output, want_grad,
                               cd, out, x.shape, x.dtype)


def kl_div(input: Any, target: Any, reduction: str = "mean", log_target: bool = False) -> Any:
    r"""Kullback-Leibler divergence ``KL(target || exp(input))``, pointwise then reduced.

    Same as ``torch.nn.functional.kl_div``: ``input`` holds log-probabilities ``log q``;

    .. math:: \ell = t (\log t - \log q) \quad\text{or, with log\_target,}\quad
        e^{t} (t - \log q)

    A target probability of 0 adds 0 (``0 log 0 = 0``), also on an input of ``-inf``, where
    PyTorch gives NaN; an input of ``+inf`` or NaN gives NaN, as in PyTorch.

    Args:
        input: log-probabilities ``log q``, e.g. ``(N, C)`` (any shape).
        target: probabilities ``t`` (log-probabilities with ``log_target``); broadcasts
            against ``input`` either way, as in PyTorch: the pointwise loss has the
            broadcast shape and the gradient the input's, summed over the broadcast axes.
        reduction: ``'none'``, ``'sum'``, ``'batchmean'`` (the sum divided by
            ``input.shape[0]``: the KL divergence per sample), or ``'mean'`` (divided by the
            pointwise loss's element count, with a warning, as in PyTorch).
        log_target: the target holds log-probabilities.

    Returns:
        A NumPy scalar, or for ``'none'`` an array of the broadcast shape.

    >>> p = log_softmax(np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]]))
    >>> round(float(kl_div(p, [[0.2, 0.3, 0.5], [0.5, 0.5, 0.0]], reduction="batchmean")), 6)
    0.468125
    """
    return _kl_div(input, target, reduction, log_target, None, False)[0]


def kl_div_with_grad(input: Any, target: Any, reduction: str = "mean", log_target: bool = False,
                     *, grad_output: Any = None) -> tuple[Any, np.ndarray]:
    r""":func:`kl_div` and its gradient with respect to ``input``, in one call.

    .. math:: \frac{\partial \ell}{\partial \log q} = -t
        \quad\text{or, with log\_target,}\quad -e^{t}

    times ``grad_output``, divided by the ``'batchmean'`` or ``'mean'`` denominator, and
    summed over the axes along which the target broadcast the input.

    The arguments are :func:`kl_div`'s, and:

    Args:
        grad_output: the upstream gradient ``d L / d loss``: a scalar for ``'mean'`` and
            ``'sum'``, an array of the loss's shape for ``'none'``; None means 1.

    Returns:
        loss: the loss of :func:`kl_div`.
        grad_input: the gradient, an array of the input's shape (``(N, C)``, or whatever it
            is) and dtype.

    >>> log_q = log_softmax(np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]]))
    >>> t = np.array([[0.2, 0.3, 0.5], [0.5, 0.5, 0.0]])
    >>> loss, grad = kl_div_with_grad(log_q, t, reduction="batchmean")
    >>> round(float(loss), 6)
    0.468125
    >>> grad  # -t / N
    array([[-0.1 , -0.15, -0.25],
           [-0.25, -0.25, -0.  ]])
    """
    return _kl_div(input, target, reduction, log_target, grad_output, True)

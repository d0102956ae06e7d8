"""The shard pass on NumPy arrays: statistics and gradient of a slice of the class axis.

The NumPy executor of :mod:`crossent.torch._shard` (whose docstring states the contract).
A *shard* is the columns ``col_start .. col_start + V_local - 1`` of every row's logits; the
columns at or past ``num_classes`` are padding and take no part.  Per row it computes, with
``z`` the (softcapped) logits of the shard's real columns and ``a`` their target
coefficients (:mod:`crossent._semantics`)::

    r   = max_c z_c          (or 0 while the max is -inf: "the reference")
    m   = max_c z_c
    s   = sum_c exp(z_c - r)
    d   = sum_{c: a_c != 0} a_c (z_c - r)      (0 log 0 = 0: a_c = 0 at z_c = -inf adds 0)
    A   = sum_c a_c

and, given the statistics merged over every shard (``M, S, D, A`` with ``R`` the reference of
``M``, ``lse = R + log S``)::

    grad = scale_n ((A + 2 z_loss w_n lse) exp(z - R) / S - a)  (* 1 - tanh^2 under softcap)

with ignored rows and padded columns exactly 0.

Only what is the shard's own lives here: the real columns and the padding, the reference
shift, the ``(4, M)`` statistics and the gradient from merged statistics.  The rest is the
fused pass's (:mod:`crossent._kernel`): the targets of a column range
(:func:`~crossent._kernel.build_row_targets` with ``col_start`` and ``real_columns``), the
blocking and threads, widening (bfloat16 arrives as raw ``uint16`` bits), softcap, the
target dot product with its ``0 log 0`` rule, and the gradient's last steps.
"""

from __future__ import annotations

import numpy as np

from ._kernel import (
    RowTargets,
    _Blocking,
    _BlockTargets,
    _load,
    _run_blocks,
    _softcap,
    _store,
)

# The four per-row statistics, in this order along the first axis of a ``(4, M)`` array.
MAX, SUM_EXP, DOT, COEF_SUM = range(4)


def _reference(m: np.ndarray) -> np.ndarray:
    """The shift of a row with max ``m``: ``m`` itself, or 0 while ``m`` is ``-inf`` (the
    NumPy twin of :func:`crossent.torch._shard.reference`, see :func:`row_factors`)."""
    return np.where(m == -np.inf, 0.0, m).astype(m.dtype, copy=False)


def _block_targets(targets: RowTargets, where, r0: int, r1: int, rshape, shape,
                   scratch) -> _BlockTargets:
    """The coefficients of rows ``r0:r1`` (probabilities copied into the scratch ``"c"``)."""
    coef = None
    if targets.probability is not None:
        coef = _load(targets.probability[where], scratch.get("c", shape), False)
    return _BlockTargets(targets, r0, r1, rshape, shape, False, coef)


def shard_statistics(
    logits: np.ndarray,  # (M, V_local) float16/32/64, or uint16 bfloat16 bits
    targets: RowTargets,  # build_row_targets(..., col_start=, real_columns=)
    real_columns: int,
    compute_dtype: np.dtype,
    *,
    softcap: float | None = None,
    bfloat16: bool = False,
) -> np.ndarray:
    """The shard's ``(4, M)`` statistics ``(m, s, d, A)`` (rows MAX, SUM_EXP, DOT, COEF_SUM)."""
    rows = logits.shape[0]
    cd = np.dtype(compute_dtype)
    stats = np.empty((4, rows), dtype=cd)
    if real_columns == 0:  # the whole shard is padding: it adds nothing to any row
        stats[MAX] = -np.inf
        stats[SUM_EXP:] = 0.0
        return stats
    x_all = logits[:, :real_columns]
    widen = bfloat16 or logits.dtype != cd

    def block(where, r0, r1, rshape, scratch) -> None:
        shape = (r1 - r0, real_columns)
        x = _load(x_all[where], scratch.get("x", shape), bfloat16) if widen else x_all[where]
        g = scratch.get("g", shape)
        z = _softcap(x, softcap, scratch.get("x", shape), g) if softcap is not None else x
        m = z.max(axis=1)
        np.subtract(z, _reference(m)[:, None], out=g)  # g = z - r (the shifted logits)
        a = _block_targets(targets, where, r0, r1, rshape, shape, scratch)
        dot, coef_sum = a.dot(g, lambda: scratch.get("t", shape))
        np.exp(g, out=g)
        stats[MAX, r0:r1] = m
        stats[SUM_EXP, r0:r1] = g.sum(axis=1)
        stats[DOT, r0:r1] = dot
        stats[COEF_SUM, r0:r1] = coef_sum

    _run_blocks(_Blocking.plan(x_all.shape), cd, block)
    return stats


def row_factors(combined: np.ndarray, z_weight: np.ndarray | float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(R, 1/S, P)`` of every row from merged statistics: the reference, the inverse sum
    and the softmax factor ``P = A + 2 z_loss w_n lse`` of the gradient.

    The NumPy twin of :func:`crossent.torch._shard._row_factors`, the home of these rules
    (step 3 of that module's docstring): that one runs on tensors of any device and under
    ``torch.compile``, so it cannot call this, and this NumPy executor imports no torch.
    """
    r = _reference(combined[MAX])
    sum_exp = combined[SUM_EXP]
    p_factor = combined[COEF_SUM]
    if np.ndim(z_weight) or z_weight != 0.0:
        with np.errstate(divide="ignore", invalid="ignore"):
            lse = r + np.log(sum_exp)
        p_factor = p_factor + 2.0 * z_weight * lse
    with np.errstate(divide="ignore"):
        return r, 1.0 / sum_exp, p_factor


def shard_gradient(
    logits: np.ndarray,  # (M, V_local) float16/32/64, or uint16 bfloat16 bits
    combined: np.ndarray,  # (4, M) statistics merged over every shard
    targets: RowTargets,  # build_row_targets(..., col_start=, real_columns=)
    real_columns: int,
    grad_scale: np.ndarray | float,  # (M,) or scalar: d(reduced loss) / d(loss_n)
    grad_out: np.ndarray,  # (M, V_local), may be `logits` itself
    compute_dtype: np.dtype,
    *,
    softcap: float | None = None,
    bfloat16: bool = False,
) -> None:
    """Write this shard's gradient to ``grad_out`` (padded columns and ignored rows 0)."""
    rows, columns = logits.shape
    cd = np.dtype(compute_dtype)
    if real_columns < columns:
        grad_out[:, real_columns:] = 0
    if real_columns == 0 or rows == 0:
        return
    r_all, inv_s_all, p_all = row_factors(combined.astype(cd, copy=False), targets.z_weight)
    x_all = logits[:, :real_columns]
    g_all = grad_out[:, :real_columns]
    widen = bfloat16 or logits.dtype != cd
    narrow = bfloat16 or grad_out.dtype != cd
    scale_is_vector = np.ndim(grad_scale) == 1

    def block(where, r0, r1, rshape, scratch) -> None:
        shape = (r1 - r0, real_columns)
        x = _load(x_all[where], scratch.get("x", shape), bfloat16) if widen else x_all[where]
        g = scratch.get("g", shape) if narrow else g_all[where]
        th = scratch.get("x", shape) if softcap is not None else None
        z = _softcap(x, softcap, th, g) if th is not None else x
        np.subtract(z, r_all[r0:r1, None], out=g)
        np.exp(g, out=g)
        scale = grad_scale[r0:r1] if scale_is_vector else grad_scale
        row_factor = p_all[r0:r1] * inv_s_all[r0:r1] * scale
        a = _block_targets(targets, where, r0, r1, rshape, shape, scratch)
        a.finish_gradient(g, row_factor, scale, th)
        if narrow:
            _store(g, g_all[where], bfloat16)

    _run_blocks(_Blocking.plan(x_all.shape), cd, block)

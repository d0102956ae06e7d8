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

with ignored rows and padded columns exactly 0.  Blocks of rows are shared among threads and
bfloat16 arrives as raw ``uint16`` bits, both with :mod:`crossent._kernel`'s helpers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _semantics as sem
from ._kernel import (
    BLOCK_ELEMENTS,
    _run_row_ranges,
    bf16_bits_to_float32,
    float32_to_bf16_bits,
)

# The four per-row statistics, in this order along the first axis of a ``(4, M)`` array.
MAX, SUM_EXP, DOT, COEF_SUM = range(4)


@dataclass(frozen=True)
class ShardTargets:
    """Per-row target data of one shard, from the semantics rules (:func:`build_shard_targets`).

    Index targets (``probability is None``):
      local:       (M,) int64 column of the row's class inside the shard (0 if not here)
      on_target:   (M,) ``(1 - eps) w[y]`` when the class is a real column of this shard and
                   the row is not ignored, else 0
      uniform:     (V_real,) or scalar ``(eps / C) w_c`` over the shard's real columns
      valid:       (M,) bool, False for ignored rows (None when no row is ignored)
      coef_sum:    (M,) this shard's ``A_k = on_target + valid * sum_c uniform_c``
    Probability targets:
      probability: (M, V_real) the shard's slice of the target (any float dtype)
      prob_scale:  (V_real,) the shard's class weights, or None
    Both:
      z_weight:    (M,) or scalar ``z_loss * w_n`` (``w_n = w[y]``, 0 if ignored; 1 for
                   probabilities); 0 when z-loss is off
    """

    num_classes: int
    label_smoothing: float
    local: np.ndarray | None = None
    on_target: np.ndarray | None = None
    uniform: np.ndarray | float = 0.0
    valid: np.ndarray | None = None
    coef_sum: np.ndarray | None = None
    probability: np.ndarray | None = None
    prob_scale: np.ndarray | None = None
    z_weight: np.ndarray | float = 0.0


def build_shard_targets(
    target: np.ndarray,  # (M,) int64 global class indices (range-checked) or (M, V_real) probs
    *,
    probability: bool,
    weight: np.ndarray | None,  # (num_classes,) full class weights in the compute dtype
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    num_classes: int,
    col_start: int,
    real_columns: int,
    compute_dtype: np.dtype,
) -> ShardTargets:
    """The shard's coefficients of :func:`shard_statistics` and :func:`shard_gradient`."""
    cd = np.dtype(compute_dtype)
    w_local = weight[col_start:col_start + real_columns] if weight is not None else None
    if probability:
        return ShardTargets(num_classes, label_smoothing, probability=target,
                            prob_scale=w_local, z_weight=z_loss)
    valid, w_y = sem.index_row_weights(target, ignore_index, weight)
    w_y = np.asarray(w_y, dtype=cd)
    local = target - col_start
    mine = valid & (local >= 0) & (local < real_columns)
    w_y_here = np.where(mine, w_y, 0.0).astype(cd)
    on_target, uniform = sem.smoothing_terms(label_smoothing, num_classes)
    weight_sum_here = real_columns if w_local is None else w_local.sum()
    coef_sum = sem.index_coefficient_sum(w_y_here, valid.astype(cd), label_smoothing,
                                         num_classes, weight_sum_here)
    all_valid = bool(valid.all())
    return ShardTargets(
        num_classes, label_smoothing,
        local=np.where(mine, local, 0).astype(np.int64),
        on_target=(w_y_here * on_target).astype(cd),
        uniform=(w_local * uniform).astype(cd) if w_local is not None else uniform,
        valid=None if all_valid else valid,
        coef_sum=np.asarray(coef_sum, dtype=cd),
        z_weight=(w_y * z_loss).astype(cd) if z_loss else 0.0,
    )


def _reference(m: np.ndarray) -> np.ndarray:
    """The shift of a row with max ``m``: ``m`` itself, or 0 while ``m`` is ``-inf``."""
    return np.where(m == -np.inf, 0.0, m).astype(m.dtype, copy=False)


def _load(raw, x_buf, b, widen: bool, bfloat16: bool):
    if bfloat16:
        return bf16_bits_to_float32(raw, x_buf[:b])
    if widen:
        x = x_buf[:b]
        np.copyto(x, raw, casting="unsafe")
        return x
    return raw


def _block_coefficients(targets: ShardTargets, s: int, e: int, coef: np.ndarray) -> np.ndarray:
    """Probability coefficients of rows ``s:e``: ``w ((1 - eps) t + eps / C)`` into ``coef``."""
    np.copyto(coef, targets.probability[s:e], casting="unsafe")
    if targets.label_smoothing:  # sem.smoothed_probabilities, in place
        on_target, uniform = sem.smoothing_terms(targets.label_smoothing, targets.num_classes)
        coef *= on_target
        coef += uniform
    if targets.prob_scale is not None:
        coef *= targets.prob_scale
    return coef


def shard_statistics(
    logits: np.ndarray,  # (M, V_local) float16/32/64, or uint16 bfloat16 bits
    targets: ShardTargets,
    real_columns: int,
    compute_dtype: np.dtype,
    *,
    softcap: float | None = None,
    bfloat16: bool = False,
) -> np.ndarray:
    """The shard's ``(4, M)`` statistics ``(m, s, d, A)`` (rows MAX, SUM_EXP, DOT, COEF_SUM)."""
    rows, _ = logits.shape
    cd = np.dtype(compute_dtype)
    stats = np.empty((4, rows), dtype=cd)
    if real_columns == 0:  # the whole shard is padding: it adds nothing to any row
        stats[MAX] = -np.inf
        stats[SUM_EXP:] = 0.0
        return stats
    x_all = logits[:, :real_columns]
    block_rows = max(1, min(rows, BLOCK_ELEMENTS // real_columns))
    widen = bfloat16 or logits.dtype != cd
    index = targets.probability is None

    def work(start: int, stop: int) -> None:
        full = (block_rows, real_columns)
        x_buf = np.empty(full, cd) if widen else None
        g_buf = np.empty(full, cd)
        c_buf = None if index else np.empty(full, cd)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            for s in range(start, stop, block_rows):
                e = min(s + block_rows, stop)
                _block(s, e, e - s, x_buf, g_buf, c_buf)

    def _block(s, e, b, x_buf, g_buf, c_buf) -> None:
        x = _load(x_all[s:e], x_buf, b, widen, bfloat16)
        g = g_buf[:b]
        if softcap is not None:
            np.divide(x, softcap, out=g)
            np.tanh(g, out=g)
            g *= softcap
            z = g
        else:
            z = x
        m = z.max(axis=1)
        r = _reference(m)
        np.subtract(z, r[:, None], out=g)  # g = z - r (the shifted logits)
        if index:
            on_t = targets.on_target[s:e]
            gy = g[np.arange(b), targets.local[s:e]]
            dot = np.where(on_t != 0.0, on_t * gy, 0.0)  # 0 log 0 = 0 on the target too
            if targets.label_smoothing:
                u = targets.uniform
                uniform_dot = g @ u if np.ndim(u) else g.sum(axis=1) * u
                if targets.valid is not None:
                    uniform_dot = np.where(targets.valid[s:e], uniform_dot, 0.0)
                dot = dot + uniform_dot
            coef = None
            coef_sum = targets.coef_sum[s:e]
        else:
            coef = _block_coefficients(targets, s, e, c_buf[:b])
            dot = np.einsum("ij,ij->i", coef, g)
            coef_sum = coef.sum(axis=1)
        bad = ~np.isfinite(dot)
        if bad.any():
            _exact_dot(dot, bad, g, s, targets, coef)
        np.exp(g, out=g)
        stats[MAX, s:e] = m
        stats[SUM_EXP, s:e] = g.sum(axis=1)
        stats[DOT, s:e] = dot
        stats[COEF_SUM, s:e] = coef_sum

    _run_row_ranges(rows, real_columns, work)
    return stats


def _exact_dot(dot, bad, shifted, start, targets: ShardTargets, coef) -> None:
    """Recompute ``a . (z - r)`` on rows where it is not finite, skipping classes with
    ``a_c = 0`` (``0 log 0 = 0``); a genuine NaN or a weighted ``-inf`` stays."""
    for i in np.flatnonzero(bad):
        s_row = shifted[i]
        if coef is not None:
            a_row = coef[i]
        else:
            r = start + i
            if targets.valid is not None and not targets.valid[r]:
                dot[i] = 0.0
                continue
            a_row = np.zeros_like(s_row)
            if targets.label_smoothing:
                a_row += targets.uniform
            a_row[targets.local[r]] += targets.on_target[r]
        used = a_row != 0
        dot[i] = np.dot(a_row[used], s_row[used])


def row_factors(combined: np.ndarray, z_weight: np.ndarray | float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(R, 1/S, P)`` of every row from merged statistics: the reference, the inverse sum
    and the softmax factor ``P = A + 2 z_loss w_n lse`` of the gradient."""
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
    targets: ShardTargets,
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
    block_rows = max(1, min(rows, BLOCK_ELEMENTS // real_columns))
    widen = bfloat16 or logits.dtype != cd
    narrow = bfloat16 or grad_out.dtype != cd
    scale_is_vector = np.ndim(grad_scale) == 1
    index = targets.probability is None

    def work(start: int, stop: int) -> None:
        full = (block_rows, real_columns)
        x_buf = np.empty(full, cd) if (widen or softcap is not None) else None
        g_buf = np.empty(full, cd) if narrow else None
        c_buf = None if index else np.empty(full, cd)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            for s in range(start, stop, block_rows):
                e = min(s + block_rows, stop)
                _block(s, e, e - s, x_buf, g_buf, c_buf)

    def _block(s, e, b, x_buf, g_buf, c_buf) -> None:
        x = _load(x_all[s:e], x_buf, b, widen, bfloat16)
        g = g_buf[:b] if narrow else g_all[s:e]
        if softcap is not None:  # keep tanh in the scratch buffer for the chain rule
            th = x_buf[:b]
            np.divide(x, softcap, out=th)
            np.tanh(th, out=th)
            np.multiply(th, softcap, out=g)
            z = g
        else:
            th, z = None, x
        scale = grad_scale[s:e] if scale_is_vector else grad_scale
        np.subtract(z, r_all[s:e, None], out=g)
        np.exp(g, out=g)
        row_factor = p_all[s:e] * inv_s_all[s:e] * scale
        g *= row_factor[:, None]
        if index:
            rows_b = np.arange(b)
            g[rows_b, targets.local[s:e]] -= targets.on_target[s:e] * scale
            if targets.label_smoothing:
                u = targets.uniform
                uscale = scale * targets.valid[s:e] if targets.valid is not None else scale
                if np.ndim(uscale):
                    g -= np.multiply.outer(uscale, u) if np.ndim(u) else (uscale * u)[:, None]
                else:
                    g -= uscale * u
        else:
            coef = _block_coefficients(targets, s, e, c_buf[:b])
            coef *= scale[:, None] if np.ndim(scale) else scale
            g -= coef
        if th is not None:
            np.square(th, out=th)
            np.subtract(1.0, th, out=th)
            g *= th
        if index and targets.valid is not None:
            g[~targets.valid[s:e]] = 0.0  # exactly 0, whatever the ignored rows' logits
        if narrow:
            out = g_all[s:e]
            if bfloat16:
                float32_to_bf16_bits(g, out)
            else:
                np.copyto(out, g, casting="unsafe")

    _run_row_ranges(rows, real_columns, work)

r"""The shard pass: cross-entropy over a slice of the class axis, in three steps.

A *shard* holds, for every row, the logits of the classes ``col_start .. col_start+V_local-1``:
one tensor-parallel rank's slice of a language model's output, or one vocabulary block of a
blocked schedule in a single process (the two are the same thing).  Every variant of the loss
is ``A lse - a.z`` per row (:mod:`crossent._semantics`), so a shard contributes four numbers
per row, and these merge exactly:

1. :func:`shard_statistics` (local): per row, with ``z`` the shard's logits (softcapped
   elementwise first), ``a`` their target coefficients and ``r`` the reference (the max, or 0
   while the max is ``-inf``)::

       m = max_c z_c      s = sum_c exp(z_c - r)      d = sum_c a_c (z_c - r)      A = sum_c a_c

   stacked as a ``(4, M)`` tensor (rows :data:`MAX`, :data:`SUM_EXP`, :data:`DOT`,
   :data:`COEF_SUM`) in the compute dtype (float64 for float64 inputs, else float32).
   ``d`` skips classes with ``a_c = 0`` (``0 log 0 = 0``: a ``-inf`` logit the target does
   not weigh adds 0, not NaN).  Columns at or past ``num_classes`` are padding: they take no
   part (a shard of padding only gives ``(-inf, 0, 0, 0)``).  Ignored rows give ``d = A = 0``.
2. :func:`combine` (the online-softmax merge, the same for any number of shards): with
   ``M = max_k m_k`` and ``R``, ``r_k`` the references of ``M`` and ``m_k``::

       S = sum_k s_k exp(r_k - R)     D = sum_k (d_k + A_k (r_k - R))     A = sum_k A_k

   It takes statistics stacked along a leading axis ``(K, 4, M)`` (what an all-gather
   returns) and gives ``(4, M)`` statistics of the same form, so it also runs incrementally:
   ``running = merge(running, block)``.  :func:`rebase` is its first half (every shard's
   statistics moved to a common max), for a MAX all-reduce followed by a SUM all-reduce.
3. :func:`finish_loss` and :func:`shard_gradient`, from the merged statistics: the per-row
   loss ``A log S - D + z_loss w_n lse^2`` (``lse = R + log S``; 0 on ignored rows) and
   this shard's gradient ``scale_n ((A + 2 z_loss w_n lse) exp(z - lse) - a)`` times the
   softcap slope ``1 - tanh^2``, with ignored rows and padded columns exactly 0, into a
   buffer that may be the logits themselves.

Arguments shared by the steps: ``logits_cols`` ``(M, V_local)`` (last dimension contiguous
for the ``triton`` executor); ``target`` global class indices ``(M,)`` (range-checked by the
caller; identical for every shard) or this shard's ``(M, V_local)`` slice of class
probabilities; ``params`` a :class:`CrossEntropyParams`; ``weight`` the *full*
``(num_classes,)`` class weights or None; ``col_start`` the global index of the shard's first
column; ``num_classes`` the real number of classes ``C`` (label smoothing's ``eps / C``).
The executors are ``impl="cpu"`` (crossent's NumPy pass, :mod:`crossent._kernel_shard`),
``"torch"`` (portable) and ``"triton"`` (:mod:`crossent.torch.triton.shard`); all follow
the rules of :mod:`crossent._semantics`, never their own.

Exactness: the statistics are shifted sums (a large common offset on every logit cancels in
``z - r``), so splitting the classes into any number of shards changes the result only by
rounding, and ``K`` shards agree with one.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import _kernel_shard as kshard
from .. import _semantics as sem
from .._kernel import build_row_targets
from ._params import CrossEntropyParams
from ._rows import TORCH_BLOCK_ELEMENTS, _numpy_view, compute_dtype

__all__ = [
    "COEF_SUM",
    "DOT",
    "MAX",
    "NUM_STATS",
    "SUM_EXP",
    "combine",
    "finish_loss",
    "merge",
    "real_columns",
    "rebase",
    "row_terms",
    "shard_compute_dtype",
    "shard_gradient",
    "shard_statistics",
]

MAX, SUM_EXP, DOT, COEF_SUM = kshard.MAX, kshard.SUM_EXP, kshard.DOT, kshard.COEF_SUM
NUM_STATS = 4


def shard_compute_dtype(logits: torch.Tensor, target: torch.Tensor, params: CrossEntropyParams,
                        impl: str) -> torch.dtype:
    """The statistics' dtype: float64 for float64 inputs (not on ``triton``), else float32."""
    if impl == "triton":
        return torch.float32
    return compute_dtype(logits.dtype, target.dtype if params.probability else logits.dtype)


def real_columns(col_start: int, local_columns: int, num_classes: int) -> int:
    """How many of the shard's columns are real classes (the rest is padding)."""
    return max(0, min(local_columns, num_classes - col_start))


# --------------------------------------------------------------------------------------------
# Step 2: the merge (plain torch on (…, 4, M) tensors, any device; traced by torch.compile)
# --------------------------------------------------------------------------------------------


def reference(m: torch.Tensor) -> torch.Tensor:
    """The shift used with a max ``m``: ``m`` itself, or 0 while ``m`` is ``-inf`` (a row of
    a shard whose logits are all ``-inf``, or padding), so ``z - r`` is never ``-inf - -inf``."""
    return torch.where(m == float("-inf"), torch.zeros_like(m), m)


def rebase(stats: torch.Tensor, new_max: torch.Tensor) -> torch.Tensor:
    """Statistics ``(..., 4, M)`` re-expressed relative to ``new_max`` ``(M,)`` (each shard's
    max is at most ``new_max``): ``(new_max, s e^{r - R}, d + A (r - R), A)``.

    After a MAX all-reduce of the ``m`` row, every rank rebases its own statistics and a SUM
    all-reduce of the other three rows finishes :func:`combine`.
    """
    m, s, d, a = stats.unbind(-2)
    r = reference(m)
    big_r = reference(new_max)
    # a shard with max -inf has s = 0: its factor is 0 (exp(0 - R) may overflow)
    alpha = torch.where(m == float("-inf"), torch.zeros_like(s), torch.exp(r - big_r))
    shift = r - big_r
    # a shard that weighs nothing (A = 0) adds no (r - R) term, even if r - R is not finite
    d = d + torch.where(a != 0, a * shift, torch.zeros_like(d))
    return torch.stack([new_max.expand_as(m), s * alpha, d, a], dim=-2)


def combine(stats: torch.Tensor) -> torch.Tensor:
    """Merge the statistics of ``K`` shards, stacked as ``(K, 4, M)``, into ``(4, M)``.

    The online-softmax rule, exact for any ``K`` (a shard of padding, ``(-inf, 0, 0, 0)``,
    changes nothing); the result has the same form, so merges compose.
    """
    if stats.ndim != 3 or stats.shape[1] != NUM_STATS:
        raise ValueError(f"combine takes statistics of shape (K, 4, M), got {tuple(stats.shape)}")
    new_max = stats[:, MAX].amax(dim=0)
    rebased = rebase(stats, new_max)
    merged = rebased.sum(dim=0)
    merged[MAX] = new_max
    return merged


def merge(*stats: torch.Tensor) -> torch.Tensor:
    """``combine`` of several ``(4, M)`` statistics: ``running = merge(running, block)``."""
    return combine(torch.stack(stats))


# --------------------------------------------------------------------------------------------
# Step 3: the loss from merged statistics
# --------------------------------------------------------------------------------------------


def row_terms(target: torch.Tensor, params: CrossEntropyParams, weight: torch.Tensor | None,
              dtype: torch.dtype) -> tuple[torch.Tensor | None, torch.Tensor | float]:
    """``(valid, z_weight)`` per row: ``valid`` is False on ignored rows (None for
    probability targets, which ignore nothing); ``z_weight = z_loss * w_n`` with
    ``w_n = w[y]`` (0 if ignored), or 1 for probabilities (:mod:`crossent._semantics`)."""
    if params.probability:
        return None, params.z_loss
    valid, w_y = sem.index_row_weights(target, params.ignore_index,
                                       weight.to(dtype) if weight is not None else None)
    z_weight = w_y.to(dtype) * params.z_loss if params.z_loss else 0.0
    return valid, z_weight


def _row_factors(combined: torch.Tensor, z_weight: torch.Tensor | float):
    """``(R, log S, lse)``, and the gradient's softmax factor ``P = A + 2 z_loss w_n lse``."""
    r = reference(combined[MAX])
    log_s = torch.log(combined[SUM_EXP])
    lse = r + log_s
    p_factor = combined[COEF_SUM]
    if isinstance(z_weight, torch.Tensor) or z_weight != 0.0:
        p_factor = p_factor + 2.0 * z_weight * lse
    return r, log_s, lse, p_factor


def finish_loss(combined: torch.Tensor, target: torch.Tensor, params: CrossEntropyParams,
                weight: torch.Tensor | None) -> torch.Tensor:
    """Per-row losses ``(M,)`` from statistics merged over every shard, in their dtype:
    ``A log S - D + z_loss w_n lse^2``, exactly 0 on ignored rows."""
    valid, z_weight = row_terms(target, params, weight, combined.dtype)
    _, log_s, lse, _ = _row_factors(combined, 0.0)
    loss = combined[COEF_SUM] * log_s - combined[DOT]
    if params.z_loss:
        loss = loss + z_weight * lse * lse
    if valid is not None:
        loss = torch.where(valid, loss, torch.zeros_like(loss))
    return loss


# --------------------------------------------------------------------------------------------
# Steps 1 and 3 on every executor
# --------------------------------------------------------------------------------------------


def shard_statistics(
    logits_cols: torch.Tensor, target: torch.Tensor, params: CrossEntropyParams,
    weight: torch.Tensor | None, col_start: int, num_classes: int, *, impl: str = "torch",
) -> torch.Tensor:
    """Step 1: the shard's ``(4, M)`` statistics ``(m, s, d, A)`` (module docstring)."""
    if impl == "cpu":
        return _statistics_cpu(logits_cols, target, params, weight, col_start, num_classes)
    if impl == "triton":
        from .triton.shard import shard_statistics_triton

        return shard_statistics_triton(logits_cols, target, params, weight, col_start,
                                       num_classes)
    if impl == "torch":
        return _statistics_torch(logits_cols, target, params, weight, col_start, num_classes)
    raise ValueError(f"impl must be 'cpu', 'torch' or 'triton', got {impl!r}")


def shard_gradient(
    logits_cols: torch.Tensor, combined: torch.Tensor, target: torch.Tensor,
    params: CrossEntropyParams, weight: torch.Tensor | None, col_start: int, num_classes: int,
    grad_scale: torch.Tensor, grad_out: torch.Tensor, *, impl: str = "torch",
) -> torch.Tensor:
    """Step 3: write the shard's gradient into ``grad_out`` ``(M, V_local)`` and return it.

    ``combined`` is :func:`combine`'s ``(4, M)``; ``grad_scale`` is 0-d or ``(M,)``,
    ``d reduced loss / d loss_n`` (upstream gradient included).  ``grad_out`` may be
    ``logits_cols`` itself: every block is read before it is overwritten.
    """
    if impl == "cpu":
        _gradient_cpu(logits_cols, combined, target, params, weight, col_start, num_classes,
                      grad_scale, grad_out)
    elif impl == "triton":
        from .triton.shard import shard_gradient_triton

        shard_gradient_triton(logits_cols, combined, target, params, weight, col_start,
                              num_classes, grad_scale, grad_out)
    elif impl == "torch":
        _gradient_torch(logits_cols, combined, target, params, weight, col_start, num_classes,
                        grad_scale, grad_out)
    else:
        raise ValueError(f"impl must be 'cpu', 'torch' or 'triton', got {impl!r}")
    return grad_out


# -- cpu: crossent's NumPy pass on the tensors' memory -----------------------------------------


def _numpy_targets(logits, target, params, weight, col_start, num_classes):
    cd_torch = shard_compute_dtype(logits, target, params, "cpu")
    cd = np.dtype(np.float64 if cd_torch == torch.float64 else np.float32)
    real = real_columns(col_start, logits.shape[1], num_classes)
    if params.probability:
        t = target.detach()[:, :real]
        t_np = (t.float() if t.dtype in (torch.bfloat16, torch.float16) else t).numpy()
    else:
        t_np = target.detach().numpy().astype(np.int64, copy=False)
    w = weight.detach().numpy().astype(cd) if weight is not None else None
    targets, _ = build_row_targets(
        t_np, probability=params.probability, weight=w, ignore_index=params.ignore_index,
        label_smoothing=params.label_smoothing, z_loss=params.z_loss, num_classes=num_classes,
        compute_dtype=cd, col_start=col_start, real_columns=real)
    return targets, real, cd, cd_torch


def _statistics_cpu(logits, target, params, weight, col_start, num_classes):
    targets, real, cd, _ = _numpy_targets(logits, target, params, weight, col_start, num_classes)
    x, bf16 = _numpy_view(logits)
    return torch.from_numpy(kshard.shard_statistics(
        x, targets, real, cd, softcap=params.softcap, bfloat16=bf16))


def _gradient_cpu(logits, combined, target, params, weight, col_start, num_classes,
                  grad_scale, grad_out):
    targets, real, cd, cd_torch = _numpy_targets(logits, target, params, weight, col_start,
                                                 num_classes)
    x, bf16 = _numpy_view(logits)
    scale = grad_scale.detach().to(cd_torch).numpy()
    kshard.shard_gradient(x, combined.detach().to(cd_torch).numpy(), targets, real, scale,
                          _numpy_view(grad_out)[0], cd, softcap=params.softcap, bfloat16=bf16)


# -- torch: the same maths in row blocks of plain torch operations ------------------------------


class _TorchTargets:
    """The shard's coefficients for the torch executor (the NumPy executor's are
    :func:`crossent._kernel.build_row_targets` over the shard's column range)."""

    def __init__(self, target, params, weight, col_start, num_classes, real, cd, device):
        eps = params.label_smoothing
        self.params = params
        self.num_classes = num_classes
        self.w_local = weight.to(cd)[col_start:col_start + real] if weight is not None else None
        if params.probability:
            self.target = target[:, :real]
            return
        valid, w_y = sem.index_row_weights(target, params.ignore_index,
                                           weight.to(cd) if weight is not None else None)
        w_y = w_y.to(cd)
        local = target - col_start
        mine = valid & (local >= 0) & (local < real)
        self.valid = valid
        self.local = torch.where(mine, local, torch.zeros_like(local)).reshape(-1, 1)
        w_here = torch.where(mine, w_y, torch.zeros_like(w_y))
        on_target, uniform = sem.smoothing_terms(eps, num_classes)
        weight_sum_here = real if self.w_local is None else self.w_local.sum()
        self.coef_sum = sem.index_coefficient_sum(w_here, valid.to(cd), eps, num_classes,
                                                  weight_sum_here)
        self.on_target = w_here * on_target
        self.uniform = ((self.w_local * uniform) if self.w_local is not None
                        else torch.full((real,), uniform, dtype=cd, device=device))

    def coefficients(self, s: int, e: int, dtype: torch.dtype) -> torch.Tensor:
        """Probability coefficients ``w ((1 - eps) t + eps / C)`` of rows ``s:e``."""
        coef = sem.smoothed_probabilities(self.target[s:e].to(dtype),
                                          self.params.label_smoothing, self.num_classes)
        return coef * self.w_local if self.w_local is not None else coef


def _softcapped(x: torch.Tensor, softcap: float | None):
    if softcap is None:
        return x, None
    th = torch.tanh(x / softcap)
    return th * softcap, th


def _statistics_torch(logits, target, params, weight, col_start, num_classes):
    rows, columns = logits.shape
    cd = shard_compute_dtype(logits, target, params, "torch")
    device = logits.device
    stats = torch.empty((NUM_STATS, rows), dtype=cd, device=device)
    real = real_columns(col_start, columns, num_classes)
    if real == 0:
        stats[MAX] = float("-inf")
        stats[SUM_EXP:] = 0.0
        return stats
    tt = _TorchTargets(target, params, weight, col_start, num_classes, real, cd, device)
    block = max(1, TORCH_BLOCK_ELEMENTS // real)
    for s in range(0, rows, block):
        e = min(s + block, rows)
        z, _ = _softcapped(logits[s:e, :real].to(cd), params.softcap)
        m = z.amax(dim=1)
        shifted = z - reference(m)[:, None]
        if params.probability:
            coef = tt.coefficients(s, e, cd)
            # 0 log 0 = 0: classes the target does not weigh add nothing, even at -inf
            dot = torch.where(coef != 0, coef * shifted, 0.0).sum(dim=1)
            coef_sum = coef.sum(dim=1)
        else:
            on_t = tt.on_target[s:e]
            gy = shifted.gather(1, tt.local[s:e])[:, 0]
            dot = torch.where(on_t != 0, on_t * gy, 0.0)
            if params.label_smoothing:
                u = tt.uniform
                uniform_dot = torch.where(u != 0, shifted * u, 0.0).sum(dim=1)
                dot = dot + torch.where(tt.valid[s:e], uniform_dot, 0.0)
            coef_sum = tt.coef_sum[s:e]
        stats[MAX, s:e] = m
        stats[SUM_EXP, s:e] = torch.exp(shifted).sum(dim=1)
        stats[DOT, s:e] = dot
        stats[COEF_SUM, s:e] = coef_sum
    return stats


def _gradient_torch(logits, combined, target, params, weight, col_start, num_classes,
                    grad_scale, grad_out):
    rows, columns = logits.shape
    cd = shard_compute_dtype(logits, target, params, "torch")
    device = logits.device
    real = real_columns(col_start, columns, num_classes)
    if real < columns:
        grad_out[:, real:] = 0
    if real == 0 or rows == 0:
        return
    tt = _TorchTargets(target, params, weight, col_start, num_classes, real, cd, device)
    _, z_weight = row_terms(target, params, weight, cd)
    r, log_s, _, p_factor = _row_factors(combined.to(cd), z_weight)
    row_factor_all = p_factor * torch.exp(-log_s)
    scale_all = grad_scale.to(cd)
    block = max(1, TORCH_BLOCK_ELEMENTS // real)
    for s in range(0, rows, block):
        e = min(s + block, rows)
        z, th = _softcapped(logits[s:e, :real].to(cd), params.softcap)
        scale = scale_all[s:e] if scale_all.ndim else scale_all
        g = torch.exp(z - r[s:e, None]) * (row_factor_all[s:e] * scale)[:, None]
        if params.probability:
            coef = tt.coefficients(s, e, cd)
            g = g - coef * (scale[:, None] if scale.ndim else scale)
        else:
            on_t = tt.on_target[s:e] * scale
            g = g.scatter_add(1, tt.local[s:e], -on_t.reshape(-1, 1))
            if params.label_smoothing:
                vb = tt.valid[s:e].to(cd)
                g = g - (vb * scale).reshape(-1, 1) * tt.uniform
        if th is not None:
            g = g * (1.0 - th * th)
        if not params.probability:
            g = torch.where(tt.valid[s:e, None], g, 0.0)
        grad_out[s:e, :real] = g

"""Triton kernels of the shard pass (:mod:`crossent.torch._shard`): one program per row.

This module holds only ``@triton.jit`` code; :mod:`crossent.torch.triton.shard` launches it.
It reuses the helpers of the fused kernels (:mod:`._kernels`: the online statistics of a
column range, the gradient of a column range, the softcap), whose numerics notes apply here
unchanged: shifted sums, ``0 log 0 = 0``, a 0 reference while the max is ``-inf``, float32
whatever the input dtype, int64 row offsets, ignored rows exactly 0.

* :func:`shard_stats_kernel`: ``(m, s, d, A)`` of the shard's real columns ``[0, REAL)``,
  the index target's own term counted by the shard that holds its class;
* :func:`shard_grad_kernel`: the gradient of the real columns from the merged statistics,
  and zeros over the padded columns ``[REAL, COLS)``.

The class weights are the full ``(num_classes,)`` vector: ``w_ptr + col_start`` is the
shard's slice, ``w_ptr + y`` the target's weight.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._kernels import _grad_range, _ref, _stats_range, _tanh_and_slope


@triton.jit
def _shard_target(x_row, t_row, w_ptr, col_start, REAL, ignore_index, keep, softcap,
                  inv_softcap, HAS_WEIGHT: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                  LOAD_ZY: tl.constexpr):
    """Index target of one row, as seen by this shard: ``(local, valid, on_t, w_n, z_y)``.

    ``local`` is the class's column in the shard, or -1 when the class is elsewhere (it
    then matches no column); ``on_t = (1-eps) w[y]`` only where the class is a real column
    here (else 0); ``w_n = w[y]`` (0 if ignored) for the z-loss; ``z_y`` the class's
    (softcapped) logit, read only with ``LOAD_ZY`` and only where it is here.
    """
    y_raw = tl.load(t_row).to(tl.int64)
    valid = y_raw != ignore_index
    y = tl.where(valid, y_raw, 0)
    local = y - col_start
    here = valid & (local >= 0) & (local < REAL)
    if HAS_WEIGHT:
        w_y = tl.load(w_ptr + y).to(tl.float32)
    else:
        w_y = tl.full((), 1.0, tl.float32)
    w_n = tl.where(valid, w_y, 0.0)
    on_t = tl.where(here, keep * w_n, 0.0)
    if LOAD_ZY:
        x_y = tl.load(x_row + tl.where(here, local, 0)).to(tl.float32)
        if HAS_SOFTCAP:
            th, slope = _tanh_and_slope(x_y * inv_softcap)
            z_y = softcap * th
        else:
            z_y = x_y
    else:
        z_y = tl.full((), 0.0, tl.float32)
    return tl.where(here, local, -1), valid, on_t, w_n, z_y


@triton.jit
def shard_stats_kernel(
    x_ptr, x_stride,            # the shard's logits (M, COLS), row stride; columns contiguous
    t_ptr, t_stride,            # index target (M,) int64 or probabilities (M, COLS); row stride
    w_ptr,                      # full class weights (num_classes,) (unused without HAS_WEIGHT)
    stats_ptr, M,               # (4, M) float32 statistics: m, s, d, A
    REAL, col_start, ignore_index, keep, uniform, softcap, inv_softcap,
    BLOCK: tl.constexpr, IS_PROB: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    SMOOTH: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # int64 before any multiply by a stride
    x_row = x_ptr + row * x_stride
    t_row = t_ptr + row * t_stride
    m, s, d, a_sum = _stats_range(x_row, t_row, w_ptr + col_start, 0, REAL, keep, uniform,
                                  softcap, inv_softcap, BLOCK, IS_PROB, HAS_WEIGHT, SMOOTH,
                                  HAS_SOFTCAP)
    if not IS_PROB:
        local, valid, on_t, w_n, z_y = _shard_target(x_row, t_row, w_ptr, col_start, REAL,
                                                     ignore_index, keep, softcap, inv_softcap,
                                                     HAS_WEIGHT, HAS_SOFTCAP, True)
        d = d + tl.where(on_t != 0.0, on_t * (z_y - _ref(m)), 0.0)  # 0 log 0 = 0
        a_sum = a_sum + on_t
        # an ignored row weighs nothing (its smoothing part included)
        d = tl.where(valid, d, 0.0)
        a_sum = tl.where(valid, a_sum, 0.0)
    tl.store(stats_ptr + row, m)
    tl.store(stats_ptr + M + row, s)
    tl.store(stats_ptr + 2 * M + row, d)
    tl.store(stats_ptr + 3 * M + row, a_sum)


@triton.jit
def shard_grad_kernel(
    x_ptr, x_stride, t_ptr, t_stride, w_ptr,
    c_ptr, M,                   # (4, M) float32 statistics merged over every shard
    gs_ptr, gs_stride,          # gradient scale per row (stride 0: one scalar)
    g_ptr, g_stride,            # gradient (M, COLS); may alias x
    REAL, COLS, col_start, ignore_index, keep, uniform, z_loss, softcap, inv_softcap,
    BLOCK: tl.constexpr, IS_PROB: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    SMOOTH: tl.constexpr, HAS_ZLOSS: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * x_stride
    t_row = t_ptr + row * t_stride
    g_row = g_ptr + row * g_stride
    m = tl.load(c_ptr + row)
    s = tl.load(c_ptr + M + row)
    a_sum = tl.load(c_ptr + 3 * M + row)
    if IS_PROB:
        local = tl.full((), -1, tl.int64)
        valid = tl.full((), 1, tl.int1)
        on_t = tl.full((), 0.0, tl.float32)
        w_n = tl.full((), 1.0, tl.float32)
    else:
        local, valid, on_t, w_n, z_y = _shard_target(x_row, t_row, w_ptr, col_start, REAL,
                                                     ignore_index, keep, softcap, inv_softcap,
                                                     HAS_WEIGHT, HAS_SOFTCAP, False)
    r = _ref(m)
    log_s = tl.log(s)
    p_factor = a_sum
    if HAS_ZLOSS:
        p_factor = p_factor + 2.0 * z_loss * w_n * (r + log_s)
    scale = tl.load(gs_ptr + row * gs_stride).to(tl.float32)
    _grad_range(x_row, g_row, t_row, w_ptr + col_start, 0, REAL, local, on_t, r, 1.0 / s,
                p_factor, scale, valid, keep, uniform, softcap, inv_softcap,
                BLOCK, IS_PROB, HAS_WEIGHT, SMOOTH, HAS_SOFTCAP)
    for start in range(REAL, COLS, BLOCK):  # padded columns: exactly 0
        cols = start + tl.arange(0, BLOCK)
        tl.store(g_row + cols, tl.zeros((BLOCK,), tl.float32).to(g_ptr.dtype.element_ty),
                 mask=cols < COLS)

"""Triton kernels of the fused softmax cross-entropy (loss and gradient in the forward).

This module holds only ``@triton.jit`` code; :mod:`crossent.torch.triton.cross_entropy`
allocates, plans and launches.  Every kernel computes, for its row ``n`` (or a piece of it),
the maths of :mod:`crossent._semantics` in float32 whatever the input dtype::

    z      = softcap * tanh(x / softcap)   (or z = x)
    a      = target coefficients           (index: (1-eps) w[y] onehot(y) + (eps/C) w;
                                            probability: w ((1-eps) t + eps/C))
    A      = sum_c a_c,   w_n = w[y] (index, 0 if ignored) or 1 (probability)
    lse    = logsumexp(z)
    loss   = A lse - a.z + z_loss w_n lse^2
    grad   = scale_n ((A + 2 z_loss w_n lse) softmax(z) - a)  (* (1 - tanh^2) under softcap)

Numerics (why the code looks the way it does)
---------------------------------------------
* **Shifted sums.**  A running reference ``r`` (the running max, or 0 while the max is still
  ``-inf``) is subtracted before anything is summed: ``S = sum exp(z - r)`` and
  ``D = sum a_c (z_c - r)``.  Then ``loss = A log S - D`` never forms ``lse`` or ``a.z``
  separately, so a large common offset on every logit (``x + 1e4`` in fp32) cancels exactly
  in ``z - r`` instead of costing ``1e4 * eps`` of absolute error in ``A lse - a.z``.
  When the running max grows from ``r_old`` to ``r_new`` the sums are rescaled:
  ``S *= exp(r_old - r_new)`` and ``D += A (r_old - r_new)``.
* **0 log 0 = 0.**  A class with ``a_c = 0`` adds nothing to ``D`` even when its logit is
  ``-inf`` (``0 * -inf`` would be NaN): the product is taken under ``where(a != 0)``.
* **-inf blocks.**  While every logit seen is ``-inf`` the reference is 0, not ``-inf``, so
  ``z - r`` stays ``-inf`` (exp gives 0) instead of ``-inf - -inf = NaN``; a row that is
  ``-inf`` everywhere still ends as NaN (``0 log 0`` of the sum), like PyTorch.
* **p -> 1.**  The gradient ``P p - a`` is formed in float32 and rounded once at the store,
  so the target's ``p_y - 1`` keeps its digits in bf16 (the error of rounding ``p_y`` first
  was Liger-Kernel #1329).
* **tanh without cancellation.**  Triton has no portable ``tanh``; :func:`_tanh_and_slope`
  uses ``t = exp(-2|u|)``: ``tanh|u| = (1-t)/(1+t)`` and ``1 - tanh^2 = 4t/(1+t)^2``
  (exact for large ``|u|``, where ``1 - tanh^2`` computed from a rounded tanh is 0), and a
  Taylor polynomial for ``|u| < 1/4`` where ``1 - t`` would cancel.
* **int64 offsets.**  ``row * stride`` is computed in int64, so ``N * V > 2**31`` is safe.
* **Ignored rows** get ``loss = 0`` and ``grad = 0`` through ``where``, so inf/NaN in their
  logits cannot leak (PyTorch gives NaN gradients there, pytorch#11551).
"""

from __future__ import annotations

import triton
import triton.language as tl

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


@triton.jit
def _tanh_and_slope(u):
    """``(tanh(u), 1 - tanh(u)**2)`` in float32, both to a few ulp for every ``u``."""
    au = tl.abs(u)
    t = tl.exp(-2.0 * au)  # in [0, 1]; 0 for |u| = inf
    one_t = 1.0 + t
    big = (1.0 - t) / one_t
    # tanh(u) = u - u^3/3 + 2u^5/15 - 17u^7/315 + 62u^9/2835 - ...; the next term is below
    # 1e-8 relative for |u| < 1/4, where (1 - t) would lose up to 2 bits to cancellation.
    u2 = au * au
    poly = 0.021869488536155203 * u2 - 0.05396825396825397
    poly = poly * u2 + 0.13333333333333333
    poly = poly * u2 - 0.3333333333333333
    small = au + au * (u2 * poly)
    th = tl.where(au < 0.25, small, big)
    th = tl.where(u < 0.0, -th, th)
    slope = 4.0 * t / (one_t * one_t)
    return th, slope


@triton.jit
def _ref(m):
    """The shift used with a running max ``m``: ``m`` itself, or 0 while ``m`` is ``-inf``."""
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def _load_z(x_row, cols, mask, softcap, inv_softcap, HAS_SOFTCAP: tl.constexpr):
    """Logits of one block in float32, softcapped if asked; masked lanes are ``-inf``."""
    x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_SOFTCAP:
        th, slope = _tanh_and_slope(x * inv_softcap)
        z = softcap * th
    else:
        z = x
    # after the softcap: a masked lane must not become softcap * tanh(-inf) = -softcap
    return tl.where(mask, z, float("-inf"))


@triton.jit
def _block_coef(t_row, w_ptr, cols, mask, keep, uniform,
                IS_PROB: tl.constexpr, HAS_WEIGHT: tl.constexpr, SMOOTH: tl.constexpr):
    """Target coefficients of one block, except the index target's own ``(1-eps) w[y]``.

    probability: ``w_c ((1-eps) t_c + eps/C)``;  index: ``(eps/C) w_c`` (only with
    smoothing; the on-target part is one scalar, handled by the caller).  Masked lanes are 0.
    ``keep`` is ``1 - eps``, ``uniform`` is ``eps / C``.
    """
    if IS_PROB:
        a = tl.load(t_row + cols, mask=mask, other=0.0).to(tl.float32)
        if SMOOTH:
            a = tl.where(mask, a * keep + uniform, 0.0)
    else:
        a = tl.where(mask, uniform, 0.0)
    if HAS_WEIGHT:
        a = a * tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    return a


@triton.jit
def _stats_range(x_row, t_row, w_ptr, lo, hi, keep, uniform, softcap, inv_softcap,
                 BLOCK: tl.constexpr, IS_PROB: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                 SMOOTH: tl.constexpr, HAS_SOFTCAP: tl.constexpr):
    """Online softmax statistics of columns ``[lo, hi)``, one block of ``BLOCK`` at a time.

    Returns ``(m, S, D, A)``: the max, ``sum exp(z - r)``, ``sum_{a != 0} a (z - r)`` and
    ``sum a`` (``r = _ref(m)``; ``a`` from :func:`_block_coef`, so ``D = A = 0`` for index
    targets without smoothing).
    """
    m = tl.full((), float("-inf"), tl.float32)
    s = tl.full((), 0.0, tl.float32)
    d = tl.full((), 0.0, tl.float32)
    a_sum = tl.full((), 0.0, tl.float32)
    for start in range(lo, hi, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < hi
        z = _load_z(x_row, cols, mask, softcap, inv_softcap, HAS_SOFTCAP)
        m_new = tl.maximum(m, tl.max(z, 0))
        r_old = _ref(m)
        r_new = _ref(m_new)
        # while m is -inf, s is 0: its factor must be 0, not exp(0 - r_new) (may overflow)
        alpha = tl.where(m == float("-inf"), 0.0, tl.exp(r_old - r_new))
        zs = z - r_new
        s = s * alpha + tl.sum(tl.exp(zs), 0)
        if IS_PROB or SMOOTH:
            a = _block_coef(t_row, w_ptr, cols, mask, keep, uniform, IS_PROB, HAS_WEIGHT, SMOOTH)
            d = d + a_sum * (r_old - r_new) + tl.sum(tl.where(a != 0.0, a * zs, 0.0), 0)
            a_sum = a_sum + tl.sum(a, 0)
        m = m_new
    return m, s, d, a_sum


@triton.jit
def _row_target(x_row, t_row, w_ptr, ignore_index, keep, softcap, inv_softcap,
                IS_PROB: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                LOAD_ZY: tl.constexpr):
    """Per-row target data: ``(y, valid, on_t, w_n, z_y)``.

    index: ``y`` (0 when ignored, so every load stays in bounds), ``valid = y != ignore``,
    ``on_t = (1-eps) w[y]`` and ``w_n = w[y]`` (both 0 if ignored), ``z_y`` the target's
    (softcapped) logit (0 without ``LOAD_ZY``: a program that may run after another one
    overwrote the logits in place must not read them).  probability: ``y = -1`` (matches
    no column), ``valid`` true, ``on_t = 0``, ``w_n = 1``.
    """
    if IS_PROB:
        y = tl.full((), -1, tl.int64)
        valid = tl.full((), 1, tl.int1)
        on_t = tl.full((), 0.0, tl.float32)
        w_n = tl.full((), 1.0, tl.float32)
        z_y = tl.full((), 0.0, tl.float32)
    else:
        y_raw = tl.load(t_row).to(tl.int64)
        valid = y_raw != ignore_index
        y = tl.where(valid, y_raw, 0)
        if HAS_WEIGHT:
            w_y = tl.load(w_ptr + y).to(tl.float32)
        else:
            w_y = tl.full((), 1.0, tl.float32)
        w_n = tl.where(valid, w_y, 0.0)
        on_t = keep * w_n
        if LOAD_ZY:
            x_y = tl.load(x_row + y).to(tl.float32)
            if HAS_SOFTCAP:
                th, slope = _tanh_and_slope(x_y * inv_softcap)
                z_y = softcap * th
            else:
                z_y = x_y
        else:
            z_y = tl.full((), 0.0, tl.float32)
    return y, valid, on_t, w_n, z_y


@triton.jit
def _finish(m, s, d, a_sum, on_t, z_y, w_n, valid, z_loss, HAS_ZLOSS: tl.constexpr):
    """Loss and softmax factor of a row from its merged statistics.

    Adds the index target's ``on_t (z_y - r)`` to ``D`` and ``on_t`` to ``A`` (callers that
    already counted the target pass ``on_t = 0``), then
    ``loss = A log S - D (+ z_loss w_n lse^2)`` and ``P = A (+ 2 z_loss w_n lse)``, the
    factor of ``softmax`` in the gradient.  Returns ``(r, 1/S, loss, P)``.
    """
    r = _ref(m)
    d = d + tl.where(on_t != 0.0, on_t * (z_y - r), 0.0)  # 0 * log 0 = 0 on the target too
    a_sum = a_sum + on_t
    log_s = tl.log(s)
    loss = a_sum * log_s - d
    p_factor = a_sum
    if HAS_ZLOSS:
        lse = r + log_s
        zw = z_loss * w_n
        loss = loss + zw * lse * lse
        p_factor = p_factor + 2.0 * zw * lse
    loss = tl.where(valid, loss, 0.0)
    return r, 1.0 / s, loss, p_factor


@triton.jit
def _grad_block(z, a, cols, y, on_t, r, inv_s, p_factor, scale, slope, valid,
                NEED_COEF: tl.constexpr, HAS_SOFTCAP: tl.constexpr):
    """``scale ((P softmax - a) * slope)`` for one block, in float32, 0 on ignored rows."""
    p = tl.exp(z - r) * inv_s
    g = p_factor * p
    if NEED_COEF:
        g = g - a
    # the target's p_y - (1-eps) w[y] is formed here in fp32, before any rounding
    g = tl.where(cols == y, g - on_t, g)
    if HAS_SOFTCAP:
        g = g * slope
    g = g * scale
    return tl.where(valid, g, 0.0)


@triton.jit
def _grad_range(x_row, g_row, t_row, w_ptr, lo, hi, y, on_t, r, inv_s, p_factor, scale, valid,
                keep, uniform, softcap, inv_softcap,
                BLOCK: tl.constexpr, IS_PROB: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                SMOOTH: tl.constexpr, HAS_SOFTCAP: tl.constexpr):
    """Second pass over columns ``[lo, hi)``: re-read the logits, write the gradient."""
    for start in range(lo, hi, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < hi
        x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_SOFTCAP:
            th, slope = _tanh_and_slope(x * inv_softcap)
            z = softcap * th
        else:
            z = x
            slope = x  # unused
        if IS_PROB or SMOOTH:
            a = _block_coef(t_row, w_ptr, cols, mask, keep, uniform, IS_PROB, HAS_WEIGHT, SMOOTH)
        else:
            a = x  # unused
        g = _grad_block(z, a, cols, y, on_t, r, inv_s, p_factor, scale, slope, valid,
                        IS_PROB or SMOOTH, HAS_SOFTCAP)
        tl.store(g_row + cols, g.to(g_row.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def ce_row_kernel(
    x_ptr, x_stride,            # logits (M, C), row stride; columns contiguous
    t_ptr, t_stride,            # index target (M,) int64 or probabilities (M, C); row stride
    w_ptr,                      # class weights (C,) (unused without HAS_WEIGHT)
    gs_ptr, gs_stride,          # gradient scale per row (stride 0: one scalar)
    g_ptr, g_stride,            # gradient (M, C) (unused without HAS_GRAD); may alias x
    loss_ptr,                   # (M,) float32 losses
    C, ignore_index, keep, uniform, z_loss, softcap, inv_softcap,
    BLOCK: tl.constexpr, SINGLE: tl.constexpr,
    IS_PROB: tl.constexpr, HAS_WEIGHT: tl.constexpr, SMOOTH: tl.constexpr,
    HAS_ZLOSS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_GRAD: tl.constexpr,
):
    """One program per row.

    ``SINGLE`` (the row fits in one block, ``C <= BLOCK``): the row is loaded once and the
    gradient is computed from registers, so memory sees one read and one write.  Otherwise
    pass 1 streams the row for the online statistics and pass 2 streams it again to write
    the gradient (the second read is served by L2 when the rows in flight fit there).
    """
    row = tl.program_id(0).to(tl.int64)  # int64 before any multiply by a stride
    x_row = x_ptr + row * x_stride
    t_row = t_ptr + row * t_stride  # a probability row, or the one class index
    # the target's logit is read before anything is written (grad_out may be the logits)
    y, valid, on_t, w_n, z_y = _row_target(x_row, t_row, w_ptr, ignore_index, keep, softcap,
                                           inv_softcap, IS_PROB, HAS_WEIGHT, HAS_SOFTCAP, True)
    NEED_COEF: tl.constexpr = IS_PROB or SMOOTH
    if SINGLE:
        cols = tl.arange(0, BLOCK)
        mask = cols < C
        x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_SOFTCAP:
            th, slope = _tanh_and_slope(x * inv_softcap)
            z = tl.where(mask, softcap * th, float("-inf"))
        else:
            z = tl.where(mask, x, float("-inf"))
            slope = x  # unused
        m = tl.max(z, 0)
        zs = z - _ref(m)
        s = tl.sum(tl.exp(zs), 0)
        if NEED_COEF:
            a = _block_coef(t_row, w_ptr, cols, mask, keep, uniform, IS_PROB, HAS_WEIGHT, SMOOTH)
            d = tl.sum(tl.where(a != 0.0, a * zs, 0.0), 0)
            a_sum = tl.sum(a, 0)
        else:
            a = x  # unused
            d = tl.full((), 0.0, tl.float32)
            a_sum = tl.full((), 0.0, tl.float32)
        r, inv_s, loss, p_factor = _finish(m, s, d, a_sum, on_t, z_y, w_n, valid, z_loss,
                                           HAS_ZLOSS)
        tl.store(loss_ptr + row, loss)
        if HAS_GRAD:
            scale = tl.load(gs_ptr + row * gs_stride).to(tl.float32)
            g = _grad_block(z, a, cols, y, on_t, r, inv_s, p_factor, scale, slope, valid,
                            NEED_COEF, HAS_SOFTCAP)
            g_row = g_ptr + row * g_stride
            tl.store(g_row + cols, g.to(g_ptr.dtype.element_ty), mask=mask)
    else:
        m, s, d, a_sum = _stats_range(x_row, t_row, w_ptr, 0, C, keep, uniform, softcap,
                                      inv_softcap, BLOCK, IS_PROB, HAS_WEIGHT, SMOOTH,
                                      HAS_SOFTCAP)
        r, inv_s, loss, p_factor = _finish(m, s, d, a_sum, on_t, z_y, w_n, valid, z_loss,
                                           HAS_ZLOSS)
        tl.store(loss_ptr + row, loss)
        if HAS_GRAD:
            scale = tl.load(gs_ptr + row * gs_stride).to(tl.float32)
            _grad_range(x_row, g_ptr + row * g_stride, t_row, w_ptr, 0, C, y, on_t, r, inv_s,
                        p_factor, scale, valid, keep, uniform, softcap, inv_softcap,
                        BLOCK, IS_PROB, HAS_WEIGHT, SMOOTH, HAS_SOFTCAP)


@triton.jit
def ce_split_stats_kernel(
    x_ptr, x_stride, t_ptr, t_stride, w_ptr,
    part_ptr,                   # (4, M, n_split) float32: m, S, D, A of every piece
    plane,                      # M * n_split, from the host (int64 when it is large)
    C, CHUNK, n_split, ignore_index, keep, uniform, softcap, inv_softcap,
    BLOCK: tl.constexpr, IS_PROB: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    SMOOTH: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
):
    """Split-row pass 1: program ``(row, j)`` reduces columns ``[j CHUNK, (j+1) CHUNK)``.

    The piece holding an index target's class also counts its ``(1-eps) w[y]`` term, so the
    loss comes from the partials alone: pass 2 may overwrite the logits (in place) in any
    order and never reads a logit outside its own piece.
    """
    row = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1)
    lo = j * CHUNK
    hi = tl.minimum(lo + CHUNK, C)
    x_row = x_ptr + row * x_stride
    t_row = t_ptr + row * t_stride  # a probability row, or the one class index
    m, s, d, a_sum = _stats_range(x_row, t_row, w_ptr, lo, hi, keep, uniform, softcap,
                                  inv_softcap, BLOCK, IS_PROB, HAS_WEIGHT, SMOOTH, HAS_SOFTCAP)
    if not IS_PROB:
        y, valid, on_t, w_n, z_y = _row_target(x_row, t_row, w_ptr, ignore_index, keep,
                                               softcap, inv_softcap, IS_PROB, HAS_WEIGHT,
                                               HAS_SOFTCAP, True)
        mine = (y >= lo) & (y < hi) & (on_t != 0.0)  # 0 log 0 = 0 on the target too
        d = d + tl.where(mine, on_t * (z_y - _ref(m)), 0.0)
        a_sum = a_sum + tl.where((y >= lo) & (y < hi), on_t, 0.0)
    at = part_ptr + row * n_split + j
    tl.store(at, m)
    tl.store(at + plane, s)
    tl.store(at + 2 * plane, d)
    tl.store(at + 3 * plane, a_sum)


@triton.jit
def ce_split_finish_kernel(
    x_ptr, x_stride, t_ptr, t_stride, w_ptr, gs_ptr, gs_stride, g_ptr, g_stride, loss_ptr,
    part_ptr, plane, C, CHUNK, n_split,   # plane = M * n_split, as in the stats kernel
    ignore_index, keep, uniform, z_loss, softcap, inv_softcap,
    BLOCK: tl.constexpr, SPLIT_POW2: tl.constexpr,
    IS_PROB: tl.constexpr, HAS_WEIGHT: tl.constexpr, SMOOTH: tl.constexpr,
    HAS_ZLOSS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_GRAD: tl.constexpr,
):
    """Split-row pass 2: merge the row's pieces, write the loss (piece 0), then the gradient
    of this program's piece.  Without ``HAS_GRAD`` it is launched with one program per row.
    Reads no logit outside its piece (see the stats kernel)."""
    row = tl.program_id(0).to(tl.int64)
    if HAS_GRAD:
        # Pieces are visited last-first.  On a GPU their order is arbitrary anyway; Triton's
        # interpreter runs programs in grid order, and this order makes it overwrite (in
        # place) later pieces before piece 0 writes the loss, as a GPU may.
        j = n_split - 1 - tl.program_id(1)
    else:
        j = tl.program_id(1)
    x_row = x_ptr + row * x_stride
    t_row = t_ptr + row * t_stride  # a probability row, or the one class index
    # -- merge: the same rescaling as one step of the online loop, over all pieces at once --
    k = tl.arange(0, SPLIT_POW2)
    kmask = k < n_split
    at = part_ptr + row * n_split + k
    m_k = tl.load(at, mask=kmask, other=float("-inf"))
    s_k = tl.load(at + plane, mask=kmask, other=0.0)
    d_k = tl.load(at + 2 * plane, mask=kmask, other=0.0)
    a_k = tl.load(at + 3 * plane, mask=kmask, other=0.0)
    m = tl.max(m_k, 0)
    r = _ref(m)
    r_k = _ref(m_k)
    alpha = tl.where(m_k == float("-inf"), 0.0, tl.exp(r_k - r))
    s = tl.sum(s_k * alpha, 0)
    d = tl.sum(d_k + a_k * (r_k - r), 0)
    a_sum = tl.sum(a_k, 0)
    y, valid, on_t, w_n, z_y = _row_target(x_row, t_row, w_ptr, ignore_index, keep, softcap,
                                           inv_softcap, IS_PROB, HAS_WEIGHT, HAS_SOFTCAP, False)
    # the target's term is in the partials already: on_t = 0 here
    no_target = tl.full((), 0.0, tl.float32)
    r, inv_s, loss, p_factor = _finish(m, s, d, a_sum, no_target, z_y, w_n, valid, z_loss,
                                       HAS_ZLOSS)
    tl.store(loss_ptr + row, loss, mask=j == 0)
    if HAS_GRAD:
        scale = tl.load(gs_ptr + row * gs_stride).to(tl.float32)
        lo = j * CHUNK
        hi = tl.minimum(lo + CHUNK, C)
        _grad_range(x_row, g_ptr + row * g_stride, t_row, w_ptr, lo, hi, y, on_t, r, inv_s,
                    p_factor, scale, valid, keep, uniform, softcap, inv_softcap,
                    BLOCK, IS_PROB, HAS_WEIGHT, SMOOTH, HAS_SOFTCAP)

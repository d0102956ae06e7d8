"""The fused softmax cross-entropy pass: loss and gradient in one sweep over the logits.

This is the NumPy executor of the definitions in :mod:`crossent._semantics`.  For each block
of rows (sized to stay in the CPU's L2 cache) it computes, reading the logits from memory
once and writing the gradient once::

    m    = max_c z_c                           (the stability shift)
    s    = z - m                               (written into the gradient buffer)
    dot  = a . s                               (target coefficients, see _semantics)
    e    = exp(s),  S = sum_c e_c,  lse = m + log S
    loss = A log S - dot  (+ z_loss w_n lse^2)
    grad = scale_n * ((A + 2 z_loss w_n lse) e / S - a)   (times 1 - tanh^2 under softcap)

Blocks are shared among threads (NumPy releases the GIL inside its loops), so the pass runs
at memory bandwidth on every core; ``CROSSENT_NUM_THREADS`` overrides the thread count.

Inputs may be float16, float32, float64 or bfloat16 (given as its raw ``uint16`` bits, which
is how the torch executor hands a bfloat16 tensor over without a copy).  Half-precision blocks
are widened to float32 in a scratch buffer, computed, and narrowed back on the way out.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from . import _semantics as sem

# A block holds about this many logits: 2**19 float32 values are 2 MiB, in L2 or the near L3.
# Smaller blocks are not faster: each block costs ~25 NumPy calls whose Python overhead holds
# the GIL, and with small blocks that overhead serialises the threads.  Measured on a 2-core
# EPYC (1 MiB L2 per core), float32 4096 x 32000 with 2 threads, best of 9: 2**16 121 ms
# (no faster than 1 thread, 130 ms), 2**18 69 ms, 2**19 64 ms; 1 thread at 2**19 117 ms.
BLOCK_ELEMENTS = 1 << 19
# Below this many logits a thread pool costs more than it saves.
PARALLEL_MIN_ELEMENTS = 1 << 20

# Worker pools by size (the configured thread count less one: the caller works too).  A pool
# is created once and never shut down, so calls from several threads at once are safe.
_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _forget_pools_after_fork() -> None:
    """In a forked child, start again with no pools and a fresh lock.

    ``fork`` copies only the calling thread: the parent's pool objects arrive in the child
    with their worker threads gone, so a job submitted to them would wait forever (and a
    lock held by another parent thread at the fork would stay held).  The child builds its
    own pool on first use instead.  The parent's pool objects are dropped, not shut down:
    shutting down would wait for threads that do not exist here.
    """
    global _pools, _pools_lock
    _pools = {}
    _pools_lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork
    os.register_at_fork(after_in_child=_forget_pools_after_fork)


def num_threads() -> int:
    """Threads the fused pass uses: ``CROSSENT_NUM_THREADS`` or the CPUs this process may use."""
    env = os.environ.get("CROSSENT_NUM_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(
                f"CROSSENT_NUM_THREADS must be a positive integer, got {env!r}"
            ) from None
        if n < 1:
            raise ValueError(f"CROSSENT_NUM_THREADS must be a positive integer, got {env!r}")
        return n
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _worker_pool(workers: int) -> ThreadPoolExecutor:
    """The shared pool of ``workers`` threads, created on first use."""
    with _pools_lock:
        pool = _pools.get(workers)
        if pool is None:
            pool = _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="crossent")
        return pool


def _run_row_ranges(rows: int, columns: int, work: Callable[[int, int], None]) -> None:
    """Call ``work(start, stop)`` over contiguous row ranges, in parallel when worth it.

    The calling thread takes the first range itself and the pool the others; every range
    has finished (or failed) when this returns, and a worker's exception is re-raised here.
    """
    configured = num_threads()
    threads = min(configured, rows)
    if threads <= 1 or rows * columns < PARALLEL_MIN_ELEMENTS:
        work(0, rows)
        return
    pool = _worker_pool(configured - 1)
    bounds = [int(b) for b in np.linspace(0, rows, threads + 1).astype(np.int64)]
    futures = [pool.submit(work, a, b) for a, b in zip(bounds[1:-1], bounds[2:])]
    try:
        work(bounds[0], bounds[1])
    finally:
        for f in futures:  # wait for all of them, even if ours failed: they write our buffers
            f.exception()
    for f in futures:
        f.result()  # re-raises a worker's exception


# --------------------------------------------------------------------------------------------
# bfloat16 as raw bits (NumPy has no bfloat16 dtype)
# --------------------------------------------------------------------------------------------


def bf16_bits_to_float32(bits: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Widen bfloat16 bits (uint16) to float32: the bits are the float32's high half."""
    np.left_shift(bits, 16, out=out.view(np.uint32), dtype=np.uint32)
    return out


def float32_to_bf16_bits(values: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Round float32 to the nearest bfloat16 (ties to even), as uint16 bits."""
    u = values.view(np.uint32)
    rounding = (u >> 16) & 1
    rounding += 0x7FFF
    rounded = (u + rounding) >> 16
    np.copyto(out, rounded, casting="unsafe")
    nan = np.isnan(values)
    if nan.any():
        out[nan] = 0x7FC0
    return out


# --------------------------------------------------------------------------------------------
# The pass
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowTargets:
    """Per-row target data, prepared once by the caller from the semantics rules.

    Exactly one of ``index`` / ``probability`` is set.

    index:        (M,) int64 class per row; ignored rows hold any valid class (e.g. 0)
    on_target:    (M,) coefficient of the row's own class, ``(1 - eps) * w[y]`` (0 if ignored)
    uniform:      (C,) or scalar coefficient every class gets, ``(eps / C) * w`` (eps > 0 only)
    valid:        (M,) bool, False for ignored rows (None when no row is ignored)
    probability:  (M, C) target probabilities (any float dtype; widened per block)
    prob_scale:   (C,) class weights applied to smoothed probabilities, or None
    coef_sum:     (M,) ``A = sum_c a_c`` for index targets (computed per block for probabilities)
    z_weight:     (M,) or scalar ``z_loss * w_n`` (0 when z-loss is off)
    """

    index: np.ndarray | None = None
    on_target: np.ndarray | None = None
    uniform: np.ndarray | float = 0.0
    valid: np.ndarray | None = None
    probability: np.ndarray | None = None
    prob_scale: np.ndarray | None = None
    label_smoothing: float = 0.0
    coef_sum: np.ndarray | None = None
    z_weight: np.ndarray | float = 0.0


def fused_softmax_cross_entropy(
    logits: np.ndarray,  # (M, C) float16/32/64, or uint16 bfloat16 bits
    targets: RowTargets,
    grad_scale: np.ndarray | float,  # (M,) or scalar: d(reduced loss) / d(loss_n)
    compute_dtype: np.dtype,
    *,
    softcap: float | None = None,
    grad_out: np.ndarray | None = None,  # (M, C) where the gradient goes; may alias logits
    bfloat16: bool = False,
) -> np.ndarray:
    """Per-row losses ``(M,)`` in ``compute_dtype``; the gradient is written to ``grad_out``.

    ``grad_out`` may be ``logits`` itself (in-place backward): each block is read completely
    before its gradient is written.  With ``grad_out=None`` only the loss is computed.
    """
    rows, classes = logits.shape
    cd = np.dtype(compute_dtype)
    losses = np.empty(rows, dtype=cd)
    block_rows = max(1, min(rows, BLOCK_ELEMENTS // max(classes, 1)))
    widen = bfloat16 or logits.dtype != cd
    narrow = grad_out is not None and (bfloat16 or grad_out.dtype != cd)
    scale_is_vector = np.ndim(grad_scale) == 1
    z_is_vector = np.ndim(targets.z_weight) == 1
    has_z = z_is_vector or targets.z_weight != 0.0
    smoothing = targets.label_smoothing

    def work(start: int, stop: int) -> None:
        # scratch buffers, one set per thread, reused for every block
        full = (block_rows, classes)
        x_buf = np.empty(full, cd) if (widen or softcap is not None) else None
        g_buf = np.empty(full, cd) if (narrow or grad_out is None) else None
        c_buf = np.empty(full, cd) if targets.probability is not None else None
        # errstate is per thread: non-finite logits legitimately produce inf/nan here
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            for s in range(start, stop, block_rows):
                e = min(s + block_rows, stop)
                _block(s, e, e - s, x_buf, g_buf, c_buf)

    def _block(s, e, b, x_buf, g_buf, c_buf) -> None:
        raw = logits[s:e]
        # -- load: x in compute precision --------------------------------------------------
        if bfloat16:
            x = bf16_bits_to_float32(raw, x_buf[:b])
        elif widen:
            x = x_buf[:b]
            np.copyto(x, raw, casting="unsafe")
        else:
            x = raw
        g = g_buf[:b] if g_buf is not None else grad_out[s:e]
        # -- softcap: z = cap * tanh(x / cap); keep tanh for the chain rule ------------------
        if softcap is not None:
            th = x_buf[:b]
            np.divide(x, softcap, out=th)
            np.tanh(th, out=th)
            z = np.multiply(th, softcap, out=g)
        else:
            th = None
            z = x
        # -- shift by the row max; the target term is taken on shifted logits (exact) -------
        m = z.max(axis=1)
        np.subtract(z, m[:, None], out=g)
        rows_b = np.arange(b)
        if targets.index is not None:
            y = targets.index[s:e]
            on_t = targets.on_target[s:e]
            dot = on_t * g[rows_b, y]
            if targets.valid is not None:
                dot[~targets.valid[s:e]] = 0.0  # an ignored row's class may hold -inf
            coef_sum = targets.coef_sum[s:e]
            if smoothing:
                uniform_dot = g @ targets.uniform if np.ndim(targets.uniform) else (
                    g.sum(axis=1) * targets.uniform)
                if targets.valid is not None:
                    uniform_dot = uniform_dot * targets.valid[s:e]
                dot += uniform_dot
        else:
            coef = c_buf[:b]
            np.copyto(coef, targets.probability[s:e], casting="unsafe")
            if smoothing:  # sem.smoothed_probabilities, applied in place
                on_target, uniform = sem.smoothing_terms(smoothing, classes)
                coef *= on_target
                coef += uniform
            if targets.prob_scale is not None:
                coef *= targets.prob_scale
            coef_sum = coef.sum(axis=1)
            dot = np.einsum("ij,ij->i", coef, g)
        bad = ~np.isfinite(dot)
        if bad.any():
            _exact_dot(dot, bad, g, s, targets, coef if targets.index is None else None)
        # -- exponentiate in place: the gradient buffer now holds exp(z - m) ----------------
        np.exp(g, out=g)
        sum_exp = g.sum(axis=1)
        log_sum = np.log(sum_exp)
        loss = coef_sum * log_sum - dot
        if has_z:
            zw = targets.z_weight[s:e] if z_is_vector else targets.z_weight
            lse = m + log_sum
            loss += zw * lse * lse
            p_factor = coef_sum + 2.0 * zw * lse
        else:
            p_factor = coef_sum
        if targets.valid is not None:
            loss[~targets.valid[s:e]] = 0.0  # ignored rows cost 0 even with non-finite logits
        losses[s:e] = loss
        if grad_out is None:
            return
        # -- gradient: scale * ((A + 2 z w lse) softmax - a) ----------------------------------
        scale = grad_scale[s:e] if scale_is_vector else grad_scale
        row_factor = p_factor / sum_exp
        row_factor *= scale
        g *= row_factor[:, None]
        if targets.index is not None:
            g[rows_b, y] -= on_t * scale
            if smoothing:
                u = targets.uniform
                uscale = scale * targets.valid[s:e] if targets.valid is not None else scale
                if np.ndim(uscale):
                    g -= np.multiply.outer(uscale, u) if np.ndim(u) else (uscale * u)[:, None]
                else:
                    g -= uscale * u
        else:
            if np.ndim(scale):
                coef *= scale[:, None]
            else:
                coef *= scale
            g -= coef
        if th is not None:
            np.square(th, out=th)
            np.subtract(1.0, th, out=th)
            g *= th
        if targets.valid is not None:
            # Ignored rows get exactly zero gradient, even when their logits are not finite
            # (PyTorch gives NaN there through 0 * nan, pytorch#11551).
            g[~targets.valid[s:e]] = 0.0
        # -- store --------------------------------------------------------------------------
        if narrow:
            out = grad_out[s:e]
            if bfloat16:
                float32_to_bf16_bits(g, out)
            else:
                np.copyto(out, g, casting="unsafe")

    _run_row_ranges(rows, classes, work)
    return losses


def _exact_dot(dot, bad, shifted, start, targets: RowTargets, coef) -> None:
    """Recompute ``a . s`` on rows where it is not finite, skipping classes with ``a_c = 0``.

    This is where ``0 * log 0`` lives: a class the target gives no weight (probability 0,
    or class weight 0 under smoothing) whose logit is ``-inf``.  Its term is 0, not NaN.
    Rows with a genuine NaN or an infinite weighted term keep NaN / inf.
    """
    for r in np.flatnonzero(bad):
        s_row = shifted[r]
        if coef is not None:
            a_row = coef[r]
        else:
            a_row = np.zeros_like(s_row)
            valid = targets.valid is None or targets.valid[start + r]
            if not valid:
                dot[r] = 0.0
                continue
            if targets.label_smoothing:
                a_row += targets.uniform
            a_row[targets.index[start + r]] += targets.on_target[start + r]
        used = a_row != 0
        dot[r] = np.dot(a_row[used], s_row[used])


def build_row_targets(
    target: np.ndarray,  # (M,) int64 class indices, range-checked; or (M, C) probabilities
    *,
    probability: bool,
    weight: np.ndarray | None,  # (C,) in compute_dtype
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    num_classes: int,
    compute_dtype: np.dtype,
) -> tuple[RowTargets, np.ndarray | None]:
    """The per-row coefficients of :func:`fused_softmax_cross_entropy`, from the semantics
    rules.  Returns ``(targets, w_y)``; ``w_y`` (index targets only) is each row's target
    weight, 0 for ignored rows, whose sum is the ``'mean'`` denominator."""
    cd = np.dtype(compute_dtype)
    if probability:
        return RowTargets(probability=target, prob_scale=weight,
                          label_smoothing=label_smoothing, z_weight=z_loss), None
    valid, w_y = sem.index_row_weights(target, ignore_index, weight)
    w_y = w_y.astype(cd)
    weight_sum = num_classes if weight is None else weight.sum()
    coef_sum = sem.index_coefficient_sum(w_y, valid, label_smoothing, num_classes, weight_sum)
    on_target, uniform = sem.smoothing_terms(label_smoothing, num_classes)
    all_valid = bool(valid.all())
    targets = RowTargets(
        index=target if all_valid else np.where(valid, target, 0),
        on_target=(w_y * on_target).astype(cd, copy=False),
        uniform=(weight * uniform).astype(cd) if weight is not None else uniform,
        valid=None if all_valid else valid,
        label_smoothing=label_smoothing,
        coef_sum=np.asarray(coef_sum, dtype=cd),
        z_weight=w_y * z_loss if z_loss else 0.0,
    )
    return targets, w_y

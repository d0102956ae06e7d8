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

The logits are ``(M, C)`` rows with classes last, or ``(N, C, S)`` with classes on axis 1
(a K-dimensional ``(N, C, d1, ..., dK)`` input, reshaped): the pass reads and writes them
where they lie, never making a class-last copy.  A block of ``(N, C, S)`` is computed on
its own layout when its runs along S are long, or copied to class-last rows in a
block-sized scratch buffer when they are short (see ``SLAB_MIN_RUN``).

Blocks are shared among threads (NumPy releases the GIL inside its loops), so the pass runs
at memory bandwidth on every core; ``CROSSENT_NUM_THREADS`` overrides the thread count.  The
thread pools are reset in a forked child (``os.register_at_fork``).

Inputs may be float16, float32, float64 or bfloat16 (given as its raw ``uint16`` bits, which
is how the torch executor hands a bfloat16 tensor over without a copy).  Half-precision blocks
are widened to float32 in a scratch buffer, computed, and narrowed back on the way out.

The steps of a block (blocking and scratch, widening, softcap, the target's dot product with
its ``0 log 0`` rule, the gradient's last steps) are shared with the shard pass of
:mod:`crossent._kernel_shard`, which runs them on a slice of the class axis.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

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
    """Per-row target data, prepared once by the caller from the semantics rules
    (:func:`build_row_targets`).

    Exactly one of ``index`` / ``probability`` is set.  A "row" is one softmax: one ``(n, s)``
    position of an ``(N, C, S)`` input, in C order (``M = N * S``), or one row of ``(M, C)``.
    The logits' columns may be a range of the C classes (a shard of the class axis, see
    :mod:`crossent._kernel_shard`): then the per-class vectors cover the range and the
    per-row coefficients are the range's share.

    index:        (M,) int64 column of the row's class; 0 on ignored rows and on rows whose
                  class lies outside the columns (their ``on_target`` is 0)
    on_target:    (M,) coefficient of the row's own class, ``(1 - eps) * w[y]`` (0 if ignored
                  or outside the columns)
    uniform:      (columns,) or scalar coefficient every class gets, ``(eps / C) * w``
                  (eps > 0 only)
    valid:        (M,) bool, False for ignored rows (None when no row is ignored)
    probability:  target probabilities in the logits' layout, ``(M, columns)`` or
                  ``(N, C, S)`` (any float dtype, any strides; widened per block)
    prob_scale:   (columns,) class weights applied to smoothed probabilities, or None
    coef_sum:     (M,) ``A = sum_c a_c`` over the columns, for index targets (computed per
                  block for probabilities)
    z_weight:     (M,) or scalar ``z_loss * w_n`` (0 when z-loss is off)
    num_classes:  C, every class (label smoothing's ``eps / C``); None: the logits' columns
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
    num_classes: int | None = None


# A block of an (N, C, S) input spans at least this many positions along S (when S has
# them): 16 float32 values fill a 64-byte cache line, so each class's run in the block
# reads whole lines even when C alone fills the block budget.
MIN_SPATIAL_BLOCK = 16
# How a block of an (N, C, S) input is computed.  NumPy's loops run along the last axis, so
# on the block (nb, C, sb) itself ("slab") every operation is an inner loop of sb positions:
# fast when those runs are long.  When a block's run along S is shorter than this (and than
# C), the block is copied to class-last rows (nb * sb, C) in a block-sized scratch buffer
# ("gather") and its gradient copied back: loops of C classes instead.  Measured on the
# 2-core EPYC, float32, one thread, ms for loss + gradient, slab / gather:
# (4, 32000, 64) 181 / 32; (1024, 200, 32) 28 / 16; (64, 1000, 128) 21 / 23;
# (64, 1000, 256) 39 / 63; (16, 1000, 512) 19 / 41; (8, 21, 65536) 25 / 24.
SLAB_MIN_RUN = 128


@dataclass(frozen=True)
class _Blocking:
    """How the pass cuts ``(M, C)`` or ``(N, C, S)`` logits into cache-sized blocks.

    Each block is a contiguous range ``[r0, r1)`` of rows in the flat order, so every
    per-row vector is sliced, never gathered:

    * ``(M, C)``: ``block`` consecutive rows; the work units shared among threads are rows.
    * ``(N, C, S)``: either ``nb`` whole ``(C, S)`` slabs (when one slab fits the budget) or
      ``sb`` positions of one slab; a block is ``x[n0:n1, :, s0:s1]``, its class axis is
      axis 1, its per-row vectors have shape ``(n1 - n0, s1 - s0)``.  The units are blocks.
      With ``gather`` (runs ``sb`` shorter than ``SLAB_MIN_RUN`` and than C) each block is
      computed as ``(nb * sb, C)`` class-last rows in scratch, its rows in the same order.
    """

    three_d: bool
    gather: bool  # 3-D blocks copied to class-last rows in scratch (short runs along S)
    batches: int
    classes: int
    spatial: int
    nb: int  # slabs per block (3-D)
    sb: int  # positions per block (3-D); rows per block (2-D)
    units: int
    unit_elements: int
    max_block_elements: int

    @classmethod
    def plan(cls, shape: tuple[int, ...]) -> _Blocking:
        if len(shape) == 2:
            rows, classes = shape
            block = max(1, min(rows, BLOCK_ELEMENTS // max(classes, 1)))
            return cls(False, False, rows, classes, 1, 1, block, rows, classes,
                       block * classes)
        batches, classes, spatial = shape
        slab = classes * spatial
        if slab <= BLOCK_ELEMENTS:
            nb, sb = max(1, min(batches, BLOCK_ELEMENTS // max(slab, 1))), spatial
            units = -(-batches // nb)
        else:
            nb = 1
            sb = min(spatial, max(MIN_SPATIAL_BLOCK, BLOCK_ELEMENTS // max(classes, 1)))
            units = batches * -(-spatial // sb)
        elements = nb * classes * sb
        gather = sb < min(classes, SLAB_MIN_RUN)
        return cls(True, gather, batches, classes, spatial, nb, sb, units, elements, elements)

    def blocks(self, start: int, stop: int):
        """``(slices into the logits, r0, r1, per-row shape)`` for units ``[start, stop)``."""
        if not self.three_d:
            for r0 in range(start, stop, self.sb):
                r1 = min(r0 + self.sb, stop)
                yield (slice(r0, r1),), r0, r1, (r1 - r0,)
            return
        every = slice(None)
        if self.sb == self.spatial:  # whole slabs
            for k in range(start, stop):
                n0 = k * self.nb
                n1 = min(n0 + self.nb, self.batches)
                yield ((slice(n0, n1), every, every), n0 * self.spatial, n1 * self.spatial,
                       (n1 - n0, self.spatial))
            return
        per_slab = -(-self.spatial // self.sb)
        for k in range(start, stop):
            n, j = divmod(k, per_slab)
            s0 = j * self.sb
            s1 = min(s0 + self.sb, self.spatial)
            r0 = n * self.spatial + s0
            yield (slice(n, n + 1), every, slice(s0, s1)), r0, r0 + s1 - s0, (1, s1 - s0)


class _Scratch:
    """One thread's block-sized buffers, by name: made on first use, reused for every block."""

    def __init__(self, elements: int, dtype: np.dtype) -> None:
        self._elements = elements
        self._dtype = dtype
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        flat = self._buffers.get(name)
        if flat is None:
            flat = self._buffers[name] = np.empty(self._elements, self._dtype)
        return flat[: math.prod(shape)].reshape(shape)


def _run_blocks(plan: _Blocking, dtype: np.dtype, block: Callable[..., None]) -> None:
    """Call ``block(where, r0, r1, rshape, scratch)`` for every block of ``plan``.

    Threads share the blocks (:func:`_run_row_ranges`), each with its own :class:`_Scratch`
    of ``dtype`` buffers.  Floating-point warnings are off: non-finite logits are data here,
    and each pass gives them their documented result.
    """

    def work(start: int, stop: int) -> None:
        scratch = _Scratch(plan.max_block_elements, dtype)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            for where, r0, r1, rshape in plan.blocks(start, stop):
                block(where, r0, r1, rshape, scratch)

    _run_row_ranges(plan.units, plan.unit_elements, work)


# The steps of a block, shared by the fused pass and the shard pass (crossent._kernel_shard).
# ``slab``: the block is (nb, C, sb) with classes on axis 1; otherwise rows (b, C).


def _across(v: np.ndarray, slab: bool) -> np.ndarray:
    """A per-row vector broadcast along the class axis."""
    return v[:, None, :] if slab else v[:, None]


def _per_class(w, slab: bool):
    """A per-class vector (or scalar) broadcast along the rows."""
    return w[:, None] if slab and np.ndim(w) else w


def _load(src: np.ndarray, dst: np.ndarray, bfloat16: bool) -> np.ndarray:
    """``src`` widened into ``dst`` (compute precision): bfloat16 bits, or any float."""
    if bfloat16:
        return bf16_bits_to_float32(src, dst)
    np.copyto(dst, src, casting="unsafe")
    return dst


def _store(g: np.ndarray, out: np.ndarray, bfloat16: bool) -> None:
    """A block computed in scratch written to its place, narrowed to the output's dtype."""
    if bfloat16:
        float32_to_bf16_bits(g, out)
    else:
        np.copyto(out, g, casting="unsafe")


def _softcap(x: np.ndarray, softcap: float, th: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``z = cap * tanh(x / cap)`` into ``out``; ``th`` keeps ``tanh(x / cap)`` for the chain
    rule (:meth:`_BlockTargets.finish_gradient`) and may be ``x``'s own buffer."""
    np.divide(x, softcap, out=th)
    np.tanh(th, out=th)
    return np.multiply(th, softcap, out=out)


class _BlockTargets:
    """The target coefficients ``a`` of one block (rows ``r0:r1`` of the :class:`RowTargets`),
    kept in the form the target has.

    Class indices: ``at``, where each row's class is in the block, and its coefficient
    ``on_t``, plus ``targets.uniform`` on every class under label smoothing.  Probabilities:
    the block's ``a = w ((1 - eps) t + eps / C)`` itself, made in place in ``coef`` (a
    scratch buffer the caller filled with the block's probabilities, in the block's layout).
    ``valid`` marks the rows not ignored (None: every row).
    """

    def __init__(self, targets: RowTargets, r0: int, r1: int, rshape: tuple[int, ...],
                 shape: tuple[int, ...], slab: bool, coef: np.ndarray | None) -> None:
        self.targets = targets
        self.slab = slab
        self.coef = coef
        self.rows = (r0, r1, rshape)
        self.valid = self.row(targets.valid) if targets.valid is not None else None
        if coef is None:
            y = self.row(targets.index)
            self.at = ((np.arange(shape[0])[:, None], y, np.arange(shape[2])[None, :])
                       if slab else (np.arange(shape[0]), y))
            self.on_t = self.row(targets.on_target)
            return
        if targets.label_smoothing:  # sem.smoothed_probabilities, in place
            on_target, uniform = sem.smoothing_terms(targets.label_smoothing,
                                                     targets.num_classes)
            coef *= on_target
            coef += uniform
        if targets.prob_scale is not None:
            coef *= _per_class(targets.prob_scale, slab)

    def row(self, v: np.ndarray) -> np.ndarray:
        """The block's rows of a per-row vector, in the block's per-row shape."""
        r0, r1, rshape = self.rows
        return v[r0:r1].reshape(rshape)

    def target_term(self, shifted: np.ndarray) -> np.ndarray:
        """Each row's ``a_y s_y`` (class indices): 0 where ``a_y = 0``, even at ``s_y = -inf``
        (an ignored row, a class of weight 0, or a class outside a shard's columns)."""
        return np.where(self.on_t != 0, self.on_t * shifted[self.at], 0.0)

    def dot(self, shifted: np.ndarray, scratch: Callable[[], np.ndarray]
            ) -> tuple[np.ndarray, np.ndarray]:
        """``(a . s, A)`` per row, on the shifted logits ``s`` (``0 log 0 = 0``, see
        :func:`_dot_without_zero_terms`, which gets ``scratch``); exactly 0 on ignored rows."""
        targets = self.targets
        if self.coef is None:
            dot = self.target_term(shifted)
            coef_sum = self.row(targets.coef_sum)
            if targets.label_smoothing:
                u = targets.uniform
                if np.ndim(u):
                    dot += u @ shifted if self.slab else shifted @ u
                else:
                    dot += shifted.sum(axis=1) * u
        else:
            dot = np.einsum("ncs,ncs->ns" if self.slab else "nc,nc->n", self.coef, shifted)
            coef_sum = self.coef.sum(axis=1)
        if self.valid is not None:
            dot[~self.valid] = 0.0  # an ignored row's logits may be anything, NaN included
        bad = ~np.isfinite(dot)
        if bad.any():
            np.copyto(dot, _dot_without_zero_terms(shifted, self, scratch), where=bad)
        return dot, coef_sum

    def finish_gradient(self, g: np.ndarray, row_factor: np.ndarray, scale,
                        th: np.ndarray | None) -> None:
        """Turn ``g = exp(z - shift)`` into the gradient ``row_factor * g - scale * a``, times
        the softcap slope ``1 - tanh^2`` (``th``, overwritten), exactly 0 on ignored rows."""
        slab = self.slab
        g *= _across(row_factor, slab)
        if self.coef is None:
            g[self.at] -= self.on_t * scale
            if self.targets.label_smoothing:
                u = _per_class(self.targets.uniform, slab)
                g -= _across(scale, slab) * u if np.ndim(scale) else scale * u
        else:
            self.coef *= _across(scale, slab) if np.ndim(scale) else scale
            g -= self.coef
        if th is not None:
            np.square(th, out=th)
            np.subtract(1.0, th, out=th)
            g *= th
        if self.valid is not None:
            # Ignored rows get exactly zero gradient, even when their logits are not finite
            # (PyTorch gives NaN there through 0 * nan, pytorch#11551).  Their terms above
            # are not masked: this overwrites them.  Indexing the rows touches only them (a
            # copyto with a broadcast mask takes ~10 passes' time over the whole block).
            (np.moveaxis(g, 1, -1) if slab else g)[~self.valid] = 0.0


def fused_softmax_cross_entropy(
    logits: np.ndarray,  # (M, C) or (N, C, S); float16/32/64, or uint16 bfloat16 bits
    targets: RowTargets,
    grad_scale: np.ndarray | float,  # (M,) or scalar: d(reduced loss) / d(loss_n)
    compute_dtype: np.dtype,
    *,
    softcap: float | None = None,
    grad_out: np.ndarray | None = None,  # the logits' shape: where the gradient goes
    bfloat16: bool = False,
) -> np.ndarray:
    """Per-row losses ``(M,)`` in ``compute_dtype``; the gradient is written to ``grad_out``.

    ``logits`` is ``(M, C)`` with classes last, or ``(N, C, S)`` with classes on axis 1 (an
    ``(N, C, d1, ..., dK)`` input reshaped, a view when its memory allows), any strides.
    Rows are ``(n, s)`` positions in C order (``M = N * S``): the order of the index target
    reshaped to ``(-1,)``.  ``grad_out`` and ``targets.probability`` have the logits' shape.
    No copy of the logits or of the gradient is made: each block is read from and written
    to its place, through per-thread scratch buffers of one block.

    ``grad_out`` may be ``logits`` itself (in-place backward): each block is read completely
    before its gradient is written.  With ``grad_out=None`` only the loss is computed.
    """
    if logits.ndim not in (2, 3):
        raise ValueError(f"logits must be (M, C) or (N, C, S), got shape {logits.shape}")
    for name, arr in (("grad_out", grad_out), ("targets.probability", targets.probability)):
        if arr is not None and arr.shape != logits.shape:
            raise ValueError(f"{name} must have the logits' shape {logits.shape}, "
                             f"got {arr.shape}")
    plan = _Blocking.plan(logits.shape)
    classes = plan.classes
    slab = plan.three_d and not plan.gather  # the maths on (nb, C, sb) blocks in place
    cd = np.dtype(compute_dtype)
    losses = np.empty(plan.batches * plan.spatial, dtype=cd)
    if losses.size == 0:
        return losses
    if targets.num_classes is None:
        targets = replace(targets, num_classes=classes)
    widen = bfloat16 or logits.dtype != cd
    narrow = grad_out is not None and (bfloat16 or grad_out.dtype != cd)
    scale_is_vector = np.ndim(grad_scale) == 1
    z_is_vector = np.ndim(targets.z_weight) == 1
    has_z = z_is_vector or targets.z_weight != 0.0

    def block(where, r0, r1, rshape, scratch: _Scratch) -> None:
        raw = logits[where]
        if plan.gather:  # the block as class-last rows (nb * sb, C), in (n, s) order
            nb, _, sb = raw.shape
            shape, rshape = (nb * sb, classes), (nb * sb,)

            def block_of(a):  # the block of a logits-shaped array, in the rows' order
                return a[where].transpose(0, 2, 1)

            def placed(rows):  # scratch rows seen as that block
                return rows.reshape(nb, sb, classes)
        else:
            shape = raw.shape

            def block_of(a):
                return a[where]

            def placed(rows):
                return rows

        def buf(name: str) -> np.ndarray:
            return scratch.get(name, shape)

        # -- load: x in compute precision --------------------------------------------------
        if widen or plan.gather:
            x = buf("x")
            _load(block_of(logits), placed(x), bfloat16)
        else:
            x = raw
        in_place = grad_out is not None and not (narrow or plan.gather)
        g = grad_out[where] if in_place else buf("g")
        # -- softcap: z = cap * tanh(x / cap); keep tanh for the chain rule ------------------
        th = buf("x") if softcap is not None else None
        z = _softcap(x, softcap, th, out=g) if th is not None else x
        # -- shift by the row max; the target term is taken on shifted logits (exact) -------
        m = z.max(axis=1)
        np.subtract(z, _across(m, slab), out=g)
        coef = None
        if targets.probability is not None:
            coef = buf("c")
            _load(block_of(targets.probability), placed(coef), False)
        a = _BlockTargets(targets, r0, r1, rshape, shape, slab, coef)
        dot, coef_sum = a.dot(g, lambda: buf("t"))
        # -- exponentiate in place: the gradient buffer now holds exp(z - m) ----------------
        np.exp(g, out=g)
        sum_exp = g.sum(axis=1)
        log_sum = np.log(sum_exp)
        loss = coef_sum * log_sum - dot
        if has_z:
            zw = a.row(targets.z_weight) if z_is_vector else targets.z_weight
            lse = m + log_sum
            loss += zw * lse * lse
            p_factor = coef_sum + 2.0 * zw * lse
        else:
            p_factor = coef_sum
        if a.valid is not None:
            loss[~a.valid] = 0.0  # ignored rows cost 0 even with non-finite logits
        losses[r0:r1] = loss.reshape(-1)
        if grad_out is None:
            return
        # -- gradient: scale * ((A + 2 z w lse) softmax - a) ----------------------------------
        scale = a.row(grad_scale) if scale_is_vector else grad_scale
        row_factor = p_factor / sum_exp
        row_factor *= scale
        a.finish_gradient(g, row_factor, scale, th)
        if not in_place:
            _store(placed(g), block_of(grad_out), bfloat16)

    _run_blocks(plan, cd, block)
    return losses


def _dot_without_zero_terms(shifted: np.ndarray, a: _BlockTargets,
                            scratch: Callable[[], np.ndarray]) -> np.ndarray:
    """``a . s`` for every row of a block, leaving out the classes with ``a_c = 0``.

    Called only for a block where some row's plain dot product is not finite; the caller
    takes the rows that were not finite (never an ignored row: those are already 0).  This
    is where ``0 * log 0`` lives: a class the target gives no weight (probability 0, or
    class weight 0 under smoothing) whose logit is ``-inf`` adds 0, not NaN.  A genuine NaN
    or an infinite weighted term stays NaN / inf.

    Whole-block array operations without data-dependent branches, so a masked vocabulary
    (every row with ``-inf`` logits) costs a few passes more than an unmasked one: ``-inf``
    is raised to the lowest finite number, where ``0 * it`` is exactly 0 and every finite
    term is unchanged.  The only terms that come out wrong then are weighted ``-inf`` ones
    (finite instead of infinite); their rows, rare since their loss is infinite, are summed
    again with the zero terms masked out.  ``scratch()`` gives a block-sized buffer.
    """
    tmp = scratch()
    np.maximum(shifted, np.finfo(shifted.dtype).min, out=tmp)
    if a.coef is not None:  # probability targets: the block's coefficients are at hand
        dot = np.einsum("ncs,ncs->ns" if a.slab else "nc,nc->n", a.coef, tmp)
        weights = a.coef
    else:
        dot = a.target_term(shifted)  # exact as it stands
        weights = None
        if a.targets.label_smoothing:
            u = a.targets.uniform
            if np.ndim(u):
                dot += u @ tmp if a.slab else tmp @ u
                weights = _per_class(u, a.slab)
            else:  # every class weighs eps / C > 0: no zero term to leave out
                dot += shifted.sum(axis=1) * u
    if weights is not None:
        weighted_minus_inf = ((shifted == -np.inf) & (weights != 0)).any(axis=1)
        if weighted_minus_inf.any():
            exact = _masked_dot(shifted, weights, tmp)
            if a.coef is None:
                exact += a.target_term(shifted)
            np.copyto(dot, exact, where=weighted_minus_inf)
    return dot


def _masked_dot(shifted, weights, tmp) -> np.ndarray:
    """``sum_c a_c s_c`` over the classes with ``a_c != 0`` (``weights``: the block's
    coefficients, or the per-class ones), with a masked copy: exact, branchy, for few rows."""
    np.multiply(shifted, weights, out=tmp)
    np.copyto(tmp, 0.0, where=weights == 0)
    return tmp.sum(axis=1)


def build_row_targets(
    target: np.ndarray,  # (M,) int64 class indices, range-checked; or probabilities
    *,
    probability: bool,
    weight: np.ndarray | None,  # (C,) in compute_dtype, every class
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    num_classes: int,
    compute_dtype: np.dtype,
    col_start: int = 0,
    real_columns: int | None = None,
) -> tuple[RowTargets, np.ndarray | None]:
    """The per-row coefficients of :func:`fused_softmax_cross_entropy`, from the semantics
    rules.  Returns ``(targets, w_y)``; ``w_y`` (index targets only) is each row's target
    weight, 0 for ignored rows, whose sum is the ``'mean'`` denominator.

    Class indices must already be int64 and range-checked (by
    :func:`crossent._arrays.as_class_indices` for NumPy arrays): a cast here could wrap a
    ``uint64`` index of ``2**63`` or more onto a negative one.  Probabilities come in the
    logits' layout, ``(M, C)`` or ``(N, C, S)``.

    With ``col_start`` and ``real_columns`` the targets are those of the classes
    ``col_start .. col_start + real_columns - 1`` only (a shard of the class axis, whose
    probabilities arrive as ``(M, real_columns)``): class indices stay global, each row's
    ``index`` is its class's column in the range, and the coefficients are the range's
    share (their sums over every range are the whole row's).  The default is every class.
    """
    cd = np.dtype(compute_dtype)
    columns = num_classes - col_start if real_columns is None else real_columns
    whole = col_start == 0 and columns == num_classes
    w_here = weight if weight is None or whole else weight[col_start:col_start + columns]
    if probability:
        return RowTargets(probability=target, prob_scale=w_here,
                          label_smoothing=label_smoothing, z_weight=z_loss,
                          num_classes=num_classes), None
    if target.dtype != np.int64 or target.ndim != 1:
        raise TypeError(f"class indices must be a range-checked (M,) int64 array, got "
                        f"{target.dtype} of shape {target.shape}")
    valid, w_y = sem.index_row_weights(target, ignore_index, weight)
    w_y = w_y.astype(cd)
    all_valid = bool(valid.all())
    if whole:  # every row's class is here
        column, here, w_y_here = target, valid, w_y
    else:
        column = target - col_start
        here = valid & (column >= 0) & (column < columns)
        w_y_here = np.where(here, w_y, 0.0).astype(cd, copy=False)
    weight_sum = columns if w_here is None else w_here.sum()
    # zero classes come only with zero rows (an empty batch): any count gives the same nothing
    terms_classes = max(num_classes, 1)
    coef_sum = sem.index_coefficient_sum(w_y_here, valid, label_smoothing, terms_classes,
                                         weight_sum)
    on_target, uniform = sem.smoothing_terms(label_smoothing, terms_classes)
    targets = RowTargets(
        index=column if whole and all_valid else np.where(here, column, 0),
        on_target=(w_y_here * on_target).astype(cd, copy=False),
        uniform=(w_here * uniform).astype(cd) if w_here is not None else uniform,
        valid=None if all_valid else valid,
        label_smoothing=label_smoothing,
        coef_sum=np.asarray(coef_sum, dtype=cd),
        z_weight=w_y * z_loss if z_loss else 0.0,
        num_classes=num_classes,
    )
    return targets, w_y

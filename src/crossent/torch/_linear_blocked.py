r"""The vocabulary-blocked schedule of ``linear_cross_entropy``, its memory model, and the
rule that chooses between it and the row-chunked schedule.

Two schedules compute the same loss and gradients of ``CE(h W^T + b, y)`` without the
``N x V`` logits (``h: (N, D)``, ``W: (V, D)``):

``schedule="rows"`` (:func:`crossent.torch.linear._chunked`)
    walks the rows in chunks; each chunk's logits span the whole vocabulary, so ``dW``
    collects a contribution from every chunk and must be accumulated over all of them: for a
    half-precision head, a float32 ``V x D`` buffer (2.1 GB at ``V = 128256, D = 4096``).
    Three matrix products per logit.
``schedule="vocab"`` (:func:`_blocked`, here)
    walks the vocabulary in blocks of columns, which are exactly the shards of
    :mod:`crossent.torch._shard` (one process, the combine done locally):

    1. for every block ``W_k`` (and tiles of rows): ``z = h W_k^T + b_k``,
       :func:`~crossent.torch._shard.shard_statistics`, merged into each row's running
       statistics by the online-softmax rule (:func:`~crossent.torch._shard.merge`); the loss
       is :func:`~crossent.torch._shard.finish_loss` of the merged statistics;
    2. for every block again: recompute ``z``, write its gradient over it with the global
       statistics (:func:`~crossent.torch._shard.shard_gradient`), ``dh += g W_k``,
       ``dW_k += g^T h`` over the row tiles, ``db_k += sum g``; then ``dW_k`` (float32 for
       half precision) is finished and cast to the weight's dtype.

    The float32 accumulator of ``dW`` is one block (``block x D``), not ``V x D``, and none
    when one tile holds every row (the default block is narrowed to make it so while the
    tile stays within :data:`BLOCK_BUDGET_BYTES`): each block's ``dW_k`` is then a single
    product, summed in float32 inside it and rounded once.  The accumulator over every
    block is ``dh``'s, ``N x D`` (float32 for half precision).  Four matrix products per
    logit (the logits are computed twice).

A K-dimensional head (``linear_weight`` ``(C, d1..dK, D)``, reordered by the caller to rows
``(d1..dK, C)``) is a longer vocabulary of ``S = d1*...*dK`` softmaxes side by side: a block
is either a range of one position's classes (``C >= block``) or several whole positions
(``C < block``, so that small ``C`` still makes wide matrix products).

Memory (:func:`schedule_memory`) counts the bytes each schedule allocates beyond its inputs
and the gradients it returns; ``schedule="auto"`` (:func:`choose_schedule`) takes the rows
schedule, which has one matrix product fewer, while it needs at most
:data:`SCHEDULE_BUDGET_BYTES` or no more than the vocabulary schedule, and the vocabulary
schedule otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple

import torch

from . import _shard as shard
from ._ops import register_looping_vmap
from ._params import CrossEntropyParams
from ._rows import TORCH_BLOCK_ELEMENTS, check_targets_and_scale, compute_dtype

SCHEDULES = ("auto", "rows", "vocab")

#: ``schedule="auto"`` keeps the (faster) rows schedule while it needs at most this much
#: beyond its inputs and returned gradients: 1 GiB.
SCHEDULE_BUDGET_BYTES = 1 << 30
#: Columns per vocabulary block: 8192 ...
VOCAB_BLOCK = 8192
#: ... fewer if a float32 ``(block, D)`` block or ``(N, block)`` tile exceeds 128 MiB ...
BLOCK_BUDGET_BYTES = 128 << 20
#: ... and never fewer columns than this (thin matrix products are slow).
MIN_VOCAB_BLOCK = 512


def check_schedule(schedule: object) -> str:
    """``schedule`` validated: one of :data:`SCHEDULES`."""
    if not isinstance(schedule, str) or schedule not in SCHEDULES:
        raise ValueError(
            f"schedule must be one of {', '.join(map(repr, SCHEDULES))}, got {schedule!r}")
    return schedule


def check_block_size(block: object) -> int | None:
    """``vocab_block_size`` validated: a positive int or None."""
    if block is not None and (isinstance(block, bool) or not isinstance(block, int)
                              or block < 1):
        raise ValueError(f"vocab_block_size must be a positive int or None, got {block!r}")
    return block


def choose_vocab_block(vocab: int, features: int, rows: int,
                       budget_bytes: int = BLOCK_BUDGET_BYTES) -> int:
    """Columns per block: :data:`VOCAB_BLOCK`, fewer if a float32 ``(block, features)``
    block or a float32 ``(rows, block)`` tile of every row would exceed ``budget_bytes``
    (a tile of every row makes each block's ``dW`` one product, with no float32 sum), but
    at least :data:`MIN_VOCAB_BLOCK`, never more than ``vocab``."""
    fit = budget_bytes // (4 * max(features, rows, 1))
    return int(max(1, min(vocab, max(MIN_VOCAB_BLOCK, min(VOCAB_BLOCK, fit)))))


class _Block(NamedTuple):
    """Columns ``first .. first + width - 1`` of the reordered head: ``positions`` whole
    spatial positions from ``position`` (``col_start = 0``, ``columns = C``), or the classes
    ``col_start .. col_start + columns - 1`` of one position."""

    first: int
    width: int
    position: int
    positions: int
    col_start: int
    columns: int


def _split(classes: int, spatial: int, block: int) -> tuple[int, int]:
    """``(columns, positions)`` of a full block: ranges of ``columns`` classes of one
    position (``positions = 1``), or ``positions`` whole positions (``columns = classes``)."""
    if classes >= block or spatial == 1:
        count = -(-classes // block)
        return -(-classes // count), 1  # equal blocks: the last one is not a sliver
    return classes, min(spatial, max(1, block // classes))


def block_width(classes: int, spatial: int, block: int) -> int:
    """Columns of the widest block of :func:`plan_blocks` (plain arithmetic: traceable)."""
    columns, positions = _split(classes, spatial, block)
    return columns * positions


def plan_blocks(classes: int, spatial: int, block: int) -> list[_Block]:
    """The blocks covering a head of ``spatial`` positions of ``classes`` classes each."""
    columns, per = _split(classes, spatial, block)
    if per == 1:
        return [_Block(s * classes + c0, min(columns, classes - c0), s, 1, c0,
                       min(columns, classes - c0))
                for s in range(spatial) for c0 in range(0, classes, columns)]
    return [_Block(s0 * classes, min(per, spatial - s0) * classes, s0, min(per, spatial - s0),
                   0, classes)
            for s0 in range(0, spatial, per)]


# --------------------------------------------------------------------------------------------
# The memory model
# --------------------------------------------------------------------------------------------


class ScheduleMemory(NamedTuple):
    """Bytes each schedule allocates beyond its inputs and the gradients it returns, the plan
    they were counted for, and the schedule ``"auto"`` takes (:func:`choose_schedule`)."""

    rows: int
    vocab: int
    chosen: str
    chunk: int
    block: int
    block_rows: int


def schedule_memory(
    rows: int, features: int, vocab: int, *, dtype: torch.dtype, device_type: str,
    need: tuple[bool, bool, bool], chunk: int, block: int, block_rows: int,
    classes: int | None = None, probability_dtype: torch.dtype | None = None,
    impl: str = "torch",
) -> tuple[int, int]:
    """``(rows schedule bytes, vocab schedule bytes)`` beyond the inputs and the returned
    gradients, for ``rows`` input rows, ``vocab = S * classes`` head rows, inputs of
    ``dtype``, gradients ``need = (input, weight, bias)``, the rows schedule's ``chunk`` rows
    and the vocab schedule's ``block`` columns by ``block_rows`` rows.

    Counted (``n`` rows per chunk or tile, ``isz`` the input's bytes per element; "half" when
    ``dtype`` is float16/bfloat16, whose gradients accumulate in float32):

    * both: per-row losses and the 'mean' weights, ``N S`` in the compute dtype; the
      executor's scratch on the chunk or tile (:func:`_executor_scratch`);
    * rows: the logits chunk ``n V isz``; half with ``dW``: the float32 ``V D`` accumulator,
      float32 copies of the chunk ``n V`` and of its rows ``n D``; half with ``db``: ``V``;
    * vocab: the statistics ``4 N S``; the tile ``n B isz`` (``B`` columns); half: the
      float32 ``dh`` accumulator ``N D`` and ``db`` block ``B``, the products' float32
      results on CUDA ``n D`` (elsewhere float32 copies of the tile ``n B`` and of the
      block ``B D``); and when the rows take more than one tile, the float32 ``dW`` block
      ``B D`` with, on CUDA, its products' results ``B D`` (elsewhere a float32 copy of the
      tile's rows ``n D``).
    """
    classes = vocab if classes is None else classes
    spatial = max(1, vocab // max(classes, 1))
    need_dh, need_dw, need_db = need
    isz = dtype.itemsize
    half = dtype in (torch.float16, torch.bfloat16)
    cd = compute_dtype(dtype, probability_dtype or dtype)
    csz = cd.itemsize
    loss_rows = rows * spatial
    common = loss_rows * csz * 2  # per-row losses; 'mean' weights / index targets' checks
    n = max(1, min(chunk, rows))
    by_rows = common + n * vocab * isz + _executor_scratch(impl, n * spatial, classes, csz)
    if half and need_dw:
        by_rows += vocab * features * 4 + n * vocab * 4 + n * features * 4
    if half and need_db:
        by_rows += vocab * 4 * 2  # the accumulator and each chunk's column sums
    width = block_width(classes, spatial, block)
    m = max(1, min(block_rows, rows))
    tile_rows = m * (width // classes if width > classes else 1)
    ssz = 4 if impl == "triton" else csz
    columns = width if width <= classes else classes
    by_vocab = common + 4 * loss_rows * ssz + m * width * isz + \
        _executor_scratch(impl, tile_rows, columns, csz)
    by_vocab += 6 * 4 * tile_rows * ssz  # the merge's temporaries, per tile
    if half:
        summed_dw = need_dw and m < rows  # one tile: dW_k is one product, no float32 sum
        if need_dh:
            by_vocab += rows * features * 4
        if summed_dw:
            by_vocab += width * features * 4
        if need_db:
            by_vocab += width * 4 * 2
        if device_type == "cuda":
            by_vocab += (m * features * 4 if need_dh else 0) + \
                (width * features * 4 if summed_dw else 0)
        elif need_dh or summed_dw:
            by_vocab += m * width * 4 + (m * features * 4 if summed_dw else 0) + \
                (width * features * 4 if need_dh else 0)
    return by_rows, by_vocab


def _cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


#: The NumPy executor's threads at most (``CROSSENT_NUM_THREADS`` may only lower them in
#: practice), read once: the memory model runs inside ``torch.compile``'s traced code, which
#: cannot ask the operating system.
_CPUS = _cpus()


def _executor_scratch(impl: str, rows: int, columns: int, itemsize: int) -> int:
    """Bytes an executor's temporaries take on ``(rows, columns)`` logits: the torch executor
    holds up to eight block-sized temporaries (blocks of ``TORCH_BLOCK_ELEMENTS`` logits, at
    least one row), the NumPy one three per thread, the Triton kernels none."""
    if impl == "triton" or rows == 0:
        return 0
    block = min(rows, max(1, TORCH_BLOCK_ELEMENTS // max(columns, 1))) * columns
    if impl == "torch":
        return 8 * block * itemsize
    return 3 * block * itemsize * _CPUS


def choose_schedule(rows_bytes: int, vocab_bytes: int, budget_bytes: int | None = None
                    ) -> str:
    """``"rows"`` while it needs at most ``budget_bytes`` (:data:`SCHEDULE_BUDGET_BYTES`) or
    no more than ``"vocab"`` (it has one matrix product fewer), else ``"vocab"``."""
    budget = SCHEDULE_BUDGET_BYTES if budget_bytes is None else budget_bytes
    return "rows" if rows_bytes <= max(budget, vocab_bytes) else "vocab"


# --------------------------------------------------------------------------------------------
# The schedule
# --------------------------------------------------------------------------------------------


@dataclass
class _Layout:
    """Where one block's tile of rows ``r0:r1`` lives among the loss rows ``(N, S)``."""

    rows: int
    spatial: int

    def select(self, t: torch.Tensor, r0: int, r1: int, blk: _Block) -> torch.Tensor:
        """The tile's loss rows of ``t`` (``(N S, ...)``), in the tile's row order."""
        if self.spatial == 1:
            return t[r0:r1]
        v = t.view(self.rows, self.spatial, *t.shape[1:])[r0:r1, blk.position:
                                                          blk.position + blk.positions]
        return v.reshape(-1, *t.shape[1:])

    def stats(self, stats: torch.Tensor, r0: int, r1: int, blk: _Block) -> torch.Tensor:
        if self.spatial == 1:
            return stats[:, r0:r1]
        v = stats.view(stats.shape[0], self.rows, self.spatial)
        return v[:, r0:r1, blk.position:blk.position + blk.positions].reshape(stats.shape[0], -1)

    def store_stats(self, stats: torch.Tensor, r0: int, r1: int, blk: _Block,
                    value: torch.Tensor) -> None:
        if self.spatial == 1:
            stats[:, r0:r1] = value
            return
        v = stats.view(stats.shape[0], self.rows, self.spatial)
        v[:, r0:r1, blk.position:blk.position + blk.positions] = value.view(
            stats.shape[0], r1 - r0, blk.positions)


def _product_mode(device: torch.device, dtype: torch.dtype, acc: torch.dtype) -> str:
    """How pass 2 takes its products (:class:`_Products`): ``"same"``, ``"cuda"``, ``"widen"``."""
    if acc == dtype:
        return "same"
    return "cuda" if device.type == "cuda" else "widen"


def _mm_float32(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
    """``out = a @ b`` in float32 from half-precision ``a, b`` (CUDA's mixed-dtype ``mm``)."""
    torch.mm(a, b, out_dtype=torch.float32, out=out)


class _Products:
    """The products of pass 2, ``dh[rows] (+)= g W_k`` and ``dW_k (+)= g^T h[rows]``, into
    accumulators of ``compute_dtype(input)``: float32 for half-precision inputs.

    Same dtype: ``mm``/``addmm_`` straight into the accumulator.  Half precision on CUDA: the
    product on tensor cores with a float32 result (``torch.mm(..., out_dtype=float32)``),
    added from a scratch buffer after the first.  Elsewhere (a CPU has no mixed-dtype
    product): float32 copies of the operands, then a float32 product.  The first product
    into an accumulator overwrites it (no zero-filling).  When one tile holds every row
    (``single_tile``), a block's ``dW_k`` is one product, accumulated in float32 inside the
    matrix product and rounded once: it is written straight into the gradient.
    """

    def __init__(self, h, w, width, tile_rows, need_dh, need_dw, single_tile):
        self.acc = compute_dtype(w.dtype)
        self.mode = _product_mode(h.device, h.dtype, self.acc)
        self.dw_direct = single_tile
        summed_dw = need_dw and not single_tile
        features = h.shape[1]

        def buffer(*shape, wanted=True):
            return torch.empty(shape, dtype=self.acc, device=h.device) if wanted else None

        if self.mode == "cuda":
            self.dh_part = buffer(tile_rows, features, wanted=need_dh)
            self.dw_part = buffer(width, features, wanted=summed_dw)
        elif self.mode == "widen":
            self.g32 = buffer(tile_rows * width, wanted=need_dh or summed_dw)
            self.h32 = buffer(tile_rows, features, wanted=summed_dw)
            self.w32 = buffer(width, features, wanted=need_dh)

    def start_block(self, w_k):
        if self.mode == "widen" and self.w32 is not None:
            self.w32[:w_k.shape[0]].copy_(w_k)

    def start_tile(self, g, h_t):
        """``g``: the tile's gradient ``(n, width)``, written in place over its logits."""
        if self.mode == "widen" and self.g32 is not None:
            self.g = self.g32[:g.numel()].view(g.shape).copy_(g)
            if self.h32 is not None:
                self.h_t = self.h32[:h_t.shape[0]].copy_(h_t)

    def input_grad(self, out, g, w_k, first):
        if self.mode == "widen":
            g, w_k = self.g, self.w32[:w_k.shape[0]]
        self._into(out, g, w_k, first, "dh_part")

    def weight_grad(self, out, g, h_t, first):
        """``out``: the block's rows of the returned ``dW`` when :attr:`dw_direct`, else its
        float32 accumulator."""
        if self.dw_direct:
            torch.mm(g.t(), h_t, out=out)
            return
        if self.mode == "widen":
            g, h_t = self.g, self.h_t
        self._into(out, g.t(), h_t, first, "dw_part")

    def _into(self, out, a, b, first, part):
        if self.mode == "cuda":
            if first:
                _mm_float32(a, b, out)
            else:
                scratch = getattr(self, part)[:out.shape[0]]
                _mm_float32(a, b, scratch)
                out += scratch
        elif first:
            torch.mm(a, b, out=out)
        else:
            out.addmm_(a, b)


def _blocked(h, w, b, target, weight, grad_output, reduction, params, block, block_rows, impl,
             need_dh, need_dw, need_db, target_shape, classes):
    """The vocabulary-blocked pass over ``h (N, D)`` and ``w (S*C, D)``: the same contract
    as :func:`crossent.torch.linear._chunked`, returning ``(per_row, denominator, dh, dw,
    db)`` (gradients in the dtypes of ``h``, ``w`` and ``b``)."""
    rows, features = h.shape
    vocab = w.shape[0]
    spatial = vocab // classes
    want_grad = need_dh or need_dw or need_db
    cd = compute_dtype(h.dtype, target.dtype if params.probability else h.dtype)
    sd = torch.float32 if impl == "triton" else cd  # the statistics' dtype
    w_cls = weight.to(torch.float32 if impl == "triton" else cd) if weight is not None else None
    denominator, scale = check_targets_and_scale(
        target, params, w_cls, classes, reduction, cd, tuple(target_shape))
    if grad_output is not None:
        scale = grad_output.to(cd)
    if impl == "triton":
        scale = scale.float()
    plan = plan_blocks(classes, spatial, block)
    layout = _Layout(rows, spatial)
    tile_rows = max(1, min(block_rows, rows))
    width = max(blk.width for blk in plan)
    buffer = torch.empty((tile_rows * width,), dtype=h.dtype, device=h.device)

    def tiles():
        """``(block, r0, r1, h rows, logits tile (n, width), loss-row view (n k, columns))``,
        the logits computed afresh for each."""
        for blk in plan:
            w_k = w[blk.first:blk.first + blk.width]
            b_k = b[blk.first:blk.first + blk.width] if b is not None else None
            for r0 in range(0, rows, tile_rows):
                r1 = min(r0 + tile_rows, rows)
                h_t = h[r0:r1]
                z = buffer[:(r1 - r0) * blk.width].view(r1 - r0, blk.width)
                torch.mm(h_t, w_k.t(), out=z)
                if b_k is not None:
                    z += b_k
                yield blk, w_k, r0, r1, h_t, z, z.view(-1, blk.columns)

    def tile_target(blk, r0, r1):
        t = layout.select(target, r0, r1, blk)
        return t[:, blk.col_start:blk.col_start + blk.columns] if params.probability else t

    # pass 1: every row's statistics, merged over the blocks by the online-softmax rule
    stats = torch.empty((shard.NUM_STATS, rows * spatial), dtype=sd, device=h.device)
    stats[shard.MAX] = float("-inf")  # the statistics of no classes at all
    stats[shard.SUM_EXP:] = 0
    for blk, _, r0, r1, _, _, z_rows in tiles():
        part = shard.shard_statistics(z_rows, tile_target(blk, r0, r1), params, w_cls,
                                      blk.col_start, classes, impl=impl)
        running = layout.stats(stats, r0, r1, blk)
        layout.store_stats(stats, r0, r1, blk, shard.merge(running, part.to(sd)))
    per_row = shard.finish_loss(stats, target, params, w_cls).to(cd)
    if not want_grad:
        return (per_row, denominator, h.new_empty((0,)), w.new_empty((0,)),
                w.new_empty((0,)))

    # pass 2: block by block, the gradient with the global statistics
    single_tile = tile_rows >= rows
    products = _Products(h, w, width, tile_rows, need_dh, need_dw, single_tile)
    acc, half = products.acc, products.acc != w.dtype
    dh = torch.empty(h.shape, dtype=acc, device=h.device) if need_dh else h.new_empty((0,))
    dw = torch.empty_like(w) if need_dw else w.new_empty((0,))
    db = torch.empty((vocab,), dtype=b.dtype, device=w.device) if need_db else w.new_empty((0,))
    # half precision: float32 sums of one block over its tiles, cast into dW and db when the
    # block is finished
    dw_block = torch.empty((width, features), dtype=acc, device=w.device) \
        if half and need_dw and not single_tile else None
    db_block = torch.empty((width,), dtype=acc, device=w.device) if half and need_db else None
    current = None
    for blk, w_k, r0, r1, h_t, z, z_rows in tiles():
        if blk is not current:  # a new block: finish the last one, start this one's sums
            _finish_block(current, dw, db, dw_block, db_block)
            current = blk
            cols = slice(blk.first, blk.first + blk.width)
            dw_k = (dw[cols] if dw_block is None else dw_block[:blk.width]) if need_dw \
                else None
            db_k = (db[cols] if db_block is None else db_block[:blk.width]) if need_db \
                else None
            products.start_block(w_k)
        row_scale = layout.select(scale, r0, r1, blk) if scale.ndim else scale
        shard.shard_gradient(z_rows, layout.stats(stats, r0, r1, blk),
                             tile_target(blk, r0, r1), params, w_cls, blk.col_start, classes,
                             row_scale, z_rows, impl=impl)
        products.start_tile(z, h_t)
        if need_dh:
            products.input_grad(dh[r0:r1], z, w_k, first=blk is plan[0])
        if need_dw:
            products.weight_grad(dw_k, z, h_t, first=r0 == 0)
        if need_db:
            if r0 == 0:
                torch.sum(z, dim=0, dtype=acc, out=db_k)
            else:
                db_k += z.sum(dim=0, dtype=acc)
    _finish_block(current, dw, db, dw_block, db_block)
    if rows == 0:  # no tiles ran: no row contributes to dW or db
        dw.zero_()
        db.zero_()
    if need_dh and half:
        dh = dh.to(h.dtype)
    return per_row, denominator, dh, dw, db


def _finish_block(blk, dw, db, dw_block, db_block) -> None:
    """Cast a finished block's float32 sums into the returned gradients' rows."""
    if blk is None:
        return
    rows = slice(blk.first, blk.first + blk.width)
    if dw_block is not None:
        dw[rows].copy_(dw_block[:blk.width])
    if db_block is not None:
        db[rows].copy_(db_block[:blk.width])


@torch.library.custom_op("crossent::linear_cross_entropy_blocked", mutates_args=())
def linear_cross_entropy_blocked(
    h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, target: torch.Tensor,
    weight: torch.Tensor | None, grad_output: torch.Tensor | None, reduction: str,
    probability: bool, ignore_index: int, label_smoothing: float, z_loss: float,
    softcap: float | None, block: int, block_rows: int, impl: str, need_dh: bool,
    need_dw: bool, need_db: bool, target_shape: list[int], classes: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    params = CrossEntropyParams(probability=probability, ignore_index=ignore_index,
                                label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
    # the matrix products run in the dtypes chosen by the caller, whatever autocast says
    with torch.no_grad(), torch.autocast(h.device.type, enabled=False):
        return _blocked(h, w, b, target, weight, grad_output, reduction, params, block,
                        block_rows, impl, need_dh, need_dw, need_db, target_shape, classes)


@linear_cross_entropy_blocked.register_fake
def _(h, w, b, target, weight, grad_output, reduction, probability, ignore_index,
      label_smoothing, z_loss, softcap, block, block_rows, impl, need_dh, need_dw, need_db,
      target_shape, classes):
    cd = compute_dtype(h.dtype, target.dtype if probability else h.dtype)
    return (
        h.new_empty((h.shape[0] * (w.shape[0] // classes),), dtype=cd),
        h.new_empty((), dtype=cd),
        torch.empty_like(h) if need_dh else h.new_empty((0,)),
        torch.empty_like(w) if need_dw else w.new_empty((0,)),
        b.new_empty((w.shape[0],)) if need_db else w.new_empty((0,)),
    )


register_looping_vmap(linear_cross_entropy_blocked)

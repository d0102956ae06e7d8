r"""Linear + cross-entropy without the ``N x V`` logits: ``linear_cross_entropy``.

Same numbers and gradients as ``F.cross_entropy(F.linear(input, linear_weight, linear_bias),
target, ...)``, computed over row chunks of ``input``.  Per chunk of ``n`` rows::

    logits = h_c @ W.T (+ b)                 (n, V), one reused buffer
    loss, dlogits = fused pass, in place     the cross-entropy executor of crossent.torch
    dh_c  = dlogits @ W                      (n, D)
    dW   += dlogits.T @ h_c                  (V, D), float32 for half-precision weights
    db   += dlogits.sum(0)                   (V,)

so the peak memory is one ``(n, V)`` chunk on top of the gradients themselves, however large
``N`` grows.  The gradients are finished in the forward pass; the first backward hands them
out scaled by ``grad_output`` (in place: no copies), and a later backward over the same graph
(``retain_graph=True``) recomputes them from the saved inputs, so a gradient once handed out
never changes.  ``reduction='none'`` cannot fold a per-element ``grad_output`` into ``dW``
after the fact, so there the forward computes only the losses and backward re-runs the chunks
with ``grad_output`` folded in (one extra ``h @ W.T`` per chunk).

A K-dimensional head, ``linear_weight`` of shape ``(C, d1, ..., dK, D)`` as PyTorch 2.13's
``F.linear_cross_entropy`` takes it, gives each input row ``S = d1*...*dK`` rows of the loss.
The head's rows are reordered once to ``(d1, ..., dK, C)`` (a copy of the weight, not of any
logits), so that each chunk's logits ``(n, S*C)`` are ``n*S`` rows with classes last, the
layout of every executor; ``dW`` is reordered back.

That is ``schedule="rows"``.  ``schedule="vocab"`` (:mod:`crossent.torch._linear_blocked`)
walks the vocabulary in blocks instead, so that a half-precision head's float32 ``dW``
accumulator is one block, not ``V x D``; ``schedule="auto"`` chooses between the two by the
memory each needs (:func:`linear_cross_entropy_memory`).

Chunk size (``chunk_size=None``): the ``(n, V)`` logits chunk may take
:data:`CHUNK_BUDGET_BYTES` counted in float32, but a chunk has at least
:data:`MIN_CHUNK_ROWS` rows: ``n = min(N, max(budget // (4 V), MIN_CHUNK_ROWS))``.  The floor
is there because the three matrix products per chunk lose speed on thin matrices (measured on
a 2-core EPYC at N=2048, D=2048, V=128256: 16.5 s per step with 523-row chunks, 18.7 s with
261, 23.3 s with 65), while the budget keeps the chunk small next to the gradients that must
exist anyway (at N=4096, D=1024, V=32000: 1048-row chunks cost 2% over 2097-row ones).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .. import _semantics as sem
from . import _contract as contract
from ._impl import auto_impl, check_impl, resolve_impl
from ._linear_blocked import (
    ScheduleMemory,
    check_block_size,
    check_schedule,
    choose_schedule,
    choose_vocab_block,
    linear_cross_entropy_blocked,
    schedule_memory,
)
from ._ops import register_looping_vmap
from ._params import CrossEntropyParams
from ._rows import (
    block_loss_and_grad,
    check_targets_and_scale,
    compute_dtype,
    probability_target_terms,
    rows_executor,
)

#: Memory the ``(chunk, V)`` logits buffer may use, counted in float32: 128 MiB ...
CHUNK_BUDGET_BYTES = 128 << 20
#: ... unless that leaves fewer rows than this (thin matrix products are slow).
MIN_CHUNK_ROWS = 512


def choose_chunk_size(rows: int, vocab: int, budget_bytes: int = CHUNK_BUDGET_BYTES) -> int:
    """Rows per chunk: a float32 ``(chunk, vocab)`` buffer within ``budget_bytes``, but at
    least :data:`MIN_CHUNK_ROWS` rows, and never more rows than there are."""
    return int(max(1, min(rows, max(budget_bytes // (4 * max(vocab, 1)), MIN_CHUNK_ROWS))))


def check_chunk_size(chunk_size: object) -> int | None:
    """``chunk_size`` validated: a positive int or None."""
    if chunk_size is not None and (isinstance(chunk_size, bool)
                                   or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    return chunk_size


def rows_per_chunk(rows: int, vocab: int, chunk_size: object) -> int:
    """Rows per chunk: ``chunk_size`` (validated, at most ``rows``) or, when None,
    :func:`choose_chunk_size`'s."""
    chunk_size = check_chunk_size(chunk_size)
    if chunk_size is None:
        return choose_chunk_size(rows, vocab)
    return min(chunk_size, max(rows, 1))


def _accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """Weight gradients of half-precision weights accumulate in float32."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _logits_chunks(h, w, b, chunk):
    """``(start, stop, logits)`` for each chunk of ``chunk`` rows of ``h``, with
    ``logits = h[start:stop] @ w.T (+ b)`` written into one ``(chunk, V)`` buffer that every
    chunk reuses: a chunk's logits (or the gradient written over them) are gone once the
    next is asked for."""
    rows = h.shape[0]
    buffer = torch.empty((min(chunk, rows), w.shape[0]), dtype=h.dtype, device=h.device)
    for start in range(0, rows, chunk):
        stop = min(start + chunk, rows)
        logits = buffer[: stop - start]
        torch.mm(h[start:stop], w.t(), out=logits)
        if b is not None:
            logits += b
        yield start, stop, logits


class _HeadGradients:
    """The gradients of ``h (N, D)``, ``w (V, D)`` and the bias, accumulated from each
    chunk's ``d logits`` (:meth:`add`), every buffer allocated once::

        dh[chunk] = dlogits @ W        in ``dh_dtype`` (default: the input's)
        dW       += dlogits.T @ h_c    float32 for half-precision weights
        db       += dlogits.sum(0)     likewise

    A half-precision ``dW`` product is taken in float32 from float32 copies of the chunk (a
    float16/bfloat16 ``addmm_`` would round every partial sum); a ``dh`` kept in a wider
    dtype than the input's (the distributed op sums it over the ranks first) is the
    product rounded as ``F.linear``'s backward rounds it, then widened.
    """

    def __init__(self, h, w, chunk, need_dh, need_dw, need_db, dh_dtype=None):
        rows, features = h.shape
        n = min(chunk, rows)
        self.h, self.w = h, w
        self.acc = _accumulate_dtype(w.dtype)
        self.dh = (torch.empty((rows, features), dtype=dh_dtype or h.dtype, device=h.device)
                   if need_dh else h.new_empty((0,)))
        self.dw = (torch.zeros(w.shape, dtype=self.acc, device=w.device) if need_dw
                   else w.new_empty((0,)))
        self.db = (torch.zeros((w.shape[0],), dtype=self.acc, device=w.device) if need_db
                   else w.new_empty((0,)))
        self.need = (need_dh, need_dw, need_db)
        self.dh_chunk = (torch.empty((n, features), dtype=h.dtype, device=h.device)
                         if need_dh and self.dh.dtype != h.dtype else None)
        self.widen = need_dw and self.acc != h.dtype
        if self.widen:
            self.g_acc = torch.empty((n, w.shape[0]), dtype=self.acc, device=h.device)
            self.h_acc = torch.empty((n, features), dtype=self.acc, device=h.device)

    def add(self, start, stop, g):
        """Add the chunk ``h[start:stop]``'s gradient ``g = d logits`` ``(stop - start, V)``."""
        need_dh, need_dw, need_db = self.need
        n = stop - start
        hc = self.h[start:stop]
        if need_dh:
            if self.dh_chunk is None:
                torch.mm(g, self.w, out=self.dh[start:stop])
            else:
                torch.mm(g, self.w, out=self.dh_chunk[:n])
                self.dh[start:stop].copy_(self.dh_chunk[:n])
        if need_dw:
            if self.widen:
                self.g_acc[:n].copy_(g)
                self.h_acc[:n].copy_(hc)
                self.dw.addmm_(self.g_acc[:n].t(), self.h_acc[:n])
            else:
                self.dw.addmm_(g.t(), hc)
        if need_db:
            self.db += g.sum(dim=0, dtype=self.acc)


def _chunked(h, w, b, target, weight, grad_output, reduction, params, chunk, impl, need_dh,
             need_dw, need_db, target_shape, classes):
    """The chunked pass over ``h (N, D)`` and ``w (S*C, D)``: each input row gives ``S`` rows
    of ``classes = C`` logits (``S = 1`` but for a K-dimensional head).  ``grad_output``
    None: gradients for an upstream gradient of 1 on the reduced loss; else the per-row
    upstream gradient (for ``'none'``, one per loss row)."""
    rows, _ = h.shape
    spatial = w.shape[0] // classes
    want_grad = need_dh or need_dw or need_db
    cd = compute_dtype(h.dtype, target.dtype if params.probability else h.dtype)
    w_cls = weight.to(torch.float32 if impl == "triton" else cd) if weight is not None else None
    denominator, scale = check_targets_and_scale(
        target, params, w_cls, classes, reduction, cd, tuple(target_shape))
    if grad_output is not None:
        scale = grad_output.to(cd)
    if impl == "triton":
        scale = scale.float()
    run_rows = rows_executor(impl)
    grads = _HeadGradients(h, w, chunk, need_dh, need_dw, need_db)
    per_row = torch.empty((rows * spatial,), dtype=cd, device=h.device)
    for start, stop, logits in _logits_chunks(h, w, b, chunk):
        first, last = start * spatial, stop * spatial  # the chunk's rows of the loss
        row_scale = scale[first:last] if scale.ndim else scale
        loss_rows = logits.view(-1, classes)
        per_row[first:last] = run_rows(loss_rows, target[first:last], params, w_cls,
                                       row_scale if want_grad else None,
                                       loss_rows if want_grad else None)
        if want_grad:  # the gradient lies over the logits
            grads.add(start, stop, logits)
    return per_row, denominator, grads.dh, grads.dw, grads.db


@torch.library.custom_op("crossent::linear_cross_entropy_chunked", mutates_args=())
def _linear_cross_entropy_chunked(
    h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, target: torch.Tensor,
    weight: torch.Tensor | None, grad_output: torch.Tensor | None, reduction: str,
    probability: bool, ignore_index: int, label_smoothing: float, z_loss: float,
    softcap: float | None, chunk: int, impl: str, need_dh: bool, need_dw: bool, need_db: bool,
    target_shape: list[int], classes: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    params = CrossEntropyParams(probability=probability, ignore_index=ignore_index,
                                label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
    # the matrix products run in the dtypes chosen by the caller, whatever autocast says
    with torch.no_grad(), torch.autocast(h.device.type, enabled=False):
        return _chunked(h, w, b, target, weight, grad_output, reduction, params, chunk, impl,
                        need_dh, need_dw, need_db, target_shape, classes)


@_linear_cross_entropy_chunked.register_fake
def _(h, w, b, target, weight, grad_output, reduction, probability, ignore_index,
      label_smoothing, z_loss, softcap, chunk, impl, need_dh, need_dw, need_db, target_shape,
      classes):
    cd = compute_dtype(h.dtype, target.dtype if probability else h.dtype)
    acc = _accumulate_dtype(w.dtype)
    return (
        h.new_empty((h.shape[0] * (w.shape[0] // classes),), dtype=cd),
        h.new_empty((), dtype=cd),
        torch.empty_like(h) if need_dh else h.new_empty((0,)),
        w.new_empty(w.shape, dtype=acc) if need_dw else w.new_empty((0,)),
        w.new_empty((w.shape[0],), dtype=acc) if need_db else w.new_empty((0,)),
    )


register_looping_vmap(_linear_cross_entropy_chunked)


@dataclass(frozen=True)
class _Call:
    """Everything about one call that is not a tensor."""

    reduction: str
    params: CrossEntropyParams
    chunk: int
    impl: str
    target_shape: tuple[int, ...]
    classes: int
    loss_dtype: torch.dtype
    dtypes: tuple[torch.dtype, torch.dtype, torch.dtype | None]  # of input, weight, bias
    schedule: str = "rows"  # or "vocab": blocks of `block` columns by `block_rows` rows
    block: int = 0
    block_rows: int = 0

    def run(self, h, w, b, target, weight, grad_output, need):
        p = self.params
        if self.schedule == "vocab":
            return linear_cross_entropy_blocked(
                h, w, b, target, weight, grad_output, self.reduction, p.probability,
                p.ignore_index, p.label_smoothing, p.z_loss, p.softcap, self.block,
                self.block_rows, self.impl, *need, list(self.target_shape), self.classes)
        return _linear_cross_entropy_chunked(
            h, w, b, target, weight, grad_output, self.reduction, p.probability,
            p.ignore_index, p.label_smoothing, p.z_loss, p.softcap, self.chunk, self.impl,
            *need, list(self.target_shape), self.classes)


class _LinearCrossEntropy(torch.autograd.Function):
    """Autograd for the chunked pass.

    forward returns the loss and, for ``'mean'``/``'sum'``, the finished gradients of
    ``input``, ``linear_weight`` and ``linear_bias`` for an upstream gradient of 1 (as
    non-differentiable outputs, so ``setup_context`` can keep them).  The first backward
    hands them out scaled in place by ``grad_output``; a later one recomputes them from the
    saved inputs.  Under ``torch.compile`` and ``torch.func`` backward is pure.
    ``reduction='none'`` recomputes in every backward, with ``grad_output`` folded in.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(h, w, b, target, weight, call, need):
        finished = need if call.reduction != "none" else (False, False, False)
        per_row, denominator, dh, dw, db = call.run(h, w, b, target, weight, None, finished)
        loss = sem.reduce_loss(per_row, call.reduction, denominator).to(call.loss_dtype)
        return loss, dh, dw, db

    @staticmethod
    def setup_context(ctx, inputs, output):
        h, w, b, target, weight, call, need = inputs
        _, dh, dw, db = output
        ctx.mark_non_differentiable(dh, dw, db)
        # no zeros for the gradients of dh, dW, db in backward: they would be as large as the
        # gradients themselves (a V x D buffer for nothing)
        ctx.set_materialize_grads(False)
        ctx.call = call
        ctx.need = need
        ctx.kept = (dh, dw, db) if call.reduction != "none" else None
        ctx.save_for_backward(h, w, b, target, weight)
        ctx.save_for_forward(h, w, b, target, weight)  # jvp reads them as ctx.saved_tensors

    @staticmethod
    def backward(ctx, grad_loss, *_grads_of_grads):
        contract.refuse_double_backward("linear_cross_entropy")
        if grad_loss is None:  # nothing flows into the loss (grads are not materialised)
            return (None,) * 7
        call: _Call = ctx.call
        h_dtype, w_dtype, b_dtype = call.dtypes
        h, w, b, target, weight = ctx.saved_tensors
        dtypes = (h_dtype, w_dtype, b_dtype)
        if call.reduction == "none":
            _, _, *fresh = call.run(h, w, b, target, weight, grad_loss.reshape(-1), ctx.need)
            grads = [g.to(dt) if needed else None
                     for g, dt, needed in zip(fresh, dtypes, ctx.need)]
        elif contract.pure_backward():
            grads = [contract.scaled(g, grad_loss, dt) if needed else None
                     for g, dt, needed in zip(ctx.kept, dtypes, ctx.need)]
        else:
            kept = ctx.kept
            if kept is None:  # handed out by an earlier backward: autograd owns them now
                _, _, *kept = call.run(h, w, b, target, weight, None, ctx.need)
            ctx.kept = None
            grads = [contract.scale_into(g, grad_loss, dt) if needed else None
                     for g, dt, needed in zip(kept, dtypes, ctx.need)]
        d_target = d_weight = None
        if ctx.needs_input_grad[3] or ctx.needs_input_grad[4]:
            d_target, d_weight = _target_and_weight_grads(h, w, b, target, weight, grad_loss,
                                                          call)
            d_target = d_target if ctx.needs_input_grad[3] else None
            d_weight = d_weight if ctx.needs_input_grad[4] else None
        return (*grads, d_target, d_weight, None, None)


class _LinearCrossEntropyJvp(_LinearCrossEntropy):
    """:class:`_LinearCrossEntropy` with forward-mode AD (eager and ``torch.func``).

    For ``'mean'``/``'sum'`` the tangent is ``<dh, h_t> + <dW, W_t> + <db, b_t>`` with the
    kept gradients; for ``'none'`` each row's is ``g_n . (h_t W^T + h W_t^T + b_t)_n``,
    recomputed chunk by chunk.
    """

    @staticmethod
    def jvp(ctx, h_t, w_t, b_t, target_t, weight_t, _call_t, _need_t):
        tangent = _LinearCrossEntropyJvp._input_tangent(ctx, h_t, w_t, b_t)
        if ctx.call.params.probability and (target_t is not None or weight_t is not None):
            h, w, b, target, weight = ctx.saved_tensors
            extra = _target_and_weight_tangent(h, w, b, target, weight, target_t, weight_t,
                                               ctx.call)
            tangent = extra if tangent is None else tangent + extra.to(tangent.dtype)
        return tangent.to(ctx.call.loss_dtype), None, None, None

    @staticmethod
    def _input_tangent(ctx, h_t, w_t, b_t):
        call: _Call = ctx.call
        if h_t is None and w_t is None and b_t is None:
            return None
        if call.reduction != "none":
            if ctx.kept is None:
                raise RuntimeError("crossent.torch.linear_cross_entropy: forward-mode AD "
                                   "after a backward over the same graph is not supported")
            tangent = None
            for grad, tan, needed in zip(ctx.kept, (h_t, w_t, b_t), ctx.need):
                if tan is None or not needed:
                    continue
                term = (grad.to(torch.float64 if tan.dtype == torch.float64 else
                                torch.float32) * tan).sum()
                tangent = term if tangent is None else tangent + term
            return tangent
        h, w, b, target, weight = ctx.saved_tensors
        return _row_tangents(h, w, b, target, weight, h_t, w_t, b_t, call)


def _probability_terms_by_chunk(h, w, b, target, weight, call: _Call):
    """``(first, last, d_target, d_weight)`` per chunk of loss rows: the per-row terms of
    :func:`crossent.torch._rows.probability_target_terms`, for an upstream gradient of 1
    on each row's loss.  Plain torch operations (``torch.func`` can run them)."""
    classes = call.classes
    spatial = w.shape[0] // classes
    for start in range(0, h.shape[0], call.chunk):
        stop = min(start + call.chunk, h.shape[0])
        logits = h[start:stop] @ w.t()
        if b is not None:
            logits = logits + b
        first, last = start * spatial, stop * spatial
        d_t, d_w = probability_target_terms(logits.reshape(-1, classes), target[first:last],
                                            weight, call.params.softcap,
                                            call.params.label_smoothing)
        yield first, last, d_t, d_w


def _row_scale(scale: torch.Tensor, call: _Call, rows: int) -> torch.Tensor:
    """``d reduced loss / d loss_n`` (0-d, or one per row for ``'none'``)."""
    scale = scale.reshape(-1) if call.reduction == "none" else scale
    if call.reduction == "mean":
        scale = scale / sem.mean_denominator_probability(rows)
    return scale


def _target_and_weight_grads(h, w, b, target, weight, grad_loss, call: _Call):
    """Gradients of probability targets and class weights, chunk by chunk."""
    rows = target.shape[0]
    scale = _row_scale(grad_loss, call, rows)
    d_targets, d_weight = [], None
    for first, last, d_t, d_w in _probability_terms_by_chunk(h, w, b, target, weight, call):
        factor = (scale[first:last] if scale.ndim else scale).to(d_t.dtype)
        factor = factor.reshape(-1, 1) if factor.ndim else factor
        d_targets.append(d_t * factor)
        part = (d_w * factor).sum(0)
        d_weight = part if d_weight is None else d_weight + part
    d_target = torch.cat(d_targets) if d_targets else torch.zeros_like(target)
    if d_weight is None:
        d_weight = torch.zeros(call.classes, dtype=target.dtype, device=h.device)
    return (d_target.to(target.dtype),
            d_weight.to(weight.dtype if weight is not None else target.dtype))


def _target_and_weight_tangent(h, w, b, target, weight, target_t, weight_t, call: _Call):
    """The loss's tangent from the tangents of probability targets and class weights."""
    parts = []
    for first, last, d_t, d_w in _probability_terms_by_chunk(h, w, b, target, weight, call):
        part = 0.0
        if target_t is not None:
            part = part + (d_t * target_t[first:last]).sum(-1)
        if weight_t is not None:
            part = part + (d_w * weight_t).sum(-1)
        parts.append(part)
    per_row = torch.cat(parts) if parts else h.new_zeros((0,))
    if call.reduction == "none":
        return per_row
    total = per_row.sum()
    return total / sem.mean_denominator_probability(target.shape[0]) \
        if call.reduction == "mean" else total


def _row_tangents(h, w, b, target, weight, h_t, w_t, b_t, call: _Call) -> torch.Tensor:
    """Per-row tangents of ``reduction='none'``: each row's logits gradient (upstream 1)
    dotted with the logits' tangent ``h_t W^T + h W_t^T + b_t``, chunk by chunk (never the
    ``N x V`` logits), in plain torch operations so that every ``torch.func`` transform
    (``jacfwd`` vmaps this) can run it."""
    classes = call.classes
    spatial = w.shape[0] // classes
    cd = compute_dtype(h.dtype, target.dtype if call.params.probability else h.dtype)
    w_cls = weight.to(cd) if weight is not None else None
    ones = torch.ones((), dtype=cd, device=h.device)
    parts = []
    for start in range(0, h.shape[0], call.chunk):
        stop = min(start + call.chunk, h.shape[0])
        hc = h[start:stop]
        logits = hc @ w.t()
        if b is not None:
            logits = logits + b
        first, last = start * spatial, stop * spatial
        _, grad = block_loss_and_grad(logits.reshape(-1, classes), target[first:last],
                                      call.params, w_cls, ones)
        tangent = None
        for term in ((h_t[start:stop] @ w.t()) if h_t is not None else None,
                     (hc @ w_t.t()) if w_t is not None else None, b_t):
            if term is not None:
                tangent = term if tangent is None else tangent + term
        parts.append((grad * tangent.to(cd).reshape(-1, classes)).sum(-1))
    out = torch.cat(parts) if parts else h.new_zeros((0,), dtype=cd)
    return out.to(call.loss_dtype)


def _plan(rows: int, features: int, classes: int, spatial: int, dtype: torch.dtype,
          device_type: str, need: tuple[bool, bool, bool], probability_dtype, impl: str,
          chunk_size: int | None, vocab_block_size: int | None, schedule: str
          ) -> ScheduleMemory:
    """Chunk and block sizes of both schedules, the memory each needs, and the schedule
    used (``schedule``, or for ``"auto"`` the one :func:`choose_schedule` picks)."""
    vocab = classes * spatial
    chunk = rows_per_chunk(rows, vocab, chunk_size)
    block = choose_vocab_block(vocab, features, rows) if vocab_block_size is None \
        else vocab_block_size
    block_rows = choose_chunk_size(rows, min(block, vocab)) if chunk_size is None else chunk
    by_rows, by_vocab = schedule_memory(
        rows, features, vocab, dtype=dtype, device_type=device_type, need=need, chunk=chunk,
        block=block, block_rows=block_rows, classes=classes,
        probability_dtype=probability_dtype, impl=impl)
    chosen = choose_schedule(by_rows, by_vocab) if schedule == "auto" else schedule
    return ScheduleMemory(by_rows, by_vocab, chosen, chunk, block, block_rows)


def linear_cross_entropy_memory(
    rows: int, features: int, vocab: int, *, dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu", input_grad: bool = True, weight_grad: bool = True,
    bias_grad: bool = False, chunk_size: int | None = None,
    vocab_block_size: int | None = None, impl: str = "auto",
) -> ScheduleMemory:
    r"""The bytes each schedule of :func:`linear_cross_entropy` needs for hidden states
    ``(N, D)`` (``N = rows``, ``D = features``) and a head ``(V, D)`` (``V = vocab``), beyond
    the inputs and the returned gradients, and the schedule ``schedule="auto"`` takes: the
    same computation the op makes.  Nothing is allocated (``device`` may name a device this
    machine lacks).  To first order, with ``n`` rows per chunk, ``B`` columns per block and
    ``s`` bytes per element, the half-precision terms in brackets:

    .. math:: M_\text{rows} \approx n V s + [\,4 V D + 4 n V + 4 n D\,], \qquad
        M_\text{vocab} \approx n B s + 16 N + [\,4 N D\,]

    Returns:
        A :class:`ScheduleMemory` ``(rows, vocab, chosen, chunk, block, block_rows)``: the two
            byte counts, the schedule ``"auto"`` takes, and the sizes it would use.

    >>> import torch
    >>> m = linear_cross_entropy_memory(8192, 4096, 128256, dtype=torch.bfloat16, device="cuda")
    >>> m.chosen, round(m.rows / 2**30, 2), round(m.vocab / 2**30, 2)
    ('vocab', 2.33, 0.31)
    """
    device = torch.device(device)
    for name, value in (("rows", rows), ("features", features), ("vocab", vocab)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    chunk_size = check_chunk_size(chunk_size)
    vocab_block_size = check_block_size(vocab_block_size)
    if check_impl(impl) == "auto":  # a GPU with triton assumed, even on a machine without
        impl = auto_impl(device.type, dtype, triton_ready=True)
    return _plan(rows, features, vocab, 1, dtype, device.type,
                 (input_grad, weight_grad, bias_grad), None, impl, chunk_size,
                 vocab_block_size, "auto")


def linear_cross_entropy(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int | None = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_size: int | None = None,
    options: Any = None,
    impl: str = "auto",
    schedule: str = "auto",
    vocab_block_size: int | None = None,
    loss_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    r"""Cross-entropy of a linear layer's output, without materialising the logits.

    .. math:: \ell = \operatorname{CE}(h W^\top + b,\; y)

    Same as ``F.cross_entropy(F.linear(input, linear_weight, linear_bias), target, weight,
    ignore_index=..., reduction=..., label_smoothing=...)``, with the gradients of ``input``,
    ``linear_weight``, ``linear_bias`` (and of probability targets and class weights that
    require grad); keyword-compatible with PyTorch 2.13's ``F.linear_cross_entropy``
    (``ignore_index=None`` means -100; ``options`` may carry ``batch_chunk_size``),
    K-dimensional heads included.  Beyond PyTorch, which takes ``(D,)`` and ``(N, D)``
    inputs only, inputs with more leading dimensions ``(B, T, D)`` are flattened to rows
    ``(B*T, D)`` with the classes last, the language-model convention.  Under
    ``torch.autocast`` the matrix products run in the autocast dtype and the loss is
    float32, as PyTorch's op gives.  Below, ``V`` is the number of classes of a plain head
    and ``C`` of a K-dimensional one.

    Args:
        input: ``(..., D)`` hidden states (``(N, D)`` with a K-dimensional head).
        linear_weight: ``(V, D)`` classifier weight, or ``(C, d1, ..., dK, D)``: a
            K-dimensional head whose loss has shape ``(N, d1, ..., dK)``.
        target: class indices ``(...)`` (any integer dtype) or probabilities ``(..., V)``;
            with a K-dimensional head ``(N, d1, ..., dK)`` or ``(N, C, d1, ..., dK)``.
        linear_bias: ``(V,)``, or ``(C, d1, ..., dK)`` with a K-dimensional head.
        weight: ``(V,)`` class weights, in the input's dtype for class-index targets.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``, as in ``F.cross_entropy``.
        ignore_index: a class index that adds nothing (None means -100).
        label_smoothing: ``eps`` in [0, 1], as in ``F.cross_entropy``.
        z_loss: coefficient of ``w_n logsumexp(z_n)**2`` per element (PaLM).
        softcap: the logits pass through ``softcap * tanh(z / softcap)`` first (Gemma 2).
        chunk_size: rows per chunk (per tile with ``schedule="vocab"``); None chooses it
            from :data:`CHUNK_BUDGET_BYTES`.
        options: a ``torch.nn.LinearCrossEntropyOptions`` (only ``batch_chunk_size`` is used).
        impl: the cross-entropy executor for each chunk (``"auto"``, ``"cpu"``, ``"torch"``,
            ``"triton"``).
        schedule: ``"rows"`` walks the rows in chunks (three matrix products per logit, but
            a half-precision head's ``dW`` accumulates in a float32 ``V x D`` buffer);
            ``"vocab"`` walks the vocabulary in blocks (four products: the logits are
            computed twice; the float32 accumulator is one block).  ``"auto"`` takes
            ``"rows"`` while it needs at most 1 GiB beyond the inputs and gradients or no
            more than ``"vocab"``; :func:`linear_cross_entropy_memory` says what each needs.
        vocab_block_size: columns per block of ``schedule="vocab"``; None chooses it
            (8192, fewer if a float32 ``(block, D)`` block or ``(N, block)`` tile would
            exceed 128 MiB).
        loss_dtype: the dtype of the returned loss; None follows PyTorch (the input's dtype,
            float32 under autocast).  ``torch.float32`` gives half-precision inputs the loss of
            ``F.cross_entropy(logits.float(), ...)``, what Hugging Face's causal-LM loss
            returns, without its float32 copy of the logits: the loss is always computed in
            float32 (float64 for float64 inputs) and only rounded to ``loss_dtype``.

    Returns:
        A 0-d tensor, or the loss per row for ``reduction='none'`` (the target's shape for
            class indices: ``(...)``, ``(B, T)`` or ``(N, d1, ..., dK)``), in ``loss_dtype``.

    >>> import torch
    >>> import torch.nn.functional as F
    >>> h = torch.tensor([[1.0, 0.0], [0.0, 1.0]]); W = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    >>> round(linear_cross_entropy(h, W, torch.tensor([0, 1])).item(), 6)
    0.220095
    >>> hidden = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(0))  # (B, T, D)
    >>> head = torch.randn(50, 8, generator=torch.Generator().manual_seed(1))       # (V, D)
    >>> labels = torch.tensor([[1, 2, 3], [4, 5, -100]])
    >>> loss = linear_cross_entropy(hidden, head, labels)
    >>> same = F.cross_entropy((hidden @ head.T).reshape(-1, 50), labels.reshape(-1))
    >>> torch.allclose(loss, same)
    True
    >>> half = linear_cross_entropy(hidden.bfloat16(), head.bfloat16(), labels,
    ...                             loss_dtype=torch.float32)
    >>> half.dtype
    torch.float32
    """
    input = contract.check_tensor(input, "input")
    linear_weight = contract.check_tensor(linear_weight, "linear_weight")
    target = contract.check_tensor(target, "target")
    contract.check_float_dtype(input, "input", "hidden states")
    contract.check_float_dtype(linear_weight, "linear_weight", "weights")
    if input.ndim < 1:
        raise sem.ArgumentError("input must have shape (..., D), got a 0-d tensor")
    if linear_weight.ndim < 2:
        raise sem.ArgumentError(
            f"expected linear_weight with dimensionality at least 2, got {linear_weight.ndim}: "
            f"linear_weight must have shape (V, D) or (C, d1, ..., dK, D), got shape "
            f"{tuple(linear_weight.shape)}")
    classes, *out_spatial = linear_weight.shape[:-1]
    out_spatial = tuple(int(d) for d in out_spatial)
    features = linear_weight.shape[-1]
    if input.shape[-1] != features:
        raise sem.ArgumentError(
            f"expected equal input and linear_weight last dimensions (in_features), got "
            f"{input.shape[-1]} and {features}, respectively: input of shape "
            f"{tuple(input.shape)}, linear_weight of shape {tuple(linear_weight.shape)}"
        )
    if out_spatial and input.ndim != 2:
        raise sem.ArgumentError(
            f"K-dimensional loss defined by linear_weight shape {tuple(linear_weight.shape)} "
            f"requires batched input, (N, {features}), got input of shape "
            f"{tuple(input.shape)}")
    if linear_bias is not None:
        linear_bias = contract.check_tensor(linear_bias, "linear_bias")
    autocast = contract.linear_autocast_dtype(input, linear_weight, linear_bias)
    if classes == 0:
        raise sem.EmptyClassesError("linear_weight has C=0 rows: at least one class needed")
    if linear_bias is not None and tuple(linear_bias.shape) != tuple(linear_weight.shape[:-1]):
        raise sem.ArgumentError(
            f"expected linear_bias shape {sem._shape_str(tuple(linear_weight.shape[:-1]))},"
            f" got {sem._shape_str(tuple(linear_bias.shape))}")
    lead = tuple(input.shape[:-1])
    if input.ndim <= 2:  # PyTorch's own shapes; (B, T, D) is crossent's, checked below
        sem.check_target_batch(tuple(input.shape), tuple(target.shape))
    loss_shape = lead + out_spatial  # one loss per row and spatial position
    probability_shape = lead + (classes,) + out_spatial
    probability = tuple(target.shape) == probability_shape
    if probability and ignore_index is not None and ignore_index >= 0:
        raise sem.ArgumentError(
            "ignore_index cannot be specified when target contains probabilities (a target of "
            f"shape {sem._shape_str(probability_shape)}); got ignore_index={ignore_index}")
    ignore_index = sem.check_ignore_index(-100 if ignore_index is None else ignore_index)
    reduction = sem.check_reduction(reduction)
    label_smoothing = sem.check_label_smoothing(label_smoothing)
    z_loss = sem.check_z_loss(z_loss)
    softcap = sem.check_softcap(softcap)
    contract.check_target_dtype(target, probability, loss_shape, probability_shape)
    if not probability:
        if tuple(target.shape) != loss_shape:
            raise sem.ArgumentError(
                f"target must have shape {sem._shape_str(loss_shape)} (class indices) or "
                f"{sem._shape_str(probability_shape)} (probabilities) for input of shape "
                f"{tuple(input.shape)} and linear_weight of shape "
                f"{tuple(linear_weight.shape)}, got {tuple(target.shape)}")
    if weight is not None:
        weight = contract.check_tensor(weight, "weight")
        if not weight.is_floating_point():
            raise sem.ArgumentTypeError(
                f"weight must be floating point, got {contract.dtype_name(weight)}")
        sem.check_class_weight(tuple(weight.shape), classes)
        contract.check_class_weight_dtype(weight, input.dtype, probability, autocast)
        if weight.requires_grad and torch.is_grad_enabled() and not probability:
            raise RuntimeError(
                "crossent.torch.linear_cross_entropy is not differentiable with respect to "
                "weight for class-index targets (nor is F.cross_entropy); pass "
                "weight.detach()")
    for name, t in (("linear_weight", linear_weight), ("target", target),
                    ("linear_bias", linear_bias), ("weight", weight)):
        if t is not None and t.device != input.device:
            raise sem.ArgumentError(
                f"{name} must be on the input's device {input.device}, got {t.device}")
    if chunk_size is None and options is not None:
        chunk_size = getattr(options, "batch_chunk_size", None)
    rows = math.prod(lead)
    spatial = math.prod(out_spatial)
    chunk_size = check_chunk_size(chunk_size)
    input, linear_weight, linear_bias, weight = contract.autocast_linear_inputs(
        autocast, input, linear_weight, linear_bias, weight)
    impl = resolve_impl(impl, input.device, input.dtype)
    schedule = check_schedule(schedule)
    vocab_block_size = check_block_size(vocab_block_size)
    contract.refuse_higher_order("linear_cross_entropy", False)

    h = input.reshape(rows, features)
    if h.stride(-1) != 1:
        h = h.contiguous()
    w, b = linear_weight, linear_bias
    if out_spatial:  # (C, d1..dK, D) -> rows ordered (d1..dK, C): logits come classes last
        w = w.reshape(classes, spatial, features).transpose(0, 1).reshape(-1, features)
        b = b.reshape(classes, spatial).t().reshape(-1) if b is not None else None
    if w.stride(-1) != 1:
        w = w.contiguous()
    if probability:
        moved = target.movedim(len(lead), -1) if out_spatial else target
        rows_target = moved.reshape(-1, classes).contiguous()
        rows_target = rows_target.to(contract.probability_target_dtype(target, weight))
    else:
        rows_target = contract.index_target_as_int64(
            target.reshape(-1), classes, ignore_index, tuple(target.shape))
    params = CrossEntropyParams(probability=probability, ignore_index=ignore_index,
                                label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
    if loss_dtype is not None:
        if not isinstance(loss_dtype, torch.dtype) or loss_dtype not in contract.FLOAT_DTYPES:
            raise TypeError(f"loss_dtype must be None or one of "
                            f"{', '.join(map(contract.dtype_name, contract.FLOAT_DTYPES))}, "
                            f"got {loss_dtype!r}")
    else:
        loss_dtype = contract.loss_dtype(input.dtype, target, weight, probability, autocast)
    differentiating = contract.differentiating(h, w, b, rows_target, weight)
    need = tuple(contract.may_differentiate(t) for t in (h, w, b)) if differentiating \
        else (False, False, False)
    plan = _plan(rows, features, classes, spatial, h.dtype, h.device.type, need,
                 target.dtype if probability else None, impl, chunk_size, vocab_block_size,
                 schedule)
    call = _Call(reduction, params, plan.chunk, impl, tuple(loss_shape) or (1,), classes,
                 loss_dtype, (h.dtype, w.dtype, b.dtype if b is not None else None),
                 plan.chosen, plan.block, plan.block_rows)
    if differentiating:
        function = _LinearCrossEntropy if torch.compiler.is_compiling() \
            else _LinearCrossEntropyJvp
        loss, *_ = function.apply(h, w, b, rows_target, weight, call, need)
    else:
        per_row, denominator, *_ = call.run(h, w, b, rows_target, weight, None,
                                            (False, False, False))
        loss = sem.reduce_loss(per_row, reduction, denominator).to(loss_dtype)
    if reduction == "none":
        loss = loss.reshape(loss_shape)
    return loss

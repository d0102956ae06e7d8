r"""Linear + cross-entropy without the ``N x V`` logits: ``linear_cross_entropy``.

Same numbers and gradients as ``F.cross_entropy(F.linear(input, linear_weight, linear_bias),
target, ...)``, computed over row chunks of ``input``.  Per chunk of ``n`` rows::

    logits = h_c @ W.T (+ b)                 (n, V), one reused buffer
    loss, dlogits = fused pass, in place     the cross-entropy executor of crossent.torch
    dh_c  = dlogits @ W                      (n, D)
    dW   += dlogits.T @ h_c                  (V, D), float32 for half-precision weights
    db   += dlogits.sum(0)                   (V,)

so the peak memory is one ``(n, V)`` chunk on top of the gradients themselves, however large
``N`` grows.  The gradients are finished in the forward pass; backward only scales them by
``grad_output`` (in place, so a second backward through the same graph is refused unless the
upstream gradient is exactly 1).  ``reduction='none'`` cannot fold a per-element
``grad_output`` into ``dW`` after the fact, so there the forward computes only the losses and
backward re-runs the chunks with ``grad_output`` folded in (one extra ``h @ W.T`` per chunk).

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
from typing import Any

import torch

from .. import _semantics as sem
from ._contract import check_tensor as _check_tensor
from ._contract import dtype_name as _dtype_name
from ._contract import refuse_double_backward
from ._impl import resolve_impl
from ._params import CrossEntropyParams
from ._rows import check_targets_and_scale, compute_dtype, rows_executor

#: Memory the ``(chunk, V)`` logits buffer may use, counted in float32: 128 MiB ...
CHUNK_BUDGET_BYTES = 128 << 20
#: ... unless that leaves fewer rows than this (thin matrix products are slow).
MIN_CHUNK_ROWS = 512


def choose_chunk_size(rows: int, vocab: int, budget_bytes: int = CHUNK_BUDGET_BYTES) -> int:
    """Rows per chunk: a float32 ``(chunk, vocab)`` buffer within ``budget_bytes``, but at
    least :data:`MIN_CHUNK_ROWS` rows, and never more rows than there are."""
    return int(max(1, min(rows, max(budget_bytes // (4 * max(vocab, 1)), MIN_CHUNK_ROWS))))


def _accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """Weight gradients of half-precision weights accumulate in float32."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _chunked(h, w, b, target, weight, grad_output, reduction, params, chunk, impl, need_dh,
             need_dw, need_db, target_shape):
    """The chunked pass.  ``grad_output`` None: gradients for an upstream gradient of 1 on the
    reduced loss; else the per-row upstream gradient (for ``'none'``)."""
    rows, _ = h.shape
    vocab = w.shape[0]
    want_grad = need_dh or need_dw or need_db
    cd = compute_dtype(h.dtype, target.dtype if params.probability else h.dtype)
    w_cls = weight.to(torch.float32 if impl == "triton" else cd) if weight is not None else None
    denominator, scale = check_targets_and_scale(
        target, params, w_cls, vocab, reduction, cd, tuple(target_shape))
    if grad_output is not None:
        scale = grad_output.to(cd)
    if impl == "triton":
        scale = scale.float()
    run_rows = rows_executor(impl)
    acc = _accumulate_dtype(w.dtype)
    dh = torch.empty_like(h) if need_dh else h.new_empty((0,))
    dw = torch.zeros(w.shape, dtype=acc, device=w.device) if need_dw else w.new_empty((0,))
    db = (torch.zeros((vocab,), dtype=acc, device=w.device) if need_db
          else w.new_empty((0,)))
    per_row = torch.empty((rows,), dtype=cd, device=h.device)
    buffer = torch.empty((min(chunk, rows), vocab), dtype=h.dtype, device=h.device)
    widen = need_dw and acc != h.dtype  # half precision: dW's product is taken in float32
    if widen:  # float32 copies of each chunk, allocated once rather than per chunk
        buffer_acc = torch.empty((min(chunk, rows), vocab), dtype=acc, device=h.device)
        h_acc = torch.empty((min(chunk, rows), h.shape[1]), dtype=acc, device=h.device)
    for start in range(0, rows, chunk):
        stop = min(start + chunk, rows)
        hc = h[start:stop]
        logits = buffer[: stop - start]
        torch.mm(hc, w.t(), out=logits)
        if b is not None:
            logits += b
        row_scale = scale[start:stop] if scale.ndim else scale
        per_row[start:stop] = run_rows(logits, target[start:stop], params, w_cls,
                                       row_scale if want_grad else None,
                                       logits if want_grad else None)
        if need_dh:
            torch.mm(logits, w, out=dh[start:stop])
        if need_dw:
            if widen:
                n = stop - start
                buffer_acc[:n].copy_(logits)
                h_acc[:n].copy_(hc)
                dw.addmm_(buffer_acc[:n].t(), h_acc[:n])
            else:
                dw.addmm_(logits.t(), hc)
        if need_db:
            db += logits.sum(dim=0, dtype=acc)
    return per_row, denominator, dh, dw, db


@torch.library.custom_op("crossent::linear_cross_entropy_chunked", mutates_args=())
def _linear_cross_entropy_chunked(
    h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, target: torch.Tensor,
    weight: torch.Tensor | None, grad_output: torch.Tensor | None, reduction: str,
    probability: bool, ignore_index: int, label_smoothing: float, z_loss: float,
    softcap: float | None, chunk: int, impl: str, need_dh: bool, need_dw: bool, need_db: bool,
    target_shape: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    params = CrossEntropyParams(probability=probability, ignore_index=ignore_index,
                                label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
    with torch.no_grad():
        return _chunked(h, w, b, target, weight, grad_output, reduction, params, chunk, impl,
                        need_dh, need_dw, need_db, target_shape)


@_linear_cross_entropy_chunked.register_fake
def _(h, w, b, target, weight, grad_output, reduction, probability, ignore_index,
      label_smoothing, z_loss, softcap, chunk, impl, need_dh, need_dw, need_db, target_shape):
    cd = compute_dtype(h.dtype, target.dtype if probability else h.dtype)
    acc = _accumulate_dtype(w.dtype)
    return (
        h.new_empty((h.shape[0],), dtype=cd),
        h.new_empty((), dtype=cd),
        torch.empty_like(h) if need_dh else h.new_empty((0,)),
        w.new_empty(w.shape, dtype=acc) if need_dw else w.new_empty((0,)),
        w.new_empty((w.shape[0],), dtype=acc) if need_db else w.new_empty((0,)),
    )


def _scaled(grad: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype,
            in_place: bool) -> torch.Tensor:
    if grad.numel() == 0:
        return None
    if in_place:
        grad.mul_(scale)
        return grad.to(dtype)
    return (grad * scale).to(dtype)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, b, target, weight, reduction, params, chunk, impl, target_shape,
                loss_dtype, need):
        p = params
        common = (reduction, p.probability, p.ignore_index, p.label_smoothing, p.z_loss,
                  p.softcap, chunk, impl)
        ctx.dtypes = (h.dtype, w.dtype, b.dtype if b is not None else None)
        ctx.reduction = reduction
        ctx.used = False
        if reduction == "none":
            # a per-element grad_output must be folded in before dW is summed: recompute later
            per_row, denominator, *_ = _linear_cross_entropy_chunked(
                h, w, b, target, weight, None, *common, False, False, False, target_shape)
            ctx.save_for_backward(h, w, b, target, weight)
            ctx.recompute = (common, need, target_shape)
        else:
            per_row, denominator, dh, dw, db = _linear_cross_entropy_chunked(
                h, w, b, target, weight, None, *common, *need, target_shape)
            ctx.save_for_backward(dh, dw, db)
            ctx.recompute = None
        return sem.reduce_loss(per_row, reduction, denominator).to(loss_dtype)

    @staticmethod
    def backward(ctx, grad_output):
        refuse_double_backward("linear_cross_entropy")
        h_dtype, w_dtype, b_dtype = ctx.dtypes
        if ctx.recompute is not None:
            h, w, b, target, weight = ctx.saved_tensors
            common, need, target_shape = ctx.recompute
            _, _, dh, dw, db = _linear_cross_entropy_chunked(
                h, w, b, target, weight, grad_output.reshape(-1), *common, *need,
                target_shape)
            grads = (dh if dh.numel() else None, dw.to(w_dtype) if dw.numel() else None,
                     db.to(b_dtype) if db.numel() else None)
            return (*grads,) + (None,) * 9
        compiling = torch.compiler.is_compiling()
        if ctx.used and not compiling:
            raise RuntimeError(
                "linear_cross_entropy scaled its kept gradients in place in the first "
                "backward; a second backward through the same graph (retain_graph=True) is "
                "only supported when the upstream gradient is exactly 1"
            )
        dh, dw, db = ctx.saved_tensors
        if (not compiling and grad_output.device.type == "cpu"
                and grad_output.item() == 1.0):
            # loss.backward(): the kept gradients are the answer, and stay reusable
            return (dh if dh.numel() else None, dw.to(w_dtype) if dw.numel() else None,
                    db.to(b_dtype) if db.numel() else None) + (None,) * 9
        in_place = not compiling
        ctx.used = in_place
        return (_scaled(dh, grad_output, h_dtype, in_place),
                _scaled(dw, grad_output, w_dtype, in_place),
                _scaled(db, grad_output, b_dtype, in_place)) + (None,) * 9


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
) -> torch.Tensor:
    r"""Cross-entropy of a linear layer's output, without materialising the logits.

    .. math:: \ell = \operatorname{CE}(h W^\top + b,\; y)

    Same as ``F.cross_entropy(F.linear(input, linear_weight, linear_bias), target, weight,
    ignore_index=..., reduction=..., label_smoothing=...)`` for 1-D and 2-D inputs, with the
    gradients of ``input``, ``linear_weight`` and ``linear_bias``; keyword-compatible with
    PyTorch 2.13's ``F.linear_cross_entropy`` (``ignore_index=None`` means -100; ``options``
    may carry ``batch_chunk_size``).  Inputs with more leading dimensions ``(B, T, D)`` are
    flattened to rows ``(B*T, D)`` with classes last, the language-model convention; their
    targets have shape ``(B, T)`` (or ``(B, T, V)`` probabilities).

    Args:
        input: ``(..., D)`` hidden states.
        linear_weight: ``(V, D)`` classifier weight.
        target: class indices ``(...)`` or probabilities ``(..., V)``.
        linear_bias: ``(V,)``.
        weight, reduction, ignore_index, label_smoothing, z_loss, softcap: as in
            :func:`crossent.torch.cross_entropy`.
        chunk_size: rows per chunk; None chooses it from :data:`CHUNK_BUDGET_BYTES`.
        options: a ``torch.nn.LinearCrossEntropyOptions`` (only ``batch_chunk_size`` is used).
        impl: the cross-entropy executor for each chunk (``"auto"``, ``"cpu"``, ``"torch"``,
            ``"triton"``).

    >>> import torch
    >>> h = torch.tensor([[1.0, 0.0], [0.0, 1.0]]); W = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    >>> round(linear_cross_entropy(h, W, torch.tensor([0, 1])).item(), 6)
    0.22009
    """
    input = _check_tensor(input, "input")
    linear_weight = _check_tensor(linear_weight, "linear_weight")
    target = _check_tensor(target, "target")
    for name, t in (("input", input), ("linear_weight", linear_weight)):
        if not t.is_floating_point():
            raise sem.LogitsTypeError(
                f"{name} must be a floating-point tensor, got dtype {_dtype_name(t)}")
    if input.ndim < 1:
        raise sem.ArgumentError("input must have shape (..., D), got a 0-d tensor")
    if linear_weight.ndim != 2:
        raise sem.ArgumentError(
            f"linear_weight must have shape (V, D), got shape {tuple(linear_weight.shape)} "
            "(K-dimensional class weights are not supported)"
        )
    vocab, features = linear_weight.shape
    if input.shape[-1] != features:
        raise sem.ArgumentError(
            f"input's last dimension must equal linear_weight's in_features D={features}, "
            f"got input of shape {tuple(input.shape)} and linear_weight of shape "
            f"{tuple(linear_weight.shape)}"
        )
    if input.dtype != linear_weight.dtype:
        raise sem.ArgumentTypeError(
            f"input and linear_weight must have the same dtype, got {input.dtype} and "
            f"{linear_weight.dtype}"
        )
    if vocab == 0:
        raise sem.EmptyClassesError("linear_weight has V=0 rows: at least one class needed")
    if linear_bias is not None:
        linear_bias = _check_tensor(linear_bias, "linear_bias")
        if tuple(linear_bias.shape) != (vocab,):
            raise sem.ArgumentError(
                f"linear_bias must have shape ({vocab},), got {tuple(linear_bias.shape)}")
        if linear_bias.dtype != input.dtype:
            raise sem.ArgumentTypeError(
                f"linear_bias must have the input's dtype {input.dtype}, got "
                f"{linear_bias.dtype}")
    lead = tuple(input.shape[:-1])
    probability = tuple(target.shape) == lead + (vocab,)
    if probability and ignore_index is not None and ignore_index >= 0:
        sem.check_probability_ignore_index(ignore_index)
    ignore_index = sem.check_ignore_index(-100 if ignore_index is None else ignore_index)
    reduction = sem.check_reduction(reduction)
    label_smoothing = sem.check_label_smoothing(label_smoothing)
    z_loss = sem.check_z_loss(z_loss)
    softcap = sem.check_softcap(softcap)
    if probability:
        if not target.is_floating_point():
            raise sem.ArgumentTypeError(
                f"target of shape {tuple(target.shape)} holds class probabilities and must "
                f"be floating point, got {target.dtype}")
        if target.requires_grad and torch.is_grad_enabled():
            raise RuntimeError("linear_cross_entropy does not differentiate with respect to "
                               "probability targets; pass target.detach()")
    else:
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise sem.ArgumentTypeError(
                f"target must hold integer class indices of shape {lead} (or probabilities "
                f"of shape {lead + (vocab,)}), got dtype {target.dtype}")
        if tuple(target.shape) != lead:
            raise sem.ArgumentError(
                f"target must have shape {lead} (class indices) or {lead + (vocab,)} "
                f"(probabilities) for input of shape {tuple(input.shape)}, got "
                f"{tuple(target.shape)}")
    if weight is not None:
        weight = _check_tensor(weight, "weight")
        if not weight.is_floating_point():
            raise sem.ArgumentTypeError(f"weight must be floating point, got {weight.dtype}")
        sem.check_class_weight(tuple(weight.shape), vocab)
        weight = weight.detach()
    for name, t in (("linear_weight", linear_weight), ("target", target),
                    ("linear_bias", linear_bias), ("weight", weight)):
        if t is not None and t.device != input.device:
            raise sem.ArgumentError(
                f"{name} must be on the input's device {input.device}, got {t.device}")
    if chunk_size is None and options is not None:
        chunk_size = getattr(options, "batch_chunk_size", None)
    rows = math.prod(lead)
    if chunk_size is None:
        chunk = choose_chunk_size(rows, vocab)
    else:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        chunk = min(chunk_size, max(rows, 1))
    impl = resolve_impl(impl, input.device, input.dtype)

    h = input.reshape(rows, features)
    if h.stride(-1) != 1:
        h = h.contiguous()
    w = linear_weight if linear_weight.stride(-1) == 1 else linear_weight.contiguous()
    rows_target = (target.reshape(rows, vocab) if probability else target.reshape(rows))
    params = CrossEntropyParams(probability=probability, ignore_index=ignore_index,
                                label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
    loss_dtype = torch.promote_types(input.dtype, target.dtype) if probability else input.dtype
    target_shape = list(lead) or [1]
    grad_on = torch.is_grad_enabled()
    need = (grad_on and input.requires_grad, grad_on and linear_weight.requires_grad,
            grad_on and linear_bias is not None and linear_bias.requires_grad)
    if any(need):
        loss = _LinearCrossEntropy.apply(h, w, linear_bias, rows_target, weight, reduction,
                                         params, chunk, impl, target_shape, loss_dtype, need)
    else:
        per_row, denominator, *_ = _linear_cross_entropy_chunked(
            h, w, linear_bias, rows_target, weight, None, reduction, probability,
            ignore_index, label_smoothing, z_loss, softcap, chunk, impl, False, False, False,
            target_shape)
        loss = sem.reduce_loss(per_row, reduction, denominator).to(loss_dtype)
    if reduction == "none":
        loss = loss.reshape(lead)
    return loss

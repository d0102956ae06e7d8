r"""``crossent.torch.cross_entropy``: a drop-in ``F.cross_entropy`` with a fused backward.

The loss and its gradient are computed in one pass in the forward; backward only scales the
kept gradient by ``grad_output``.  Layering (DESIGN.md example 3): executors
(:mod:`._rows`, :mod:`crossent._kernel`, :mod:`.triton`) -> custom ops (:mod:`._ops`) ->
:class:`_FusedCrossEntropy` (autograd) -> :func:`cross_entropy` -> ``nn.Module``
(:mod:`.modules`).  Every rule (shapes, reduction, denominators, smoothing, weights) comes
from :mod:`crossent._semantics`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from .. import _semantics as sem
from . import _contract as contract
from . import _ops
from ._impl import resolve_impl
from ._rows import probability_target_terms


@dataclass(frozen=True)
class _Call:
    """Everything about one call that is not a tensor (hashable, so compile can guard it)."""

    reduction: str
    probability: bool
    ignore_index: int
    label_smoothing: float
    z_loss: float
    softcap: float | None
    inplace: bool
    impl: str
    target_shape: tuple[int, ...]
    loss_dtype: torch.dtype

    def op_args(self) -> tuple:
        return (self.reduction, self.probability, self.ignore_index, self.label_smoothing,
                self.z_loss, self.softcap)


#: Executors that compute ``(N, C, S)`` logits with the classes on axis 1 (no copy).
_STRIDED_IMPLS = ("cpu", "torch")


def _run(logits, target, weight, call: _Call, want_grad: bool):
    """The custom op: ``(per-row losses, 'mean' denominator, gradient or empty)``."""
    if call.inplace:
        per_row, denominator = _ops.cross_entropy_fwd_inplace(
            logits, target, weight, *call.op_args(), call.impl, list(call.target_shape))
        return per_row, denominator, logits
    return _ops.cross_entropy_fwd(logits, target, weight, *call.op_args(), want_grad,
                                  call.impl, list(call.target_shape))


def _row_factor(scale: torch.Tensor, call: _Call, logits: torch.Tensor) -> torch.Tensor:
    """``d reduced loss / d loss_n`` for probability targets, broadcast against the logits'
    layout, from the upstream gradient."""
    if call.reduction == "none":
        return contract.rows_factor(scale, logits)
    if call.reduction == "mean":
        scale = scale / sem.mean_denominator_probability(logits.numel() // logits.shape[1])
    return scale.reshape(())


def _class_sum(t: torch.Tensor, per_row: bool) -> torch.Tensor:
    """Sum over the class axis (axis 1 of ``(M, C)`` and ``(N, C, S)``): per row in the
    flat ``(n, s)`` order, or the total."""
    return t.sum(1).reshape(-1) if per_row else t.sum()


def _non_class_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over every axis but the class axis: ``(C,)``."""
    return t.sum(0) if t.ndim == 2 else t.sum((0, 2))


class _FusedCrossEntropy(torch.autograd.Function):
    """Autograd for the fused pass.

    forward computes the loss and ``grad``, the gradient of the loss for an upstream
    gradient of 1 (per row for ``'none'``); it is returned as a second, non-differentiable
    output so that ``setup_context`` can keep it.  The first backward hands that tensor out
    (scaled in place by ``grad_output``): the gradient costs no second ``N x C`` tensor.
    From then on autograd (or the caller of ``torch.autograd.grad``) owns it and may change
    it, so a later backward over the same graph (``retain_graph=True``) recomputes the
    gradient from the saved logits instead.  Under ``torch.compile`` and ``torch.func``
    backward is pure: it returns ``grad * grad_output`` and keeps ``grad``.

    The subclass :class:`_FusedCrossEntropyJvp` adds forward-mode AD; this class is the one
    ``torch.compile`` traces (Dynamo does not trace a custom ``jvp``).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(logits, target, weight, call):
        per_row, denominator, grad = _run(logits, target, weight, call, want_grad=True)
        loss = sem.reduce_loss(per_row, call.reduction, denominator).to(call.loss_dtype)
        if call.inplace:  # the gradient lies in the logits: setup_context keeps them
            grad = logits.new_empty((0,))
        return loss, grad

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, target, weight, call = inputs
        _, grad = output
        ctx.mark_non_differentiable(grad)
        # no zero-filled N x C "gradient of the gradient" is made for backward
        ctx.set_materialize_grads(False)
        ctx.call = call
        # the gradient for upstream 1 (over the logits with inplace_backward); None once
        # handed out
        ctx.kept = logits if call.inplace else grad
        ctx.handed_out = False
        needs_terms = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        # the logits are saved to recompute the gradient for a backward after the first
        # (they are consumed in place with inplace_backward, where that is refused)
        keep_logits = not call.inplace and (needs_terms or not torch.compiler.is_compiling())
        ctx.save_for_backward(logits if keep_logits else None, target, weight)
        ctx.save_for_forward(logits if keep_logits else None, target, weight)  # for jvp

    @staticmethod
    def backward(ctx, grad_loss, _grad_of_grad):
        contract.refuse_double_backward("cross_entropy")
        if grad_loss is None:  # only the non-differentiable output was used
            return None, None, None, None
        call: _Call = ctx.call
        logits, target, weight = ctx.saved_tensors
        d_logits = d_target = d_weight = None
        if ctx.needs_input_grad[0]:
            d_logits = _FusedCrossEntropy._logits_gradient(ctx, logits, target, weight,
                                                           grad_loss)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            d_t, d_w = probability_target_terms(logits, target, weight, call.softcap,
                                                call.label_smoothing)
            factor = _row_factor(grad_loss.to(d_t.dtype), call, logits)
            if ctx.needs_input_grad[1]:
                d_target = (d_t * factor).to(target.dtype)
            if ctx.needs_input_grad[2]:
                d_weight = _non_class_sum(d_w * factor).to(weight.dtype)
        return d_logits, d_target, d_weight, None

    @staticmethod
    def _logits_gradient(ctx, logits, target, weight, grad_loss):
        call: _Call = ctx.call
        scale = contract.rows_factor(grad_loss, ctx.kept if ctx.kept is not None else logits)
        if contract.pure_backward():
            return contract.scaled(ctx.kept, scale)
        if call.inplace:
            if ctx.handed_out:
                # the first backward scaled the gradient where it lies (over the logits)
                raise RuntimeError(
                    "cross_entropy(..., inplace_backward=True) can be back-propagated once; "
                    "retain_graph=True and a second backward need inplace_backward=False"
                )
            ctx.handed_out = True
            return contract.scale_into(ctx.kept, scale)
        grad = ctx.kept
        if grad is None:  # handed out by an earlier backward: autograd owns it now
            _, _, grad = _run(logits, target, weight, call, want_grad=True)
        ctx.kept = None
        return contract.scale_into(grad, scale)


class _FusedCrossEntropyJvp(_FusedCrossEntropy):
    """:class:`_FusedCrossEntropy` with forward-mode AD (eager and ``torch.func``).

    The tangent of ``loss_n`` is ``grad_n . t_n`` (the kept gradient dotted with the logits'
    tangent, then reduced like the loss), plus, for probability targets, the target's and
    the class weight's terms.
    """

    @staticmethod
    def jvp(ctx, logits_t, target_t, weight_t, _call_t):
        call: _Call = ctx.call
        grad = ctx.kept
        if grad is None:
            raise RuntimeError("crossent.torch.cross_entropy: forward-mode AD after a "
                               "backward over the same graph is not supported")
        reduce_rows = call.reduction == "none"
        tangent = None
        if logits_t is not None:
            tangent = _class_sum(grad.to(logits_t.dtype) * logits_t, reduce_rows)
        if call.probability and (target_t is not None or weight_t is not None):
            logits, target, weight = ctx.saved_tensors
            d_t, d_w = probability_target_terms(logits, target, weight, call.softcap,
                                                call.label_smoothing)
            factor = _row_factor(torch.ones((), dtype=d_t.dtype, device=d_t.device), call,
                                 logits)
            extra = 0.0
            if target_t is not None:
                extra = extra + d_t * target_t
            if weight_t is not None:
                extra = extra + d_w * (weight_t.reshape(-1, 1) if logits.ndim == 3 else weight_t)
            extra = _class_sum(extra * factor, reduce_rows)
            tangent = extra if tangent is None else tangent + extra
        return tangent.to(call.loss_dtype), None


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    inplace_backward: bool = False,
    impl: str = "auto",
) -> torch.Tensor:
    r"""Softmax cross-entropy, a drop-in for ``torch.nn.functional.cross_entropy``.

    .. math:: \ell_n = -\sum_c a_{n,c} \log\operatorname{softmax}(z_n)_c
        + \text{z\_loss}\; w_n \operatorname{lse}(z_n)^2

    with ``a = (1-eps) w[y] onehot(y) + (eps/C) w`` for class indices and
    ``a = w ((1-eps) t + eps/C)`` for probabilities; ``z = softcap * tanh(x / softcap)``
    when ``softcap`` is set, else ``x``.  Same results, shapes and exception types as
    ``F.cross_entropy(input, target, weight, ignore_index=..., reduction=...,
    label_smoothing=...)``.

    Args:
        input: logits ``(N, C)``, ``(N, C, d1, ..., dK)`` or ``(C,)``, float16, bfloat16,
            float32 or float64.  ``(N, C, d1, ..., dK)`` is read where it lies (classes on
            dim 1), without a class-last copy, by the ``"cpu"`` and ``"torch"`` executors.
        target: class indices ``(N,)`` / ``(N, d1, ..., dK)`` / ``()`` (any integer dtype;
            a ``uint64`` index of ``2**63`` or more is out of range), or class probabilities
            of the input's shape (differentiable).
        weight: ``(C,)`` class weights.  With class indices it must have the input's dtype
            (as in PyTorch) and is not differentiated; with probabilities it may have any
            floating dtype, promotes the loss's dtype, and is differentiable.
        ignore_index: a class index whose elements add nothing to the loss, its gradient or
            the ``'mean'`` denominator (class-index targets only).
        reduction: ``'none'`` (the target's shape), ``'sum'``, or ``'mean'``: the sum divided
            by ``sum_n w[y_n]`` over non-ignored elements for class indices, by the number
            of elements ``N*d1*...*dK`` for probabilities.
        label_smoothing: ``eps`` in [0, 1]: the target mixes with the uniform distribution
            (PyTorch silently ignores a negative value; this raises ``ValueError``).
        z_loss: coefficient of the PaLM auxiliary loss ``w_n logsumexp(z_n)**2`` (keyword).
        softcap: Gemma-2 style logit soft-capping (keyword).
        inplace_backward: write the gradient into ``input``'s memory (its values are
            destroyed), so forward + backward need no second ``N x C`` tensor (keyword).
            A backward through the graph can then run only once, and memory that anything
            else needs is refused: a leaf that requires grad (or a view of one), rows that
            overlap, logits another autograd op saved.  ``(N, C, d1..dK)`` inputs are
            consumed where they lie (with ``impl="triton"`` a class-last copy is).
        impl: ``"auto"``, ``"cpu"``, ``"torch"`` or ``"triton"`` (keyword); see
            :mod:`crossent.torch._impl`.

    Returns:
        A 0-d tensor, or for ``reduction='none'`` the batch shape ``(N,)`` /
            ``(N, d1, ..., dK)`` / ``()``.  Its dtype is the input's (promoted with the target's
            and the weight's for probabilities), float32 under ``torch.autocast``, as PyTorch's.

    >>> import torch
    >>> x = torch.tensor([[2.0, 4.0, 0.5]], requires_grad=True)
    >>> loss = cross_entropy(x, torch.tensor([0]))
    >>> round(loss.item(), 6)
    2.153178
    >>> loss.backward(); [round(v, 6) for v in x.grad[0].tolist()]
    [-0.883885, 0.857977, 0.025909]
    """
    input = contract.check_tensor(input, "input")
    target = contract.check_tensor(target, "target")
    contract.check_float_dtype(input, "input")
    layout = sem.class_layout(tuple(input.shape))
    reduction = sem.check_reduction(reduction)
    label_smoothing = sem.check_label_smoothing(label_smoothing)
    ignore_index = sem.check_ignore_index(ignore_index)
    z_loss = sem.check_z_loss(z_loss)
    softcap = sem.check_softcap(softcap)
    if not isinstance(inplace_backward, bool):
        raise TypeError(f"inplace_backward must be a bool, got {inplace_backward!r}")
    grad_on = torch.is_grad_enabled()
    sem.check_target_batch(tuple(input.shape), tuple(target.shape))
    probability = sem.is_probability_target(tuple(input.shape), tuple(target.shape))
    autocast = contract.autocast_dtype(
        input.device, input.dtype, *((target.dtype,) if probability else ()))
    contract.check_target_dtype(target, probability, layout.batch_shape, layout.input_shape)
    if probability:
        sem.check_probability_ignore_index(ignore_index)
    else:
        sem.check_index_target_shape(layout, tuple(target.shape))
    if target.device != input.device:
        raise sem.ArgumentError(
            f"target must be on the input's device {input.device}, got {target.device}"
        )
    if weight is not None:
        weight = contract.check_tensor(weight, "weight")
        if not weight.is_floating_point():
            raise sem.ArgumentTypeError(
                f"weight must be a floating-point tensor, got dtype "
                f"{contract.dtype_name(weight)}"
            )
        sem.check_class_weight(tuple(weight.shape), layout.num_classes)
        if weight.device != input.device:
            raise sem.ArgumentError(
                f"weight must be on the input's device {input.device}, got {weight.device}"
            )
        contract.check_class_weight_dtype(weight, input.dtype, probability, autocast)
        if weight.requires_grad and grad_on and not probability:
            raise RuntimeError(
                "crossent.torch.cross_entropy is not differentiable with respect to weight "
                "for class-index targets (nor is F.cross_entropy); pass weight.detach()"
            )
    impl = resolve_impl(impl, input.device, input.dtype)
    contract.refuse_higher_order("cross_entropy", inplace_backward)
    needs_grad = contract.differentiating(input, target, weight)
    if inplace_backward and needs_grad:
        contract.check_consumable(input, "cross_entropy")
        if target.requires_grad or (weight is not None and weight.requires_grad):
            raise sem.ArgumentError(
                "crossent.torch.cross_entropy(..., inplace_backward=True) consumes the logits, "
                "which the gradients of probability targets and class weights need; pass "
                "inplace_backward=False"
            )

    classes = layout.num_classes
    if layout.spatial and impl in _STRIDED_IMPLS:
        # (N, C, d1..dK) as (N, C, S): the classes stay on axis 1, and the executor reads
        # them there, so neither the logits nor their gradient is copied (a reshape of a
        # contiguous input is a view)
        n = input.shape[0]
        spatial = layout.rows // n if n else math.prod(layout.batch_shape[1:])
        logits = input.reshape(n, classes, spatial)
        rows_target = target.reshape(n, classes, spatial) if probability else None
    elif layout.spatial:  # the Triton kernels read classes last: a class-last copy
        logits = input.movedim(1, -1).reshape(layout.rows, classes)
        rows_target = target.movedim(1, -1).reshape(layout.rows, classes) if probability \
            else None
    else:  # explicit row counts: an empty batch may have no classes either, (0, 0)
        logits = input.reshape(layout.rows, classes)
        rows_target = target.reshape(layout.rows, classes) if probability else None
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    if probability:
        rows_target = rows_target.to(contract.probability_target_dtype(target, weight))
        rows_target = rows_target.contiguous()
    else:
        rows_target = contract.index_target_as_int64(
            target.reshape(-1), classes, ignore_index, tuple(target.shape))
    loss_dtype = contract.loss_dtype(input.dtype, target, weight, probability, autocast)
    if autocast is not None and weight is not None:
        weight = weight.to(autocast)
    call = _Call(reduction, probability, ignore_index, label_smoothing, z_loss, softcap,
                 inplace_backward, impl, tuple(target.shape), loss_dtype)

    if needs_grad:
        function = _FusedCrossEntropy if torch.compiler.is_compiling() \
            else _FusedCrossEntropyJvp
        loss, _ = function.apply(logits, rows_target, weight, call)
    else:
        # nothing to differentiate: the loss alone, and the logits are never consumed
        per_row, denominator, _ = _run(logits, rows_target, weight,
                                       replace(call, inplace=False), want_grad=False)
        loss = sem.reduce_loss(per_row, reduction, denominator).to(loss_dtype)
    if reduction == "none":
        loss = loss.reshape(layout.batch_shape)
    return loss

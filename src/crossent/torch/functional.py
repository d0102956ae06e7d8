r"""``crossent.torch.cross_entropy``: a drop-in ``F.cross_entropy`` with a fused backward.

The loss and its gradient are computed in one pass in the forward; backward only scales the
kept gradient by ``grad_output``.  Layering (DESIGN.md example 3): executors
(:mod:`._rows`, :mod:`crossent._kernel`, :mod:`.triton`) -> custom ops (:mod:`._ops`) ->
:class:`_FusedCrossEntropy` (autograd) -> :func:`cross_entropy` -> ``nn.Module``
(:mod:`.modules`).  Every rule (shapes, reduction, denominators, smoothing, weights) comes
from :mod:`crossent._semantics`.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import _semantics as sem
from . import _ops
from ._impl import resolve_impl


def _check_tensor(value: Any, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def _loss_dtype(input: torch.Tensor, target: torch.Tensor, probability: bool) -> torch.dtype:
    return torch.promote_types(input.dtype, target.dtype) if probability else input.dtype


def refuse_double_backward(op: str) -> None:
    """The gradient was computed in the forward pass, so there is no graph to differentiate
    again: say so instead of returning a wrong second derivative."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"crossent.torch.{op} computes its gradient in the forward pass and does not "
            "support double backward (create_graph=True); use the plain PyTorch op for "
            "higher-order gradients"
        )


class _FusedCrossEntropy(torch.autograd.Function):
    """Autograd for the fused pass: forward keeps the gradient, backward scales it."""

    @staticmethod
    def forward(ctx, logits, target, weight, reduction, probability, ignore_index,
                label_smoothing, z_loss, softcap, inplace, impl, target_shape, loss_dtype):
        args = (target, weight, reduction, probability, ignore_index, label_smoothing, z_loss,
                softcap)
        if inplace:
            per_row, denominator = _ops.cross_entropy_fwd_inplace(
                logits, *args, impl, target_shape)
            grad = logits
        else:
            per_row, denominator, grad = _ops.cross_entropy_fwd(
                logits, *args, True, impl, target_shape)
        ctx.save_for_backward(grad)
        ctx.inplace = inplace
        ctx.used = False
        return sem.reduce_loss(per_row, reduction, denominator).to(loss_dtype)

    @staticmethod
    def backward(ctx, grad_output):
        refuse_double_backward("cross_entropy")
        if ctx.inplace and ctx.used and not torch.compiler.is_compiling():
            # the first backward scaled the gradient where it lies; a second would scale twice
            raise RuntimeError(
                "cross_entropy(..., inplace_backward=True) can be back-propagated once; "
                "retain_graph=True and a second backward need inplace_backward=False"
            )
        (grad,) = ctx.saved_tensors
        scale = grad_output.reshape(-1) if grad_output.ndim else grad_output
        if ctx.inplace:
            # the caller gave up the logits' memory: scale the gradient where it lies
            ctx.used = True
            _ops.scale_rows_(grad, scale)
            return (grad,) + (None,) * 12
        if (not torch.compiler.is_compiling() and grad.device.type == "cpu"
                and scale.ndim == 0 and scale.item() == 1.0):
            # loss.backward() on a 'mean'/'sum' loss: the kept gradient is already the answer
            return (grad,) + (None,) * 12
        factor = scale if scale.ndim == 0 else scale.reshape(-1, 1)
        return (grad * factor).to(grad.dtype), *((None,) * 12)


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
        input: logits ``(N, C)``, ``(N, C, d1, ..., dK)`` or ``(C,)``.
        target: class indices ``(N,)`` / ``(N, d1, ..., dK)`` / ``()`` (any integer dtype),
            or class probabilities of the input's shape.
        weight: ``(C,)`` class weights.
        ignore_index, reduction, label_smoothing: as in PyTorch (``label_smoothing`` must
            be in [0, 1]; PyTorch silently ignores a negative value, this raises).
        z_loss: coefficient of the PaLM auxiliary loss ``w_n logsumexp(z_n)**2`` (keyword).
        softcap: Gemma-2 style logit soft-capping (keyword).
        inplace_backward: write the gradient into ``input``'s memory (its values are
            destroyed), so forward + backward need no second ``N x C`` tensor (keyword).
            ``(N, C, d1..dK)`` inputs are first copied to class-last rows; that copy is
            what gets consumed, and a backward through the graph can run only once.
        impl: ``"auto"``, ``"cpu"``, ``"torch"`` or ``"triton"`` (keyword); see
            :mod:`crossent.torch._impl`.

    Returns:
        A 0-d tensor, or the target's shape for ``reduction='none'``.

    >>> import torch
    >>> x = torch.tensor([[2.0, 4.0, 0.5]], requires_grad=True)
    >>> loss = cross_entropy(x, torch.tensor([0]))
    >>> round(loss.item(), 6)
    2.153178
    >>> loss.backward(); [round(v, 6) for v in x.grad[0].tolist()]
    [-0.883885, 0.857977, 0.025909]
    """
    input = _check_tensor(input, "input")
    target = _check_tensor(target, "target")
    if not input.is_floating_point():
        raise sem.LogitsTypeError(
            f"input must be a floating-point tensor of logits, got dtype {_dtype_name(input)}"
        )
    layout = sem.class_layout(tuple(input.shape))
    reduction = sem.check_reduction(reduction)
    label_smoothing = sem.check_label_smoothing(label_smoothing)
    ignore_index = sem.check_ignore_index(ignore_index)
    z_loss = sem.check_z_loss(z_loss)
    softcap = sem.check_softcap(softcap)
    if not isinstance(inplace_backward, bool):
        raise TypeError(f"inplace_backward must be a bool, got {inplace_backward!r}")
    probability = sem.is_probability_target(tuple(input.shape), tuple(target.shape))
    if probability:
        if not target.is_floating_point():
            raise sem.ArgumentTypeError(
                "target has the input's shape, so it must hold class probabilities as "
                f"floats, got dtype {_dtype_name(target)}; class indices have shape "
                f"{layout.batch_shape}"
            )
        sem.check_probability_ignore_index(ignore_index)
        if target.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(
                "crossent.torch.cross_entropy does not differentiate with respect to "
                "probability targets; pass target.detach(), or use "
                "torch.nn.functional.cross_entropy to train the targets"
            )
    else:
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise sem.ArgumentTypeError(
                "target must hold integer class indices for this input (its shape differs "
                f"from the input's, so it is not a probability target), got dtype "
                f"{_dtype_name(target)}"
            )
        sem.check_index_target_shape(layout, tuple(target.shape))
    if target.device != input.device:
        raise sem.ArgumentError(
            f"target must be on the input's device {input.device}, got {target.device}"
        )
    if weight is not None:
        weight = _check_tensor(weight, "weight")
        if not weight.is_floating_point():
            raise sem.ArgumentTypeError(
                f"weight must be a floating-point tensor, got dtype {_dtype_name(weight)}"
            )
        sem.check_class_weight(tuple(weight.shape), layout.num_classes)
        if weight.device != input.device:
            raise sem.ArgumentError(
                f"weight must be on the input's device {input.device}, got {weight.device}"
            )
        weight = weight.detach()
    impl = resolve_impl(impl, input.device, input.dtype)

    classes = layout.num_classes
    if layout.spatial:  # (N, C, d1..dK) -> (N*d1*..*dK, C), classes last (a copy)
        logits = input.movedim(1, -1).reshape(-1, classes)
        rows_target = target.movedim(1, -1).reshape(-1, classes) if probability else None
    else:
        logits = input.reshape(-1, classes)
        rows_target = target.reshape(-1, classes) if probability else None
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    if probability:
        rows_target = rows_target.contiguous()
    else:
        rows_target = target.reshape(-1)
    target_shape = list(target.shape)
    loss_dtype = _loss_dtype(input, target, probability)

    if torch.is_grad_enabled() and input.requires_grad:
        loss = _FusedCrossEntropy.apply(
            logits, rows_target, weight, reduction, probability, ignore_index,
            label_smoothing, z_loss, softcap, inplace_backward, impl, target_shape, loss_dtype)
    else:
        per_row, denominator, _ = _ops.cross_entropy_fwd(
            logits, rows_target, weight, reduction, probability, ignore_index,
            label_smoothing, z_loss, softcap, False, impl, target_shape)
        loss = sem.reduce_loss(per_row, reduction, denominator).to(loss_dtype)
    if reduction == "none":
        loss = loss.reshape(layout.batch_shape)
    return loss

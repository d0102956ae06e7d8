"""Per-row executors of the fused cross-entropy pass on ``(M, C)`` logits.

Each executor has the same contract (the Triton one in :mod:`crossent.torch.triton` too)::

    rows(logits, target, params, weight, grad_scale, grad_out) -> per-row losses (M,)

* ``logits``: ``(M, C)``, classes last; ``target``: ``(M,)`` class indices (range-checked)
  or ``(M, C)`` probabilities; ``weight``: ``(C,)`` or None, in the compute dtype;
* ``grad_scale``: 0-d or ``(M,)`` tensor, ``d reduced loss / d loss_n``; ``grad_out``: the
  ``(M, C)`` buffer the gradient is written to (may be ``logits`` itself), or None.

The maths is the one of :mod:`crossent._semantics` (module docstring).  Ignored rows get loss
0 and gradient exactly 0; a class with coefficient 0 and logit ``-inf`` adds 0, not NaN.

:func:`check_targets_and_scale` is what every executor except ``"cpu"`` needs first: the
range check of class indices (:func:`check_class_indices`), the ``'mean'`` denominator
(:func:`mean_denominator`) and the gradient scale, all on the device (the NumPy API does the
same in NumPy, in ``crossent.functional``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .. import _semantics as sem
from .._kernel import build_row_targets, fused_softmax_cross_entropy
from .._semantics import out_of_range_message
from ._params import CrossEntropyParams

# Rows per block of the portable torch executor: ~2**19 logits keeps each block's
# temporaries in cache on CPUs and gives GPUs enough work per launch.
TORCH_BLOCK_ELEMENTS = 1 << 19


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def check_targets_and_scale(
    target: torch.Tensor, params: CrossEntropyParams, weight: torch.Tensor | None,
    num_classes: int, reduction: str, cd: torch.dtype, target_shape: tuple[int, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Range-check class indices; return ``(denominator, grad_scale)`` as device tensors."""
    if not params.probability:
        check_class_indices(target, num_classes, params.ignore_index, target_shape)
    denominator = mean_denominator(target, params, weight, cd)
    scale = sem.reduce_loss_grad(torch.ones((), dtype=cd, device=target.device), reduction,
                                 denominator)
    return denominator, scale


def check_class_indices(target: torch.Tensor, num_classes: int, ignore_index: int,
                        target_shape: tuple[int, ...]) -> None:
    """Every index is a class in ``[0, num_classes)`` or ``ignore_index``.

    On CPU a bad index raises ``IndexError`` naming its value and its position in
    ``target_shape`` (the shape the user passed).  On other devices, and while
    ``torch.compile`` traces (reading a value on the host would break the graph), the check
    is an asynchronous device assertion, as PyTorch's own CUDA kernels make.
    """
    bad = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
    if target.device.type == "cpu" and not torch.compiler.is_compiling():
        if bool(bad.any()):
            pos = np.unravel_index(int(bad.reshape(-1).nonzero()[0, 0]), target_shape)
            raise IndexError(out_of_range_message(int(target.reshape(target_shape)[pos]),
                                                  pos, num_classes, ignore_index))
    else:
        torch._assert_async(~bad.any(), "crossent: target class index out of range")


def mean_denominator(target: torch.Tensor, params: CrossEntropyParams,
                     weight: torch.Tensor | None, cd: torch.dtype) -> torch.Tensor:
    """The ``'mean'`` denominator (:mod:`crossent._semantics`' rules) as a 0-d tensor in
    ``cd`` on the target's device, without a host synchronisation.

    ``target``: range-checked class indices (any shape), or probabilities laid out as
    softmax rows, ``(M, C)`` or ``(N, C, S)`` (``N * S`` rows; a shard's ``(M, V_local)``
    slice counts its ``M`` rows).  ``weight``: the ``(C,)`` class weights or None.
    """
    if params.probability:
        rows = target.shape[0] * (target.shape[2] if target.ndim == 3 else 1)
        return torch.tensor(float(sem.mean_denominator_probability(rows)), dtype=cd,
                            device=target.device)
    _, w_y = sem.index_row_weights(target, params.ignore_index, weight)
    return sem.mean_denominator_index(w_y.to(cd))


def _numpy_view(t: torch.Tensor) -> tuple[np.ndarray, bool]:
    """A NumPy view of a CPU tensor's memory; bfloat16 is viewed as its raw uint16 bits."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16), True
    return t.numpy(), False


def cross_entropy_rows_cpu(
    logits: torch.Tensor, target: torch.Tensor, params: CrossEntropyParams,
    weight: torch.Tensor | None, grad_scale: torch.Tensor | None,
    grad_out: torch.Tensor | None,
) -> torch.Tensor:
    """The NumPy executor (:mod:`crossent._kernel`) on CPU tensors' memory, without copies."""
    x, bf16 = _numpy_view(logits)
    cd_torch = compute_dtype(logits.dtype, target.dtype if params.probability else logits.dtype)
    cd = np.dtype(np.float64 if cd_torch == torch.float64 else np.float32)
    if params.probability:
        t = target.detach()
        t_np = (t.float() if t.dtype in (torch.bfloat16, torch.float16) else t).numpy()
    else:
        t_np = target.detach().numpy().astype(np.int64, copy=False)
    w = weight.detach().numpy().astype(cd) if weight is not None else None
    targets, _ = build_row_targets(
        t_np, probability=params.probability, weight=w, ignore_index=params.ignore_index,
        label_smoothing=params.label_smoothing, z_loss=params.z_loss,
        num_classes=logits.shape[1], compute_dtype=cd)
    scale = 0.0 if grad_scale is None else grad_scale.detach().to(cd_torch).numpy()
    per_row = fused_softmax_cross_entropy(
        x, targets, scale, cd, softcap=params.softcap,
        grad_out=_numpy_view(grad_out)[0] if grad_out is not None else None, bfloat16=bf16)
    return torch.from_numpy(per_row)


def rows_executor(impl: str) -> Callable[..., torch.Tensor]:
    """The per-row executor behind a resolved ``impl`` name."""
    if impl == "cpu":
        return cross_entropy_rows_cpu
    if impl == "triton":
        from .triton.cross_entropy import cross_entropy_fwd

        return cross_entropy_fwd
    return cross_entropy_rows_torch


def cross_entropy_rows_torch(
    logits: torch.Tensor, target: torch.Tensor, params: CrossEntropyParams,
    weight: torch.Tensor | None, grad_scale: torch.Tensor, grad_out: torch.Tensor | None,
) -> torch.Tensor:
    """The portable executor: :func:`block_loss_and_grad` over blocks that fit in cache.

    ``logits`` are ``(M, C)`` rows or ``(N, C, S)`` with the classes on axis 1 (a
    K-dimensional input, never copied to class-last rows): blocks are then whole ``n``
    slabs, and every per-row vector is read in ``(n, s)`` order.
    """
    cd = compute_dtype(logits.dtype, target.dtype if params.probability else logits.dtype)
    batches, classes = logits.shape[:2]
    spatial = logits.shape[2] if logits.ndim == 3 else 1
    losses = torch.empty(batches * spatial, dtype=cd, device=logits.device)
    w = weight.to(cd) if weight is not None else None
    scale_all = grad_scale.to(cd) if grad_out is not None else None
    per_row_shape = (-1, spatial) if logits.ndim == 3 else (-1,)
    block = max(1, TORCH_BLOCK_ELEMENTS // max(classes * spatial, 1))
    for s in range(0, batches, block):
        e = min(s + block, batches)
        r0, r1 = s * spatial, e * spatial
        rows_target = target[s:e] if params.probability else \
            target[r0:r1].reshape(per_row_shape)
        scale = None
        if scale_all is not None:
            scale = scale_all[r0:r1].reshape(per_row_shape) if scale_all.ndim else scale_all
        loss, g = block_loss_and_grad(logits[s:e], rows_target, params, w, scale)
        losses[r0:r1] = loss.reshape(-1)
        if g is not None:
            grad_out[s:e].copy_(g)
    return losses


def block_loss_and_grad(
    logits: torch.Tensor, target: torch.Tensor, params: CrossEntropyParams,
    weight: torch.Tensor | None, scale: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-row losses and, when ``scale`` is given, ``scale * d loss_n / d logits``, for one
    block, in out-of-place torch operations only (so ``torch.func`` transforms can run it:
    forward-mode AD of ``linear_cross_entropy`` uses it directly).

    The classes are on axis 1 of ``logits``: ``(m, C)`` rows, whose per-row vectors have
    shape ``(m,)``, or ``(n, C, S)``, whose per-row vectors have shape ``(n, S)``.
    ``target``: range-checked class indices (per-row shape) or probabilities (the logits'
    shape); ``weight`` in the compute dtype; ``scale``: 0-d or per-row.
    """
    classes = logits.shape[1]
    cd = compute_dtype(logits.dtype, target.dtype if params.probability else logits.dtype)
    eps = params.label_smoothing
    # a (C,) vector along the class axis, broadcast against the block
    along = (lambda v: v.reshape(-1, 1)) if logits.ndim == 3 else (lambda v: v)
    x = logits.to(cd)
    if params.softcap is not None:
        th = torch.tanh(x / params.softcap)
        z = th * params.softcap
    else:
        th, z = None, x
    m = z.amax(dim=1, keepdim=True)
    shifted = z - m
    if params.probability:
        coef = sem.smoothed_probabilities(target.to(cd), eps, classes)
        if weight is not None:
            coef = coef * along(weight)
        coef_sum = coef.sum(dim=1)
        # 0 * log 0 = 0: classes the target does not weigh add nothing, even at -inf
        dot = torch.where(coef != 0, coef * shifted, 0.0).sum(dim=1)
        z_weight = params.z_loss
    else:
        valid_b, w_y = sem.index_row_weights(target, params.ignore_index, weight)
        w_y = w_y.to(cd)
        valid = valid_b.to(cd)
        y = torch.where(valid_b, target, torch.zeros_like(target)).unsqueeze(1)
        weight_sum = classes if weight is None else weight.sum()
        coef_sum = sem.index_coefficient_sum(w_y, valid, eps, classes, weight_sum)
        on_target, uniform = sem.smoothing_terms(eps, classes)
        on_t = w_y * on_target
        dot = torch.where(valid_b, on_t * shifted.gather(1, y).squeeze(1), 0.0)
        if eps:
            uniform_vec = along((weight * uniform) if weight is not None else torch.full(
                (classes,), uniform, dtype=cd, device=x.device))
            dot = dot + valid * torch.where(uniform_vec != 0, shifted * uniform_vec,
                                            0.0).sum(dim=1)
        z_weight = w_y * params.z_loss
    ex = torch.exp(shifted)
    sum_exp = ex.sum(dim=1)
    log_sum = torch.log(sum_exp)
    loss = coef_sum * log_sum - dot
    p_factor = coef_sum
    if params.z_loss:
        lse = m.squeeze(1) + log_sum
        loss = loss + z_weight * lse * lse
        p_factor = coef_sum + 2.0 * z_weight * lse
    if not params.probability:
        loss = torch.where(valid_b, loss, 0.0)  # ignored rows cost 0, whatever the logits
    if scale is None:
        return loss, None
    g = ex * (scale * p_factor / sum_exp).unsqueeze(1)
    if params.probability:
        g = g - coef * (scale.unsqueeze(1) if scale.ndim else scale)
    else:
        g = g - torch.zeros_like(g).scatter(1, y, (on_t * scale).unsqueeze(1).expand_as(y))
        if eps:
            g = g - (valid * scale).unsqueeze(1) * uniform_vec
    if th is not None:
        g = g * (1.0 - th * th)
    if not params.probability:
        g = torch.where(valid_b.unsqueeze(1), g, 0.0)
    return loss, g


def probability_target_terms(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
    softcap: float | None, label_smoothing: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``d loss_n / d t`` and ``d loss_n / d w`` per row, for probability targets, in the
    logits' layout (``(m, C)`` or ``(n, C, S)``, classes on axis 1).

    ``loss_n = -sum_c w_c t'_c log p_c`` with ``t' = (1 - eps) t + eps / C``, so
    ``d/dt_c = -(1 - eps) w_c log p_c`` and ``d/dw_c = -t'_c log p_c``; the ``'mean'``
    denominator (the element count) and z-loss (weight 1) depend on neither.  A class with
    ``t'_c = 0`` (or ``w_c = 0``) on a ``-inf`` logit adds 0, not NaN.  Plain torch
    operations, used only when a probability target or a class weight requires grad.
    """
    x = logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    log_p = torch.log_softmax(x, dim=1)  # classes on axis 1: (m, C) or (n, C, S)
    classes = logits.shape[1]
    t = sem.smoothed_probabilities(target.to(log_p.dtype), label_smoothing, classes)
    w = weight.to(log_p.dtype) if weight is not None else None
    if w is not None and logits.ndim == 3:
        w = w.reshape(-1, 1)
    d_weight = -torch.where(t != 0, t * log_p, 0.0)
    on_target, _ = sem.smoothing_terms(label_smoothing, classes)
    d_target = -on_target * (log_p if w is None else torch.where(w != 0, w * log_p, 0.0))
    return d_target, d_weight

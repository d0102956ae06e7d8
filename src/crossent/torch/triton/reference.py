"""Plain-PyTorch reference of the per-row maths the Triton kernels compute.

:func:`cross_entropy_rows_ref` is the definition the kernels are tested against: no fusion,
no online softmax, no tricks, just ``log_softmax`` and autograd, by default in float64.
With ``dtype=`` set to the input's dtype it is "plain torch in the same precision", the
yardstick of the tolerance rule ``|ours - fp64| <= k |torch_same_dtype - fp64| + eps``.
"""

from __future__ import annotations

import torch

from crossent.torch._params import CrossEntropyParams

__all__ = ["cross_entropy_rows_ref", "target_coefficients_ref"]


def target_coefficients_ref(
    target: torch.Tensor,  # (M,) int64 or (M, C) float
    params: CrossEntropyParams,
    weight: torch.Tensor | None,  # (C,)
    num_classes: int,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(a, w_n, valid)``: coefficients ``(M, C)``, z-loss row weights ``(M,)`` and the
    not-ignored mask ``(M,)``, by the formulas of :mod:`crossent._semantics`::

        index y:        a = (1 - eps) w[y] onehot(y) + (eps / C) w   (0 if y is ignored)
        probability t:  a = w ((1 - eps) t + eps / C)
        w_n = w[y] (index, 0 if ignored) or 1 (probability)
    """
    eps = float(params.label_smoothing)
    w = (
        weight.to(dtype)
        if weight is not None
        else torch.ones(num_classes, dtype=dtype, device=target.device)
    )
    if params.probability:
        t = target.to(dtype)
        a = w * ((1.0 - eps) * t + eps / num_classes)
        rows = t.shape[0]
        valid = torch.ones(rows, dtype=torch.bool, device=t.device)
        return a, torch.ones(rows, dtype=dtype, device=t.device), valid
    valid = target != params.ignore_index
    y = torch.where(valid, target, torch.zeros_like(target))
    w_y = w[y] * valid
    onehot = torch.nn.functional.one_hot(y, num_classes).to(dtype)
    a = (1.0 - eps) * w_y[:, None] * onehot + (eps / num_classes) * w[None, :] * valid[:, None]
    return a, w_y, valid


def cross_entropy_rows_ref(
    logits: torch.Tensor,  # (M, C)
    target: torch.Tensor,  # (M,) int64 or (M, C) float probabilities
    params: CrossEntropyParams,
    weight: torch.Tensor | None = None,  # (C,)
    grad_scale: torch.Tensor | None = None,  # 0-d or (M,)
    *,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Per-row losses ``(M,)`` and, with ``grad_scale``, the gradient ``(M, C)``.

    .. math::
        \ell_n = -\sum_{c:\,a_{nc} \ne 0} a_{nc} \log\mathrm{softmax}(z_n)_c
                 + \lambda_z w_n \,\mathrm{lse}(z_n)^2,
        \qquad z = s \tanh(x / s) \text{ (softcap) or } x

    computed in ``dtype`` (float64 by default) with ``torch.log_softmax`` and the gradient by
    autograd of ``sum_n grad_scale_n * loss_n``.  It agrees with
    ``F.cross_entropy(z, target, weight, ignore_index=..., reduction="none",
    label_smoothing=...)`` (tested), except for the two rules of crossent's contract:

    * ``0 log 0 = 0``: a class with ``a_c = 0`` and logit ``-inf`` adds 0 (PyTorch: NaN for
      probability targets);
    * ignored rows have loss 0 and gradient exactly 0 even when their logits are inf/NaN
      (their logits are replaced by zeros before anything is computed; PyTorch: NaN grad).

    Returns the losses in ``dtype`` (the caller compares in float64) and the gradient in
    ``dtype``, or None without ``grad_scale``.
    """
    num_classes = logits.shape[1]
    x = logits.detach().to(dtype)
    a, w_n, valid = target_coefficients_ref(target, params, weight, num_classes, dtype)
    x = torch.where(valid[:, None], x, torch.zeros_like(x))
    x.requires_grad_(grad_scale is not None)
    with torch.enable_grad():
        if params.softcap is not None:
            z = params.softcap * torch.tanh(x / params.softcap)
        else:
            z = x
        logp = torch.log_softmax(z, dim=1)
        terms = torch.where(a != 0, a * logp, torch.zeros_like(logp))
        loss = -terms.sum(dim=1)
        if params.z_loss:
            lse = torch.logsumexp(z, dim=1)
            loss = loss + params.z_loss * w_n * lse * lse
        loss = torch.where(valid, loss, torch.zeros_like(loss))
        grad = None
        if grad_scale is not None:
            scale = grad_scale.to(dtype)
            (grad,) = torch.autograd.grad((loss * scale).sum(), x)
            grad = torch.where(valid[:, None], grad, torch.zeros_like(grad))
    return loss.detach(), grad

"""Thin ``nn.Module`` wrappers: they hold options and call the functions, no maths."""

from __future__ import annotations

import torch
from torch import nn

from .. import _semantics as sem
from ._linear_blocked import check_block_size, check_schedule
from .functional import cross_entropy
from .linear import linear_cross_entropy


class CrossEntropyLoss(nn.Module):
    r"""Drop-in for ``torch.nn.CrossEntropyLoss`` backed by :func:`crossent.torch.cross_entropy`.

    .. math:: \ell_n = -\sum_c a_{n,c} \log\operatorname{softmax}(x_n)_c
        + \text{z\_loss}\; w_n \operatorname{lse}(x_n)^2

    with ``a = (1-eps) w[y] onehot(y) + (eps/C) w`` for class indices and
    ``a = w ((1-eps) t + eps/C)`` for probabilities (see :func:`crossent.torch.cross_entropy`,
    which ``forward`` calls with the options stored here; the module holds no maths).  Same
    constructor arguments as ``torch.nn.CrossEntropyLoss`` (``weight`` is a buffer, so it
    follows ``.to(device)``), and the keyword-only extras ``z_loss``, ``softcap``,
    ``inplace_backward`` and ``impl``.  Options are checked when the module is built, so a
    bad one fails at construction.

    Shapes, as ``torch.nn.CrossEntropyLoss``:

    * input: ``(N, C)``, ``(C,)`` or ``(N, C, d1, ..., dK)`` logits;
    * target: class indices ``(N,)``, ``()`` or ``(N, d1, ..., dK)``, or probabilities of
      the input's shape;
    * output: a 0-d tensor, or the batch shape ``(N,)`` / ``(N, d1, ..., dK)`` for
      ``reduction='none'``.

    >>> import torch
    >>> loss_fn = CrossEntropyLoss(label_smoothing=0.1)
    >>> x, y = torch.tensor([[2.0, 4.0, 0.5]]), torch.tensor([1])
    >>> round(loss_fn(x, y).item(), 6)
    0.336512
    >>> round(torch.nn.CrossEntropyLoss(label_smoothing=0.1)(x, y).item(), 6)  # the same
    0.336512
    >>> per_pixel = CrossEntropyLoss(reduction="none")  # (N, C, d1) -> (N, d1)
    >>> per_pixel(torch.tensor([[[2.0, 0.0], [4.0, 0.0], [0.5, 0.0]]]), torch.tensor([[1, 2]]))
    tensor([[0.1532, 1.0986]])
    """

    def __init__(self, weight: torch.Tensor | None = None, ignore_index: int = -100,
                 reduction: str = "mean", label_smoothing: float = 0.0, *,
                 z_loss: float = 0.0, softcap: float | None = None,
                 inplace_backward: bool = False, impl: str = "auto") -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.ignore_index = sem.check_ignore_index(ignore_index)
        self.reduction = sem.check_reduction(reduction)
        self.label_smoothing = sem.check_label_smoothing(label_smoothing)
        self.z_loss = sem.check_z_loss(z_loss)
        self.softcap = sem.check_softcap(softcap)
        self.inplace_backward = inplace_backward
        self.impl = impl

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(
            input, target, self.weight, self.ignore_index, self.reduction,
            self.label_smoothing, z_loss=self.z_loss, softcap=self.softcap,
            inplace_backward=self.inplace_backward, impl=self.impl,
        )

    def extra_repr(self) -> str:
        extras = [f"ignore_index={self.ignore_index}", f"reduction={self.reduction!r}"]
        if self.label_smoothing:
            extras.append(f"label_smoothing={self.label_smoothing}")
        if self.z_loss:
            extras.append(f"z_loss={self.z_loss}")
        if self.softcap is not None:
            extras.append(f"softcap={self.softcap}")
        if self.inplace_backward:
            extras.append("inplace_backward=True")
        if self.impl != "auto":
            extras.append(f"impl={self.impl!r}")
        return ", ".join(extras)


class LinearCrossEntropyLoss(nn.Module):
    r"""Loss module for :func:`crossent.torch.linear_cross_entropy`: call it with hidden states,
    the classifier weight and targets, ``loss_fn(h, W, y, linear_bias=b)``.

    .. math:: \ell = \operatorname{CE}(h W^\top + b,\; y)

    computed chunk by chunk, without the ``(N, V)`` logits; the same loss and gradients as
    ``torch.nn.CrossEntropyLoss(...)(F.linear(h, W, b), y)``.  Takes the loss options of
    ``torch.nn.LinearCrossEntropyLoss`` (``weight``, ``reduction``, ``ignore_index``,
    ``label_smoothing``, ``options``) and crossent's keyword-only extras (``z_loss``,
    ``softcap``, ``chunk_size``, ``impl``, ``loss_dtype``).  Unlike PyTorch's module, which
    owns its ``Linear`` layer, it holds no parameters: the head's weight (a model's
    ``lm_head.weight``, tied or not) is passed at each call.

    Shapes, as :func:`crossent.torch.linear_cross_entropy` takes them:

    * input ``h``: ``(N, D)`` or ``(B, T, D)`` hidden states (``(N, D)`` with a
      K-dimensional head);
    * linear_weight ``W``: ``(V, D)``, or ``(C, d1, ..., dK, D)``; linear_bias ``b``:
      ``(V,)`` or ``(C, d1, ..., dK)``;
    * target: class indices ``(N,)`` / ``(B, T)`` / ``(N, d1, ..., dK)``, or probabilities
      with the classes added (``(N, V)``, ``(B, T, V)``, ``(N, C, d1, ..., dK)``);
    * output: a 0-d tensor, or the target's batch shape for ``reduction='none'``.

    >>> import torch
    >>> import torch.nn.functional as F
    >>> h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # (N, D)
    >>> W = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.5, 0.5]])  # (V, D)
    >>> y = torch.tensor([0, 1, 2])
    >>> loss_fn = LinearCrossEntropyLoss(label_smoothing=0.1)
    >>> round(loss_fn(h, W, y).item(), 6)
    0.890468
    >>> round(F.cross_entropy(h @ W.T, y, label_smoothing=0.1).item(), 6)  # the same
    0.890468
    """

    def __init__(self, weight: torch.Tensor | None = None, reduction: str = "mean",
                 ignore_index: int | None = -100, label_smoothing: float = 0.0, *,
                 z_loss: float = 0.0, softcap: float | None = None,
                 chunk_size: int | None = None, options: object = None,
                 impl: str = "auto", schedule: str = "auto",
                 vocab_block_size: int | None = None,
                 loss_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.reduction = sem.check_reduction(reduction)
        self.ignore_index = ignore_index
        self.label_smoothing = sem.check_label_smoothing(label_smoothing)
        self.z_loss = sem.check_z_loss(z_loss)
        self.softcap = sem.check_softcap(softcap)
        self.chunk_size = chunk_size
        self.options = options
        self.impl = impl
        self.schedule = check_schedule(schedule)
        self.vocab_block_size = check_block_size(vocab_block_size)
        self.loss_dtype = loss_dtype

    def forward(self, input: torch.Tensor, linear_weight: torch.Tensor, target: torch.Tensor,
                linear_bias: torch.Tensor | None = None) -> torch.Tensor:
        return linear_cross_entropy(
            input, linear_weight, target, linear_bias=linear_bias, weight=self.weight,
            reduction=self.reduction, ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing, z_loss=self.z_loss, softcap=self.softcap,
            chunk_size=self.chunk_size, options=self.options, impl=self.impl,
            schedule=self.schedule, vocab_block_size=self.vocab_block_size,
            loss_dtype=self.loss_dtype,
        )

"""Thin ``nn.Module`` wrappers: they hold options and call the functions, no maths."""

from __future__ import annotations

import torch
from torch import nn

from .. import _semantics as sem
from ._linear_blocked import check_block_size, check_schedule
from .functional import cross_entropy
from .linear import linear_cross_entropy


class CrossEntropyLoss(nn.Module):
    """Drop-in for ``torch.nn.CrossEntropyLoss`` backed by :func:`crossent.torch.cross_entropy`.

    Options are checked when the module is built, so a bad one fails at construction.

    >>> import torch
    >>> loss_fn = CrossEntropyLoss(label_smoothing=0.1)
    >>> round(loss_fn(torch.tensor([[2.0, 4.0, 0.5]]), torch.tensor([1])).item(), 6)
    0.253178
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
    """Loss module for :func:`crossent.torch.linear_cross_entropy`: call it with hidden states,
    the classifier weight and targets, ``loss_fn(h, W, y, linear_bias=b)``.

    Mirrors ``torch.nn.LinearCrossEntropyLoss``'s options; holds no parameters itself.
    """

    def __init__(self, weight: torch.Tensor | None = None, reduction: str = "mean",
                 ignore_index: int | None = -100, label_smoothing: float = 0.0, *,
                 z_loss: float = 0.0, softcap: float | None = None,
                 chunk_size: int | None = None, options: object = None,
                 impl: str = "auto", schedule: str = "auto",
                 vocab_block_size: int | None = None) -> None:
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

    def forward(self, input: torch.Tensor, linear_weight: torch.Tensor, target: torch.Tensor,
                linear_bias: torch.Tensor | None = None) -> torch.Tensor:
        return linear_cross_entropy(
            input, linear_weight, target, linear_bias=linear_bias, weight=self.weight,
            reduction=self.reduction, ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing, z_loss=self.z_loss, softcap=self.softcap,
            chunk_size=self.chunk_size, options=self.options, impl=self.impl,
            schedule=self.schedule, vocab_block_size=self.vocab_block_size,
        )

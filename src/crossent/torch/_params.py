"""Options of one cross-entropy call, travelling together as one frozen value.

Every executor (the NumPy pass on CPU, the portable torch pass, the Triton kernels) receives
the same :class:`CrossEntropyParams`, already validated by :mod:`crossent._semantics`.

A ``torch.library`` custom op takes only tensors and plain scalars, so the ops receive the
options flattened by :meth:`CrossEntropyParams.op_args` and rebuild them with the
constructor, whose positional order is that of the fields:
``CrossEntropyParams(*params.op_args()) == params``.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass


@dataclass(frozen=True)
class CrossEntropyParams:
    """What a per-row executor needs to know besides the tensors.

    probability:      targets are (M, C) class probabilities (else (M,) class indices)
    ignore_index:     class index whose rows add nothing (index targets only)
    label_smoothing:  eps in [0, 1]
    z_loss:           coefficient of the per-row ``w_n * logsumexp**2`` term (0: off)
    softcap:          logits become ``softcap * tanh(x / softcap)`` first (None: off)
    """

    probability: bool = False
    ignore_index: int = -100
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    softcap: float | None = None

    def op_args(self) -> tuple[bool, int, float, float, float | None]:
        """The fields in order, as a custom op's scalar arguments take them."""
        return astuple(self)

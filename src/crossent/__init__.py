"""crossent: cross-entropy loss with PyTorch's exact numbers, fast, from NumPy to GPUs.

The NumPy API lives here and needs only NumPy.  The PyTorch drop-ins are in
:mod:`crossent.torch`, information quantities in :mod:`crossent.info`; the classifier and the
plots load scikit-learn and matplotlib only when used.
"""

from __future__ import annotations

from typing import Any

from . import info
from .functional import (
    binary_cross_entropy,
    binary_cross_entropy_with_grad,
    binary_cross_entropy_with_logits,
    binary_cross_entropy_with_logits_with_grad,
    cross_entropy,
    cross_entropy_with_grad,
    kl_div,
    kl_div_with_grad,
    log_softmax,
    logsumexp,
    nll_loss,
    nll_loss_with_grad,
    softmax,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "info",
    "softmax",
    "log_softmax",
    "logsumexp",
    "cross_entropy",
    "cross_entropy_with_grad",
    "nll_loss",
    "nll_loss_with_grad",
    "binary_cross_entropy",
    "binary_cross_entropy_with_grad",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_with_grad",
    "kl_div",
    "kl_div_with_grad",
]

_LAZY = {"SoftmaxRegression": "crossent.classifier"}


def __getattr__(name: str) -> Any:
    """Heavy parts (scikit-learn) load on first use, so ``import crossent`` needs only NumPy."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'crossent' has no attribute {name!r}")

"""crossent for PyTorch: drop-ins for ``F.cross_entropy`` and ``F.linear_cross_entropy``.

``import crossent.torch`` needs PyTorch (``pip install "crossent[torch]"``); Triton kernels
are used for CUDA tensors when triton is installed.
"""

from __future__ import annotations

try:
    import torch as _torch  # noqa: F401  (only to fail here, with the extra to install)
except ImportError as _exc:
    from .._optional import missing as _missing

    raise _missing(_exc, "crossent.torch", "torch") from _exc

from .functional import cross_entropy
from .linear import linear_cross_entropy, linear_cross_entropy_memory
from .modules import CrossEntropyLoss, LinearCrossEntropyLoss
from .reference import cross_entropy_ref, linear_cross_entropy_ref

__all__ = [
    "cross_entropy",
    "CrossEntropyLoss",
    "linear_cross_entropy",
    "linear_cross_entropy_memory",
    "LinearCrossEntropyLoss",
    "cross_entropy_ref",
    "linear_cross_entropy_ref",
]

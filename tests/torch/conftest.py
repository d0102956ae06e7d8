"""Fixtures of the torch tests: the low-precision tolerance rule of DESIGN.md (example 7).

``max |ours - fp64| <= k * max |torch_same_dtype - fp64| + eps``: a half-precision result may be
as wrong as PyTorch's own result in that dtype (times ``k``), never more.  The worst error is
compared rather than each element's, because rounding to the nearest half-precision number
is a coin toss per element: we and PyTorch may round one element in opposite directions.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def assert_within_torch_error(ours, same_dtype, reference, k: float = 2.0, eps: float = 1e-6,
                              what: str = "value") -> None:
    ours64, torch64, ref = ours.double(), same_dtype.double(), reference.double()
    if ours64.numel() == 0:
        return
    our_err = (ours64 - ref).abs().max().item()
    torch_err = (torch64 - ref).abs().max().item()
    assert our_err <= k * torch_err + eps, (
        f"{what}: crossent's worst error {our_err:.3g} exceeds {k} x PyTorch's same-dtype "
        f"worst error {torch_err:.3g} + {eps}"
    )


@pytest.fixture
def within_torch_error():
    """The tolerance rule as a callable: ``within_torch_error(ours, torch_same, fp64)``."""
    return assert_within_torch_error

"""The device the Triton tests run on, in one home (``tests/support`` is on pytest's path).

With a GPU the kernels are compiled and run on it; without one they run in Triton's
interpreter on CPU tensors.  Triton fixes that choice when it is first imported, so
``tests/conftest.py`` sets ``TRITON_INTERPRET=1`` before any test module loads; a module that
still finds the interpreter off (run alone after something imported triton) is skipped with
the reason.
"""

from __future__ import annotations

import pytest


def triton_device():
    """``torch.device`` the kernels run on; skips the calling module when they cannot run."""
    pytest.importorskip("triton", reason="triton is not installed")
    import torch

    from crossent.torch.triton import is_available

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not is_available(device):
        pytest.skip("triton was imported before TRITON_INTERPRET=1 could be set; run with "
                    "TRITON_INTERPRET=1 in the environment", allow_module_level=True)
    return device

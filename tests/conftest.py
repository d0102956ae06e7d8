"""Shared test settings: fixed seeds, one hypothesis profile for the whole suite, and
Triton's interpreter on machines without a GPU.

* ``rng`` gives every test its own NumPy generator seeded from the test's name, so a failure
  reproduces exactly and tests do not share random state.
* Hypothesis runs without a deadline (the first call of a NumPy ufunc or a torch op can take
  longer than any sensible deadline) and with a modest number of examples, so the suite stays
  fast on a 2-core machine.  ``HYPOTHESIS_PROFILE=thorough`` runs ten times as many.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, settings


def _interpret_triton_without_a_gpu() -> None:
    """Triton chooses between compiling and interpreting when it is first imported, and many
    test modules import it indirectly (transformers, torch.compile, torch.testing's OpInfo
    database): without a GPU the Triton tests need the interpreter, so it is chosen here,
    before any test module is imported."""
    if "triton" in sys.modules or importlib.util.find_spec("torch") is None:
        return
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


_interpret_triton_without_a_gpu()

settings.register_profile(
    "crossent",
    deadline=None,
    max_examples=25,
    derandomize=True,  # the same examples on every run: a red test stays red
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    deadline=None,
    max_examples=250,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "crossent"))


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A NumPy generator seeded by the test's node id (stable across runs and machines)."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(autouse=True)
def _torch_seed() -> None:
    """Seed torch too, when a test module has imported it."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(0)

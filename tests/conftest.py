"""Shared test settings: fixed seeds and one hypothesis profile for the whole suite.

* ``rng`` gives every test its own NumPy generator seeded from the test's name, so a failure
  reproduces exactly and tests do not share random state.
* Hypothesis runs without a deadline (the first call of a NumPy ufunc or a torch op can take
  longer than any sensible deadline) and with a modest number of examples, so the suite stays
  fast on a 2-core machine.  ``HYPOTHESIS_PROFILE=thorough`` runs ten times as many.
"""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

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

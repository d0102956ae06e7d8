"""DataLoader workers under fork call crossent after the parent ran the threaded pass.

The most common fork in real training: ``DataLoader(num_workers > 0)`` with the fork start
method, whose dataset computes a loss (e.g. scoring samples).  The parent first runs the
fused CPU pass on more than ``PARALLEL_MIN_ELEMENTS`` logits with two threads, so its thread
pool exists; each worker then runs the NumPy API and ``crossent.torch.cross_entropy`` on CPU
tensors (the ``"cpu"`` executor, the same NumPy pass) on the threaded path.  The DataLoader's
own ``timeout`` turns a hang into an error.  The ``os.fork`` and ``multiprocessing`` cases
are in ``tests/test_fork.py``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import crossent
from crossent import _kernel

torch = pytest.importorskip("torch")
import crossent.torch as ct  # noqa: E402

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")

DEADLINE_S = 30  # per batch; a worker's work takes well under a second
ROWS, CLASSES = 40, 32000  # 1.28e6 logits > 2**20: threaded without any patching


class LossDataset(torch.utils.data.Dataset):
    """Item i: the NumPy loss and the torch loss (and its gradient's sum) of a fixed batch
    shifted by i (a shift changes nothing: the losses must equal the parent's)."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        x = self.x + np.float32(i)  # a shift of the logits leaves the loss unchanged
        np_loss = crossent.cross_entropy(x, self.y)
        xt = torch.from_numpy(x).requires_grad_(True)
        t_loss = ct.cross_entropy(xt, torch.from_numpy(self.y), impl="auto")
        t_loss.backward()
        return (torch.tensor(float(np_loss), dtype=torch.float64), t_loss.detach().double(),
                torch.tensor(os.getpid()))


def test_dataloader_fork_workers_do_not_hang(monkeypatch):
    monkeypatch.setenv("CROSSENT_NUM_THREADS", "2")
    rng = np.random.default_rng(9)
    x = rng.normal(0.0, 2.0, size=(ROWS, CLASSES)).astype(np.float32)
    y = rng.integers(0, CLASSES, ROWS)
    assert ROWS * CLASSES > _kernel.PARALLEL_MIN_ELEMENTS
    # the parent uses the pool: through the NumPy API and through the torch "cpu" executor
    expected = float(crossent.cross_entropy(x, y))
    ref = torch.nn.functional.cross_entropy(torch.from_numpy(x).double(), torch.from_numpy(y))
    assert ct.cross_entropy(torch.from_numpy(x), torch.from_numpy(y)).item() == pytest.approx(
        expected, rel=1e-6)
    assert 1 in _kernel._pools
    loader = torch.utils.data.DataLoader(
        LossDataset(x, y), batch_size=1, num_workers=2, multiprocessing_context="fork",
        timeout=DEADLINE_S)
    np_losses, t_losses, pids = [], [], set()
    for np_loss, t_loss, pid in loader:  # RuntimeError after DEADLINE_S if a worker hangs
        np_losses.append(np_loss.item())
        t_losses.append(t_loss.item())
        pids.add(pid.item())
    assert len(np_losses) == 4
    assert len(pids) == 2 and os.getpid() not in pids  # really two forked workers
    # shifted float32 logits round differently: float32 accuracy against torch's float64
    np.testing.assert_allclose(np_losses, ref.item(), rtol=2e-6)
    np.testing.assert_allclose(t_losses, ref.item(), rtol=2e-6)

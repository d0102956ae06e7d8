"""A forked child can use crossent after its parent ran the threaded pass (issue 9, item 8).

``fork`` copies only the calling thread.  Once the parent has run the fused pass with its
thread pool (more than ``PARALLEL_MIN_ELEMENTS`` logits, two or more threads), the child
inherits pool objects whose worker threads do not exist; a job submitted to them would wait
forever.  :mod:`crossent._kernel` forgets its pools in the child (``os.register_at_fork``),
and these tests hold that for ``os.fork`` and for ``multiprocessing`` with the fork start
method.  Every wait has a deadline, so a regression fails instead of hanging the suite.
The DataLoader case is in ``tests/torch/test_fork.py``.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import struct
import subprocess
import sys

import numpy as np
import pytest

import crossent
from crossent import _kernel

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")

# generous for a shared 2-core machine; the child's work takes well under a second
DEADLINE_S = 30.0
ROWS, CLASSES = 40, 32000  # 1.28e6 logits > 2**20: the threaded path, without patching


def threaded_inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(9)
    x = rng.normal(0.0, 2.0, size=(ROWS, CLASSES)).astype(np.float32)
    y = rng.integers(0, CLASSES, ROWS)
    return x, y


@pytest.fixture
def parent_used_the_pool(monkeypatch):
    """The parent runs the threaded pass first, so a pool with live threads exists."""
    monkeypatch.setenv("CROSSENT_NUM_THREADS", "2")
    assert ROWS * CLASSES > _kernel.PARALLEL_MIN_ELEMENTS
    x, y = threaded_inputs()
    loss, grad = crossent.cross_entropy_with_grad(x, y)
    assert 1 in _kernel._pools  # the caller plus one worker thread
    return x, y, float(loss), grad


def test_os_fork_child_does_not_hang(parent_used_the_pool):
    x, y, expected, expected_grad = parent_used_the_pool
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the threaded pass again, then report the loss and exit
        status = 1
        try:
            os.close(read_end)
            loss, grad = crossent.cross_entropy_with_grad(x, y)
            same = bool(np.array_equal(grad, expected_grad))
            os.write(write_end, struct.pack("d?", float(loss), same))
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], DEADLINE_S)
        if not ready:
            os.kill(pid, 9)
            pytest.fail(f"the forked child did not finish within {DEADLINE_S} s (hung)")
        data = os.read(read_end, 64)
    finally:
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    loss, same_grad = struct.unpack("d?", data)
    assert loss == expected  # same arithmetic in the child, bit for bit
    assert same_grad


SCRIPT = f"""
import os, sys
import numpy as np
import crossent
x = np.random.default_rng(9).normal(0.0, 2.0, size=({ROWS}, {CLASSES})).astype(np.float32)
y = np.zeros(x.shape[0], np.int64)
expected = float(crossent.cross_entropy(x, y))
pid = os.fork()
if pid == 0:
    # the child leaves through an ordinary interpreter exit, which joins thread-pool threads
    sys.exit(0 if float(crossent.cross_entropy(x, y)) == expected else 3)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_child_with_a_normal_interpreter_exit():
    """A whole program: the parent runs the threaded pass, forks, and the child computes
    and leaves through ``sys.exit`` (interpreter shutdown joins the pool threads it knows:
    the parent's vanished threads must not be waited for there either)."""
    env = dict(os.environ, CROSSENT_NUM_THREADS="2")
    try:
        done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, timeout=DEADLINE_S,
                              capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the fork program did not finish within {DEADLINE_S} s (hung)")
    assert done.returncode == 0, done.stderr


def test_the_child_gets_its_own_pool(parent_used_the_pool):
    """In the child the pool table starts empty and is rebuilt on first use."""
    x, y, _, _ = parent_used_the_pool
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(read_end)
            empty_at_start = _kernel._pools == {}
            crossent.cross_entropy(x, y)
            rebuilt = 1 in _kernel._pools
            os.write(write_end, struct.pack("??", empty_at_start, rebuilt))
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], DEADLINE_S)
        if not ready:
            os.kill(pid, 9)
            pytest.fail("the forked child hung")
        data = os.read(read_end, 8)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    assert struct.unpack("??", data) == (True, True)
    assert 1 in _kernel._pools  # the parent keeps its own pool


def test_multiprocessing_fork_pool(parent_used_the_pool):
    """``multiprocessing`` with the fork start method: two workers, each runs the threaded
    loss and gradient; the parent's pool keeps working afterwards."""
    x, y, expected, expected_grad = parent_used_the_pool
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        pending = pool.starmap_async(crossent.cross_entropy_with_grad, [(x, y), (x, y)])
        try:
            results = pending.get(timeout=DEADLINE_S)
        except multiprocessing.TimeoutError:
            pytest.fail(f"multiprocessing fork workers did not finish within {DEADLINE_S} s")
    for loss, grad in results:
        assert float(loss) == expected
        np.testing.assert_array_equal(grad, expected_grad)
    assert float(crossent.cross_entropy(x, y)) == expected  # the parent is unaffected

"""Both schedules of ``linear_cross_entropy`` on the Triton executor, against float64.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``
is set before triton is first imported, as in ``test_triton_cross_entropy.py``), so shapes
are small and the vocabulary blocks narrow (several blocks per row, and tiles of rows).
float32 against fixed tolerances; bfloat16 by the tolerance rule of DESIGN.md.
"""

from __future__ import annotations

import pytest
from triton_support import triton_device  # noqa: E402

DEVICE = triton_device()
ON_GPU = DEVICE.type == "cuda"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import crossent.torch as ct  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # interpreter's 0 * inf

F64 = torch.float64


def _run(fn, h, w, b, y, go=None, **kw):
    leaves = [t.detach().clone().to(DEVICE).requires_grad_() for t in (h, w, b)]
    loss = fn(leaves[0], leaves[1], y.to(DEVICE), linear_bias=leaves[2], **kw)
    if go is None:
        go = torch.randn_like(loss)
    return [loss.detach(), *torch.autograd.grad(loss, leaves, go.to(loss.dtype))], go


OPTIONS = [
    dict(),
    dict(reduction="none", ignore=True, label_smoothing=0.1, weight=True),
    dict(reduction="sum", z_loss=0.01, softcap=4.0),
    dict(probability=True, label_smoothing=0.2),
]


@pytest.mark.parametrize("schedule", ["rows", "vocab"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "plain")
def test_float32_against_float64(schedule, options):
    options = dict(options)
    g = torch.Generator().manual_seed(0)
    n, features, vocab = 7, 8, 21
    h = torch.randn(n, features, generator=g)
    w = torch.randn(vocab, features, generator=g) / 2
    b = torch.randn(vocab, generator=g)
    if options.pop("probability", False):
        y = torch.softmax(torch.randn(n, vocab, generator=g), 1)
    else:
        y = torch.randint(0, vocab, (n,), generator=g)
        if options.pop("ignore", False):
            y[2] = -100
    if options.pop("weight", False):
        options["weight"] = torch.rand(vocab, generator=g).to(DEVICE) + 0.2
    ref, go = _run(ct.linear_cross_entropy_ref, h.double(), w.double(), b.double(),
                   y.double() if y.is_floating_point() else y,
                   **{k: (v.double() if isinstance(v, torch.Tensor) else v)
                      for k, v in options.items()})
    ours, _ = _run(ct.linear_cross_entropy, h, w, b, y, go=go.float(), impl="triton",
                   schedule=schedule, vocab_block_size=8, chunk_size=3, **options)
    for name, o, r in zip(("loss", "d input", "d weight", "d bias"), ours, ref):
        assert o.dtype == torch.float32
        torch.testing.assert_close(o.double(), r, rtol=1e-4, atol=1e-5, msg=name)


def test_k_dimensional_head_vocab_schedule():
    g = torch.Generator().manual_seed(1)
    n, classes, d1, features = 4, 3, 5, 6
    h = torch.randn(n, features, generator=g)
    W = torch.randn(classes, d1, features, generator=g)
    b = torch.randn(classes, d1, generator=g)
    y = torch.randint(0, classes, (n, d1), generator=g)
    ref, go = _run(F.linear_cross_entropy, h.double(), W.double(), b.double(), y,
                   reduction="none", label_smoothing=0.1, ignore_index=-100)
    ours, _ = _run(ct.linear_cross_entropy, h, W, b, y, go=go.float(), impl="triton",
                   schedule="vocab", vocab_block_size=7, reduction="none",
                   label_smoothing=0.1)  # blocks of two whole positions
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o.double(), r, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("schedule", ["rows", "vocab"])
def test_bfloat16_confident_and_offset(schedule, within_torch_error):
    # p -> 1 on logits near 300 (bfloat16 spacing 2 there), as in test_linear_blocked.py
    g = torch.Generator().manual_seed(5)
    n, features, vocab = 12, 8, 40
    h = torch.randn(n, features, dtype=F64, generator=g)
    w = torch.randn(vocab, features, dtype=F64, generator=g) * 2
    b = torch.full((vocab,), 300.0, dtype=F64) + torch.randn(vocab, dtype=F64, generator=g)
    y = (h @ w.T + b).argmax(1)
    y[::4] = torch.randint(0, vocab, (n // 4,), generator=g)
    low = [t.to(torch.bfloat16) for t in (h, w, b)]
    ref, go = _run(ct.linear_cross_entropy_ref, *(t.double() for t in low), y)
    naive = lambda a, c, t, linear_bias: F.cross_entropy(F.linear(a, c, linear_bias), t)  # noqa: E731
    same, _ = _run(naive, *low, y, go=go)
    ours, _ = _run(ct.linear_cross_entropy, *low, y, go=go, impl="triton", schedule=schedule,
                   vocab_block_size=16, chunk_size=5)
    for name, o, s, r in zip(("loss", "d input", "d weight", "d bias"), ours, same, ref):
        assert o.dtype == torch.bfloat16
        within_torch_error(o, s, r, eps=1e-3, what=name)

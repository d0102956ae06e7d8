"""The Triton executor of the shard pass against the float64 reference.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``
is set before triton is first imported, as in ``test_triton_cross_entropy.py``), so the
shapes are small and the code paths are forced: ``single`` (a shard's real columns in one
block) and ``stream`` (blocks of 4 columns, so the online rescaling runs inside a shard and
the padded columns are zeroed over several blocks).  float32 against fixed tolerances;
float16/bfloat16 by the tolerance rule of DESIGN.md.
"""

from __future__ import annotations

import pytest
from triton_support import triton_device  # noqa: E402

DEVICE = triton_device()
ON_GPU = DEVICE.type == "cuda"

import torch  # noqa: E402
from shard_cases import OPTIONS, make_case, pad_columns, reference  # noqa: E402

from crossent.torch import _shard  # noqa: E402
from crossent.torch._params import CrossEntropyParams as P  # noqa: E402
from crossent.torch.triton.reference import cross_entropy_rows_ref  # noqa: E402
from crossent.torch.triton.shard import (  # noqa: E402
    shard_gradient_triton,
    shard_statistics_triton,
)

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # interpreter's 0 * inf

BLOCKS = {"single": None, "stream": 4}
ROWS, CLASSES = 5, 13


def run_sharded(x, target, params, weight, bounds, num_classes, grad_scale, *, block_size,
                inplace=False):
    """Statistics of every shard on DEVICE, the merge, the loss and every shard's gradient."""
    x = x.to(DEVICE)
    target = target.to(DEVICE)
    weight = weight.to(DEVICE, torch.float32) if weight is not None else None
    pieces = list(zip(bounds[:-1], bounds[1:]))

    def tgt(a, b):
        return target[:, a:b].contiguous() if params.probability else target

    stats = [shard_statistics_triton(x[:, a:b].contiguous(), tgt(a, b), params, weight, a,
                                     num_classes, block_size=block_size) for a, b in pieces]
    combined = _shard.combine(torch.stack(stats))
    loss = _shard.finish_loss(combined, target[:, :num_classes] if params.probability
                              else target, params, weight)
    grads = []
    for a, b in pieces:
        xs = x[:, a:b].contiguous()
        out = xs if inplace else torch.empty_like(xs)
        shard_gradient_triton(xs, combined, tgt(a, b), params, weight, a, num_classes,
                              grad_scale.to(DEVICE), out, block_size=block_size)
        grads.append(out)
    return loss.cpu(), torch.cat(grads, 1).cpu()


@pytest.mark.parametrize("block", list(BLOCKS))
@pytest.mark.parametrize("opt_id,params,weighted", OPTIONS, ids=[o[0] for o in OPTIONS])
def test_options_and_padding(block, opt_id, params, weighted):
    g = torch.Generator().manual_seed(1)
    x, target, weight = make_case(ROWS, CLASSES, params, weighted, g)
    x32 = pad_columns(x.float(), 6, 40.0)  # 6 padded columns: the last shard is all padding
    t = pad_columns(target.float(), 6, 0.5) if params.probability else target
    scale = torch.randn(ROWS, generator=g)
    bounds = [0, 1, 7, 13, 19]  # a one-column shard, uneven shards, a padding-only shard
    loss, grad = run_sharded(x32, t, params, weight, bounds, CLASSES, scale,
                             block_size=BLOCKS[block])
    ref_loss, ref_grad = reference(x32[:, :CLASSES].double(), target, params, weight,
                                   scale.double())
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(grad[:, :CLASSES].double(), ref_grad, rtol=1e-5, atol=1e-6)
    assert torch.equal(grad[:, CLASSES:], torch.zeros(ROWS, 6))


@pytest.mark.parametrize("block", list(BLOCKS))
def test_zero_log_zero_ignored_rows_and_large_offset(block):
    """0 log 0 at -inf in its own shard, ignored rows with non-finite logits, and a common
    offset of 1e4 that cancels in the shifted sums."""
    params = P(probability=True)
    t = torch.tensor([[0.0, 0.0, 0.5, 0.5, 0.0, 0.0], [0.1, 0.2, 0.3, 0.2, 0.1, 0.1]])
    x = torch.randn(2, 6)
    x[0, [0, 1, 5]] = float("-inf")
    loss, grad = run_sharded(x, t, params, None, [0, 2, 5, 6], 6, torch.ones(2),
                             block_size=BLOCKS[block])
    ref_loss, ref_grad = cross_entropy_rows_ref(x, t, params, None, torch.ones(2))
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-6)

    params = P(label_smoothing=0.2)
    x = torch.randn(3, 9) * 2 + 1e4
    y = torch.tensor([-100, 4, -100])
    x[0, 1] = float("nan")
    x[2] = float("inf")
    loss, grad = run_sharded(x, y, params, None, [0, 4, 9], 9, torch.ones(3),
                             block_size=BLOCKS[block])
    plain = x.double() - 1e4
    ref_loss, ref_grad = reference(plain[1:2], y[1:2], params, None, torch.ones(1))
    assert loss[0] == 0 and loss[2] == 0
    assert torch.equal(grad[[0, 2]], torch.zeros(2, 9))
    torch.testing.assert_close(loss[1:2].double(), ref_loss, rtol=1e-6, atol=2e-6)
    torch.testing.assert_close(grad[1:2].double(), ref_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_tolerance_rule_and_in_place(dtype):
    g = torch.Generator().manual_seed(2)
    params = P(label_smoothing=0.1, z_loss=1e-3, softcap=15.0)
    x64, target, weight = make_case(6, 24, params, True, g)
    x = x64.to(dtype)
    scale = torch.randn(6, generator=g)
    bounds = [0, 11, 12, 24]
    loss, grad = run_sharded(x, target, params, weight, bounds, 24, scale, block_size=8)
    ref_loss, ref_grad = cross_entropy_rows_ref(x, target, params, weight, scale)
    same_loss, same_grad = cross_entropy_rows_ref(x, target, params, weight.to(dtype),
                                                  scale.to(dtype), dtype=dtype)
    assert grad.dtype == dtype
    eps = torch.finfo(dtype).eps
    bound = 2 * (same_grad.double() - ref_grad).abs() + eps * ref_grad.abs() + 1e-7
    assert ((grad.double() - ref_grad).abs() <= bound).all()
    loss_bound = 2 * (same_loss.double() - ref_loss).abs().max() + 1e-5 * ref_loss.abs() + 2e-6
    assert ((loss.double() - ref_loss).abs() <= loss_bound).all()
    _, in_place = run_sharded(x.clone(), target, params, weight, bounds, 24, scale,
                              block_size=8, inplace=True)
    assert torch.equal(in_place, grad)


def test_dispatch_through_the_shard_module():
    """``_shard.shard_statistics(impl='triton')`` runs these kernels."""
    params = P(label_smoothing=0.1)
    x, target, weight = make_case(ROWS, CLASSES, params, True, torch.Generator())
    x = x.float().to(DEVICE)
    stats = _shard.shard_statistics(x[:, 3:9].contiguous(), target.to(DEVICE), params,
                                    weight.float().to(DEVICE), 3, CLASSES, impl="triton")
    expected = _shard.shard_statistics(x[:, 3:9].contiguous().cpu(), target, params,
                                       weight.float(), 3, CLASSES, impl="torch")
    torch.testing.assert_close(stats.cpu(), expected, rtol=1e-6, atol=1e-6)


def test_vocab_parallel_ops_on_the_triton_executor(monkeypatch):
    """The distributed ops with impl='triton' run these kernels (two ranks as threads)."""
    import threading

    import torch.nn.functional as F
    from shard_cases import ThreadedShards

    import crossent.torch.triton.shard as triton_shard

    if not ON_GPU:  # Triton's interpreter patches module globals while a kernel runs: one
        lock = threading.Lock()  # kernel at a time (compiled kernels need no lock)
        for name in ("shard_statistics_triton", "shard_gradient_triton"):
            original = getattr(triton_shard, name)

            def locked(*args, _original=original, **kwargs):
                with lock:
                    return _original(*args, **kwargs)

            monkeypatch.setattr(triton_shard, name, locked)

    from crossent.torch.distributed import (
        vocab_parallel_cross_entropy,
        vocab_parallel_linear_cross_entropy,
    )

    g = torch.Generator().manual_seed(3)
    x = torch.randn(ROWS, CLASSES, generator=g)
    y = torch.randint(0, CLASSES, (ROWS,), generator=g)
    y[1] = -100
    h = torch.randn(ROWS, 4, generator=g)
    W = torch.randn(CLASSES, 4, generator=g)
    bounds = [0, 6, CLASSES]

    def rank_fn(rank, combine):
        a, b = bounds[rank], bounds[rank + 1]
        xs = x[:, a:b].clone().to(DEVICE).requires_grad_()
        loss = vocab_parallel_cross_entropy(xs, y.to(DEVICE), vocab_start=a,
                                            num_classes=CLASSES, label_smoothing=0.1,
                                            combine=combine, impl="triton")
        loss.backward()
        ws = W[a:b].clone().to(DEVICE).requires_grad_()
        lin = vocab_parallel_linear_cross_entropy(h.to(DEVICE), ws, y.to(DEVICE),
                                                  vocab_start=a, num_classes=CLASSES,
                                                  combine=combine, impl="triton")
        lin.backward()
        return loss.detach().cpu(), xs.grad.cpu(), lin.detach().cpu(), ws.grad.cpu()

    results = ThreadedShards(2).run(rank_fn)
    xx = x.double().requires_grad_()
    ref = F.cross_entropy(xx, y, label_smoothing=0.1)
    ref.backward()
    WW = W.double().requires_grad_()
    ref_lin = F.cross_entropy(h.double() @ WW.T, y)
    ref_lin.backward()
    for loss, _, lin, _ in results:
        torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(lin.double(), ref_lin.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat([r[1] for r in results], 1).double(), xx.grad,
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat([r[3] for r in results]).double(), WW.grad,
                               rtol=1e-5, atol=1e-6)

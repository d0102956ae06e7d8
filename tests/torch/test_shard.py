"""The shard pass (statistics -> combine -> finish) against the float64 reference, in one
process: the classes split into 1..8 uneven shards (one-column shards and padding included)
give the unsharded loss and gradient, on the ``cpu`` (NumPy) and ``torch`` executors.  The
Triton executor has its own module (``test_shard_triton.py``, interpreter)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from shard_cases import (  # noqa: E402
    OPTIONS,
    make_case,
    pad_columns,
    reference,
    sharded,
    split_points,
)

import crossent.torch as ct  # noqa: E402
from crossent.torch import _shard  # noqa: E402
from crossent.torch._params import CrossEntropyParams as P  # noqa: E402
from crossent.torch._rows import check_targets_and_scale  # noqa: E402
from crossent.torch.triton.reference import cross_entropy_rows_ref  # noqa: E402

IMPLS = ["cpu", "torch"]
ROWS, CLASSES = 9, 23

# (id, shard bounds over 23 real classes + padding, padded columns) - why each is here
SPLITS = [
    ("one-shard", [0, 23], 0),  # K = 1 is the plain loss
    ("uneven-3", [0, 5, 17, 23], 0),  # V = 23 over 3 ranks, unequal
    ("one-column", [0, 1, 2, 3, 22, 23], 0),  # shards of a single class
    ("padded-8", [0, 3, 6, 9, 12, 15, 18, 21, 24 + 3], 4),  # last shard mostly padding
    ("padding-only-shard", [0, 12, 23, 27], 4),  # a rank holding nothing but padding
]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def _padded(x, target, params, padding):
    """The logits (and probability targets) with ``padding`` garbage columns appended: their
    values must not matter, so they are large (a softmax that counted them would show)."""
    xp = pad_columns(x, padding, 50.0)
    tp = pad_columns(target, padding, 0.7) if params.probability else target
    return xp, tp


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("split_id,bounds,padding", SPLITS, ids=[s[0] for s in SPLITS])
@pytest.mark.parametrize("opt_id,params,weighted", OPTIONS, ids=[o[0] for o in OPTIONS])
def test_sharded_equals_reference(impl, split_id, bounds, padding, opt_id, params, weighted):
    g = gen(hash((split_id, opt_id)) % 2**31)
    x, target, weight = make_case(ROWS, CLASSES, params, weighted, g)
    scale = torch.randn(ROWS, generator=g, dtype=torch.float64)
    xp, tp = _padded(x, target, params, padding)
    loss, grad = sharded(xp, tp, params, weight, bounds, CLASSES, impl=impl, grad_scale=scale)
    ref_loss, ref_grad = reference(x, target, params, weight, scale)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad[:, :CLASSES], ref_grad, rtol=1e-12, atol=1e-12)
    assert torch.equal(grad[:, CLASSES:], torch.zeros_like(grad[:, CLASSES:]))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("merge", ["stack", "running", "rebase"])
def test_the_three_merges_agree(impl, merge):
    """All-gather + combine, an incremental running merge, and MAX then SUM of rebased
    statistics are one formula: the same numbers."""
    params = P(label_smoothing=0.1, z_loss=1e-3)
    x, target, weight = make_case(ROWS, CLASSES, params, True, gen(3))
    x[2, :10] = float("-inf")  # whole shards at -inf in row 2 (the 0-reference case)
    scale = torch.randn(ROWS, generator=gen(4), dtype=torch.float64)
    bounds = [0, 4, 10, 11, 23]
    loss, grad = sharded(x, target, params, weight, bounds, CLASSES, impl=impl,
                         grad_scale=scale, merge=merge)
    ref_loss, ref_grad = reference(x, target, params, weight, scale)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opt_id,params,weighted", OPTIONS, ids=[o[0] for o in OPTIONS])
def test_reductions_match_crossent_and_pytorch(impl, reduction, opt_id, params, weighted):
    """The reduction and its 'mean' denominator come from the semantics module (through
    check_targets_and_scale); with them the sharded loss is crossent.torch.cross_entropy's."""
    x, target, weight = make_case(ROWS, CLASSES, params, weighted, gen(5))
    denominator, scale = check_targets_and_scale(
        target, params, weight, CLASSES, reduction, torch.float64, tuple(target.shape))
    upstream = torch.randn((ROWS,) if reduction == "none" else (), dtype=torch.float64,
                           generator=gen(6))
    per_row, grad = sharded(x, target, params, weight, [0, 7, 8, 23], CLASSES, impl=impl,
                            grad_scale=scale * upstream)
    loss = _shard_reduce(per_row, reduction, denominator)
    kw = dict(weight=weight, ignore_index=params.ignore_index, reduction=reduction,
              label_smoothing=params.label_smoothing, z_loss=params.z_loss,
              softcap=params.softcap)
    xx = x.clone().requires_grad_()
    expected = ct.cross_entropy(xx, target, impl=impl, **kw)
    (expected_grad,) = torch.autograd.grad(expected, xx, upstream)
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-12)
    if not params.z_loss and params.softcap is None:  # and PyTorch's own op
        xx = x.clone().requires_grad_()
        torch_loss = F.cross_entropy(xx, target, weight, ignore_index=params.ignore_index,
                                     reduction=reduction,
                                     label_smoothing=params.label_smoothing)
        (torch_grad,) = torch.autograd.grad(torch_loss, xx, upstream)
        torch.testing.assert_close(loss, torch_loss.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, torch_grad, rtol=1e-12, atol=1e-12)


def _shard_reduce(per_row, reduction, denominator):
    from crossent import _semantics as sem

    return sem.reduce_loss(per_row, reduction, denominator)


@pytest.mark.parametrize("impl", IMPLS)
def test_large_offset_and_one_hot_rows(impl):
    """Logits + 1000 (a common offset cancels in z - r) and p -> 1 rows: still float64-exact."""
    params = P(label_smoothing=0.1)
    x, target, weight = make_case(ROWS, CLASSES, params, False, gen(7))
    x = x + 1000.0
    x[0, target[0]] += 60.0  # p_y -> 1 in row 0
    scale = torch.ones(ROWS, dtype=torch.float64)
    loss, grad = sharded(x, target, params, weight, [0, 11, 12, 23], CLASSES, impl=impl,
                         grad_scale=scale)
    ref_loss, ref_grad = reference(x, target, params, weight, scale)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_zero_log_zero_and_ignored_rows_with_bad_logits(impl):
    """A class the target does not weigh, at logit -inf, adds 0 (PyTorch: NaN for
    probability targets); ignored rows give loss 0 and gradient 0 even with inf/NaN logits;
    a real NaN elsewhere stays NaN."""
    # probability targets: zero probability at -inf, in a shard of its own
    params = P(probability=True)
    x, target, _ = make_case(4, 6, params, False, gen(8))
    target[0] = torch.tensor([0.0, 0.0, 0.5, 0.5, 0.0, 0.0], dtype=torch.float64)
    x[0, 0] = x[0, 1] = x[0, 5] = float("-inf")
    loss, grad = sharded(x, target, params, None, [0, 2, 5, 6], 6, impl=impl,
                         grad_scale=torch.ones(4, dtype=torch.float64))
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    finite = x[0, 2:5]
    expected = -(0.5 * torch.log_softmax(finite, 0)[:2]).sum()
    torch.testing.assert_close(loss[0], expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(grad[0, [0, 1, 5]], torch.zeros(3, dtype=torch.float64))
    # index targets: ignored rows with non-finite logits, and a NaN in a counted row
    params = P(label_smoothing=0.3)
    x = torch.randn(3, 6, dtype=torch.float64)
    target = torch.tensor([-100, 2, -100])
    x[0, 1] = float("nan")
    x[2] = float("inf")
    x[1, 4] = float("nan")
    loss, grad = sharded(x, target, params, None, [0, 3, 6], 6, impl=impl,
                         grad_scale=torch.ones(3, dtype=torch.float64))
    assert loss[0] == 0 and loss[2] == 0 and torch.isnan(loss[1])
    assert torch.equal(grad[[0, 2]], torch.zeros(2, 6, dtype=torch.float64))


@pytest.mark.parametrize("impl", IMPLS)
def test_padding_only_shard_statistics(impl):
    """A shard with no real class gives (-inf, 0, 0, 0): the merge's neutral element."""
    x = torch.full((3, 4), 7.0, dtype=torch.float64)
    stats = _shard.shard_statistics(x, torch.tensor([0, 1, 2]), P(label_smoothing=0.5), None,
                                    col_start=10, num_classes=10, impl=impl)
    expected = torch.tensor([[-math.inf] * 3, [0.0] * 3, [0.0] * 3, [0.0] * 3],
                            dtype=torch.float64)
    assert torch.equal(stats, expected)
    other = torch.tensor([[1.0, 2.0, 3.0], [2.0, 1.0, 4.0], [-0.5, 0.1, 0.2], [1.0, 0.9, 1.0]],
                         dtype=torch.float64)
    assert torch.equal(_shard.merge(other, stats), other)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_within_torch_error(impl, dtype, within_torch_error):
    """Half-precision shards accumulate in float32 and the gradient is rounded once: no
    worse than plain PyTorch computing in that dtype (DESIGN.md's tolerance rule)."""
    params = P(label_smoothing=0.1, z_loss=1e-3, softcap=20.0)
    x64, target, weight = make_case(16, 67, params, True, gen(9))
    x = x64.to(dtype)
    w = weight.float()
    scale = torch.full((16,), 0.5, dtype=torch.float32)
    loss, grad = sharded(x, target, params, w, [0, 20, 21, 67], 67, impl=impl,
                         grad_scale=scale)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    ref_loss, ref_grad = cross_entropy_rows_ref(x, target, params, weight, scale)
    same_loss, same_grad = cross_entropy_rows_ref(x, target, params, w.to(dtype),
                                                  scale.to(dtype), dtype=dtype)
    within_torch_error(loss, same_loss, ref_loss, what="loss")
    within_torch_error(grad, same_grad, ref_grad, what="gradient")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_gradient_in_place_over_the_logits(impl, dtype):
    params = P(label_smoothing=0.1, softcap=3.0)
    x, target, weight = make_case(ROWS, CLASSES, params, True, gen(10))
    x = x.to(dtype)
    w = weight.to(torch.float64 if dtype == torch.float64 else torch.float32)
    scale = torch.randn(ROWS, generator=gen(11), dtype=torch.float64)
    bounds = [0, 9, 23]
    _, expected = sharded(x, target, params, w, bounds, CLASSES, impl=impl, grad_scale=scale)
    _, in_place = sharded(x.clone(), target, params, w, bounds, CLASSES, impl=impl,
                          grad_scale=scale, inplace=True)
    assert torch.equal(in_place, expected)


def test_executors_agree_on_the_statistics():
    params = P(label_smoothing=0.1, probability=False, ignore_index=3)
    x, target, weight = make_case(ROWS, CLASSES, params, True, gen(12))
    stats = [_shard.shard_statistics(x[:, 5:14], target, params, weight, 5, CLASSES, impl=i)
             for i in IMPLS]
    torch.testing.assert_close(stats[0], stats[1], rtol=1e-13, atol=1e-13)


def test_many_rows_use_several_blocks_and_threads(monkeypatch):
    """Enough rows for several row blocks (and the thread pool on the cpu executor)."""
    monkeypatch.setenv("CROSSENT_NUM_THREADS", "2")
    params = P(label_smoothing=0.1, z_loss=1e-3)
    x, target, weight = make_case(1200, 1100, params, True, gen(13))
    scale = torch.randn(1200, generator=gen(14), dtype=torch.float64)
    ref_loss, ref_grad = reference(x, target, params, weight, scale)
    for impl in IMPLS:
        loss, grad = sharded(x, target, params, weight, [0, 600, 1100], 1100, impl=impl,
                             grad_scale=scale)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)


def test_errors():
    with pytest.raises(ValueError, match=r"combine takes statistics of shape \(K, 4, M\)"):
        _shard.combine(torch.zeros(4, 3))
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="impl must be"):
        _shard.shard_statistics(x, torch.tensor([0, 1]), P(), None, 0, 3, impl="numpy")
    with pytest.raises(ValueError, match="impl must be"):
        _shard.shard_gradient(x, torch.zeros(4, 2), torch.tensor([0, 1]), P(), None, 0, 3,
                              torch.tensor(1.0), x, impl="auto")


# --------------------------------------------------------------------------------------------
# hypothesis: any split of any vocabulary, any options
# --------------------------------------------------------------------------------------------


@given(
    rows=st.integers(1, 6),
    classes=st.integers(1, 20),
    padding=st.integers(0, 5),
    shards=st.integers(1, 8),
    probability=st.booleans(),
    weighted=st.booleans(),
    smoothing=st.sampled_from([0.0, 0.05, 1.0]),
    z_loss=st.sampled_from([0.0, 1e-2]),
    softcap=st.sampled_from([None, 2.0]),
    offset=st.sampled_from([0.0, 1000.0]),
    impl=st.sampled_from(IMPLS),
    seed=st.integers(0, 2**16),
)
def test_any_split_equals_the_reference(rows, classes, padding, shards, probability, weighted,
                                        smoothing, z_loss, softcap, offset, impl, seed):
    params = P(probability=probability, label_smoothing=smoothing, z_loss=z_loss,
               softcap=softcap)
    g = gen(seed)
    x, target, weight = make_case(rows, classes, params, weighted, g)
    x = x + offset
    padded = classes + padding
    shards = min(shards, padded)
    bounds = split_points(padded, shards, g)
    scale = torch.randn(rows, generator=g, dtype=torch.float64)
    xp, tp = _padded(x, target, params, padding)
    loss, grad = sharded(xp, tp, params, weight, bounds, classes, impl=impl, grad_scale=scale)
    ref_loss, ref_grad = reference(x, target, params, weight, scale)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(grad[:, :classes], ref_grad, rtol=1e-10, atol=1e-10)
    assert torch.equal(grad[:, classes:], torch.zeros_like(grad[:, classes:]))

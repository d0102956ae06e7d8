"""crossent.torch.distributed in one process: the ranks are threads and the statistics are
exchanged through an injected ``combine`` (``shard_cases.ThreadedShards``), so world sizes 1
to 8, uneven and one-column shards, padding and every option run in milliseconds against
the float64 reference.  Real collectives: ``test_distributed_threaded.py`` (PyTorch's
threaded process group) and ``test_distributed_gloo.py`` (gloo processes)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from shard_cases import (  # noqa: E402
    OPTIONS,
    ThreadedShards,
    make_case,
    pad_columns,
    split_points,
)

import crossent.torch as ct  # noqa: E402
from crossent.torch.distributed import (  # noqa: E402
    global_mean_scale,
    vocab_parallel_cross_entropy,
    vocab_parallel_linear_cross_entropy,
)

ROWS, CLASSES = 9, 23
IMPLS = ["cpu", "torch"]
# (id, shard bounds over the padded classes, padded columns)
SPLITS = [
    ("world-1", [0, 23], 0),
    ("world-2-uneven", [0, 16, 23], 0),
    ("world-3-one-column", [0, 11, 12, 23], 0),
    ("world-8-padded", [0, 3, 4, 7, 11, 15, 18, 22, 26], 3),
    ("world-4-padding-only-rank", [0, 8, 16, 23, 28], 5),
    ("world-3-empty-rank", [0, 9, 9, 23], 0),  # more ranks than classes leaves one empty
]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def run_ranks(x, target, bounds, num_classes, *, upstream=None, probability=False, **kw):
    """Every rank's (loss, gradient of its shard) through the public op, ranks as threads."""
    world = len(bounds) - 1
    shards = ThreadedShards(world)

    def rank_fn(rank, combine):
        a, b = bounds[rank], bounds[rank + 1]
        xs = x[:, a:b].clone().requires_grad_()
        t = target[:, a:b].contiguous() if probability else target
        loss = vocab_parallel_cross_entropy(xs, t, vocab_start=a, num_classes=num_classes,
                                            combine=combine, **kw)
        (grad,) = torch.autograd.grad(loss, xs, upstream)
        return loss.detach(), grad

    results = shards.run(rank_fn)
    return [r[0] for r in results], torch.cat([r[1] for r in results], dim=1), shards.calls


def reference(x, target, upstream, params, weight, reduction):
    """crossent.torch.cross_entropy of the gathered logits (itself held to F.cross_entropy),
    and F.cross_entropy where no crossent-only option is on."""
    xx = x.clone().requires_grad_()
    kw = dict(weight=weight, ignore_index=params.ignore_index, reduction=reduction,
              label_smoothing=params.label_smoothing)
    loss = ct.cross_entropy(xx, target, z_loss=params.z_loss, softcap=params.softcap, **kw)
    (grad,) = torch.autograd.grad(loss, xx, upstream)
    if not params.z_loss and params.softcap is None:
        xt = x.clone().requires_grad_()
        torch_loss = F.cross_entropy(xt, target, **kw)
        (torch_grad,) = torch.autograd.grad(torch_loss, xt, upstream)
        torch.testing.assert_close(loss, torch_loss, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, torch_grad, rtol=1e-12, atol=1e-12)
    return loss.detach(), grad


def check(x, target, params, weighted_weight, bounds, padding, reduction, impl, seed):
    upstream = torch.randn((ROWS,) if reduction == "none" else (), dtype=torch.float64,
                           generator=gen(seed))
    xp = pad_columns(x, padding, 40.0)
    tp = pad_columns(target, padding, 0.3) if params.probability else target
    losses, grad, calls = run_ranks(
        xp, tp, bounds, CLASSES, upstream=upstream, probability=params.probability,
        weight=weighted_weight, ignore_index=params.ignore_index, reduction=reduction,
        label_smoothing=params.label_smoothing, z_loss=params.z_loss, softcap=params.softcap,
        impl=impl)
    expected, expected_grad = reference(x, target, upstream, params, weighted_weight,
                                        reduction)
    for rank, loss in enumerate(losses):  # the same loss on every rank
        assert loss.dtype == expected.dtype and loss.shape == expected.shape
        torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12,
                                   msg=lambda m, r=rank: f"rank {r}: {m}")
    torch.testing.assert_close(grad[:, :CLASSES], expected_grad, rtol=1e-12, atol=1e-12)
    assert torch.equal(grad[:, CLASSES:], torch.zeros_like(grad[:, CLASSES:]))
    assert calls == 1  # one exchange, in forward; none in backward


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opt_id,params,weighted", OPTIONS, ids=[o[0] for o in OPTIONS])
def test_every_option_and_reduction(impl, reduction, opt_id, params, weighted):
    x, target, weight = make_case(ROWS, CLASSES, params, weighted, gen(1))
    split_id, bounds, padding = SPLITS[4]  # 4 ranks, one of them all padding
    check(x, target, params, weight, bounds, padding, reduction, impl, seed=2)


@pytest.mark.parametrize("split_id,bounds,padding", SPLITS, ids=[s[0] for s in SPLITS])
@pytest.mark.parametrize("opt_id", ["index-all", "prob-smooth-weight", "index-smooth-weight"])
def test_world_sizes_and_splits(split_id, bounds, padding, opt_id):
    _, params, weighted = next(o for o in OPTIONS if o[0] == opt_id)
    x, target, weight = make_case(ROWS, CLASSES, params, weighted, gen(3))
    check(x, target, params, weight, bounds, padding, "mean", "cpu", seed=4)


def test_sharded_equals_unsharded_bitwise_at_world_1():
    """K = 1 is not an approximation: the one-rank loss is crossent's own, to the last bit,
    and K ranks agree with it to rounding."""
    x, target, weight = make_case(ROWS, CLASSES, OPTIONS[2][1], True, gen(5))
    kw = dict(weight=weight, label_smoothing=0.1)
    losses, _, _ = run_ranks(x, target, [0, CLASSES], CLASSES, **kw)
    assert torch.equal(losses[0], ct.cross_entropy(x, target, **kw))
    many, _, _ = run_ranks(x, target, [0, 2, 3, 9, 15, 16, 20, 22, CLASSES], CLASSES, **kw)
    torch.testing.assert_close(many[0], losses[0], rtol=1e-14, atol=1e-14)


def test_large_offset_and_label_smoothing_the_same_on_every_rank():
    """Megatron-Core and TransformerEngine take smoothing from the local shard only, so
    their loss differs from rank to rank; here every rank has the exact loss, with logits
    + 1000 (the shifted statistics cancel the offset)."""
    x, target, _ = make_case(ROWS, CLASSES, OPTIONS[3][1], False, gen(6))
    x = x + 1000.0
    losses, grad, _ = run_ranks(x, target, [0, 5, 6, 23], CLASSES, label_smoothing=0.1)
    expected = F.cross_entropy(x, target, label_smoothing=0.1)
    assert all(torch.equal(loss, losses[0]) for loss in losses)
    torch.testing.assert_close(losses[0], expected, rtol=1e-13, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_logits(dtype, within_torch_error):
    params = OPTIONS[2][1]
    x64, target, weight = make_case(ROWS, CLASSES, params, True, gen(7))
    x = x64.to(dtype)
    w = weight.to(dtype)  # class-index targets take a weight of the logits' dtype (PyTorch)
    upstream = torch.tensor(0.7)
    losses, grad, _ = run_ranks(x, target, [0, 9, 10, 23], CLASSES, upstream=upstream,
                                weight=w, label_smoothing=0.1)
    assert losses[0].dtype == dtype and grad.dtype == dtype
    xx = x.double().requires_grad_()
    ref = F.cross_entropy(xx, target, weight, label_smoothing=0.1)
    (ref_grad,) = torch.autograd.grad(ref, xx, upstream.double())
    xs = x.clone().requires_grad_()
    same = F.cross_entropy(xs, target, w, label_smoothing=0.1)
    (same_grad,) = torch.autograd.grad(same, xs, upstream.to(dtype))
    within_torch_error(losses[0], same.detach(), ref.detach(), what="loss")
    within_torch_error(grad, same_grad, ref_grad, what="gradient")


@pytest.mark.parametrize("target_dtype", [torch.int64, torch.int32, torch.uint8])
def test_language_model_shapes(target_dtype):
    """(B, T, V_local) logits and (B, T) targets of any integer dtype, as a language model's
    head gives them; 'none' returns (B, T)."""
    x = torch.randn(2, 5, CLASSES, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (2, 5))
    if target_dtype != torch.uint8:  # uint8 cannot hold -100
        y[0, 1] = -100
    bounds = [0, 10, CLASSES]
    shards = ThreadedShards(2)

    def rank_fn(rank, combine):
        a, b = bounds[rank], bounds[rank + 1]
        xs = x[..., a:b].clone().requires_grad_()
        target = y.to(target_dtype)
        loss = vocab_parallel_cross_entropy(xs, target, vocab_start=a, num_classes=CLASSES,
                                            reduction="none", combine=combine)
        loss.sum().backward()
        return loss.detach(), xs.grad

    results = shards.run(rank_fn)
    expected = F.cross_entropy(x.reshape(-1, CLASSES), y.reshape(-1), reduction="none")
    assert results[0][0].shape == (2, 5)
    torch.testing.assert_close(results[1][0], expected.reshape(2, 5), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------
# linear + cross-entropy over a sharded head
# --------------------------------------------------------------------------------------------


def _upstream(n, dtype):
    """A different upstream gradient per element (0.5 for a 0-d loss)."""
    return torch.linspace(0.5, -1.5, n, dtype=dtype)


def run_linear_ranks(h, W, b, target, bounds, num_classes, *, probability=False, **kw):
    world = len(bounds) - 1
    shards = ThreadedShards(world)

    def rank_fn(rank, combine):
        a, e = bounds[rank], bounds[rank + 1]
        hh = h.clone().requires_grad_()
        ws = W[a:e].clone().requires_grad_()
        bs = b[a:e].clone().requires_grad_() if b is not None else None
        t = target[:, a:e].contiguous() if probability else target
        loss = vocab_parallel_linear_cross_entropy(
            hh, ws, t, linear_bias=bs, vocab_start=a, num_classes=num_classes,
            combine=combine, **kw)
        upstream = _upstream(loss.numel(), loss.dtype).reshape(loss.shape)
        loss.backward(upstream)
        return loss.detach(), hh.grad, ws.grad, bs.grad if bs is not None else None

    return shards.run(rank_fn)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opt_id,params,weighted", OPTIONS, ids=[o[0] for o in OPTIONS])
def test_linear_every_option(reduction, opt_id, params, weighted):
    g = gen(8)
    rows, features = 11, 6
    h = torch.randn(rows, features, generator=g, dtype=torch.float64)
    W = torch.randn(CLASSES + 2, features, generator=g, dtype=torch.float64)  # 2 padded rows
    b = torch.randn(CLASSES + 2, generator=g, dtype=torch.float64)
    _, target, weight = make_case(rows, CLASSES, params, weighted, g)
    tp = pad_columns(target, 2, 0.5) if params.probability else target
    bounds = [0, 7, 8, 25]
    results = run_linear_ranks(
        h, W, b, tp, bounds, CLASSES, probability=params.probability, weight=weight,
        ignore_index=params.ignore_index, reduction=reduction,
        label_smoothing=params.label_smoothing, z_loss=params.z_loss, softcap=params.softcap,
        chunk_size=4)
    hh, WW, bb = (t.clone().requires_grad_() for t in (h, W[:CLASSES], b[:CLASSES]))
    expected = ct.cross_entropy(F.linear(hh, WW, bb), target, weight, params.ignore_index,
                                reduction, params.label_smoothing, z_loss=params.z_loss,
                                softcap=params.softcap)
    upstream = _upstream(expected.numel(), expected.dtype)
    expected.backward(upstream.reshape(expected.shape))
    for loss, dh, _, _ in results:
        torch.testing.assert_close(loss, expected.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(dh, hh.grad, rtol=1e-12, atol=1e-12)
    dw = torch.cat([r[2] for r in results])
    db = torch.cat([r[3] for r in results])
    torch.testing.assert_close(dw[:CLASSES], WW.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(db[:CLASSES], bb.grad, rtol=1e-12, atol=1e-12)
    assert torch.equal(dw[CLASSES:], torch.zeros(2, features, dtype=torch.float64))
    assert torch.equal(db[CLASSES:], torch.zeros(2, dtype=torch.float64))


def test_linear_language_model_shapes_and_bfloat16(within_torch_error):
    g = gen(9)
    h = torch.randn(2, 7, 8, generator=g)
    W = torch.randn(CLASSES, 8, generator=g)
    y = torch.randint(0, CLASSES, (2, 7), generator=g)
    y[1, 3] = -100
    bounds = [0, 12, CLASSES]
    results = run_linear_ranks(h.bfloat16(), W.bfloat16(), None, y, bounds, CLASSES,
                               chunk_size=5, label_smoothing=0.1)
    hh = h.bfloat16().double().requires_grad_()
    WW = W.bfloat16().double().requires_grad_()
    ref = F.cross_entropy(F.linear(hh, WW).reshape(-1, CLASSES), y.reshape(-1),
                          label_smoothing=0.1)
    ref.backward(_upstream(1, ref.dtype)[0])
    hs = h.bfloat16().requires_grad_()
    Ws = W.bfloat16().requires_grad_()
    same = F.cross_entropy(F.linear(hs, Ws).reshape(-1, CLASSES), y.reshape(-1),
                           label_smoothing=0.1)
    same.backward(_upstream(1, same.dtype)[0])
    loss, dh, _, _ = results[0]
    assert loss.dtype == torch.bfloat16 and dh.dtype == torch.bfloat16 and dh.shape == (2, 7, 8)
    within_torch_error(loss, same.detach(), ref.detach(), what="loss")
    within_torch_error(dh, hs.grad, hh.grad, what="d input")
    dw = torch.cat([r[2] for r in results])
    within_torch_error(dw, Ws.grad, WW.grad, what="d weight")


# --------------------------------------------------------------------------------------------
# the autograd contract
# --------------------------------------------------------------------------------------------


def _single_rank(**kw):
    """One rank holding every class: the exchange is the identity."""
    return dict(vocab_start=0, num_classes=CLASSES, combine=lambda stats: stats, **kw)


def test_repeated_backward_gives_the_same_gradient_and_never_changes_old_ones():
    x, target, weight = make_case(ROWS, CLASSES, OPTIONS[2][1], True, gen(10))
    xs = x.clone().requires_grad_()
    loss = vocab_parallel_cross_entropy(xs, target, weight=weight, label_smoothing=0.1,
                                        **_single_rank())
    (g1,) = torch.autograd.grad(loss, xs, torch.tensor(0.5, dtype=torch.float64),
                                retain_graph=True)
    kept = g1.clone()
    (g2,) = torch.autograd.grad(loss, xs, torch.tensor(2.0, dtype=torch.float64),
                                retain_graph=True)
    assert torch.equal(g1, kept)  # the first gradient was not rescaled afterwards
    torch.testing.assert_close(g2, 4 * g1, rtol=1e-14, atol=0)
    loss.backward(retain_graph=True)
    first = xs.grad.clone()
    xs.grad.zero_()  # a user zeroing .grad must not break the next backward
    loss.backward()
    torch.testing.assert_close(xs.grad, first, rtol=0, atol=0)
    xx = x.clone().requires_grad_()
    F.cross_entropy(xx, target, weight, label_smoothing=0.1).backward()
    torch.testing.assert_close(first, xx.grad, rtol=1e-12, atol=1e-12)


def test_linear_op_repeated_backward_and_func_grad():
    """The linear op's gradients are fresh tensors every backward: a second backward (any
    upstream gradient) is right and never rescales what the first returned."""

    class OneRank:
        def __call__(self, stats):
            return stats

        def all_reduce(self, t):
            return t

    g = gen(15)
    h = torch.randn(7, 4, generator=g, dtype=torch.float64).requires_grad_()
    W = torch.randn(CLASSES, 4, generator=g, dtype=torch.float64).requires_grad_()
    y = torch.randint(0, CLASSES, (7,), generator=g)
    kw = dict(vocab_start=0, num_classes=CLASSES, combine=OneRank(), label_smoothing=0.1)
    loss = vocab_parallel_linear_cross_entropy(h, W, y, **kw)
    first = torch.autograd.grad(loss, (h, W), torch.tensor(0.5, dtype=torch.float64),
                                retain_graph=True)
    kept = [t.clone() for t in first]
    second = torch.autograd.grad(loss, (h, W), torch.tensor(-2.0, dtype=torch.float64))
    for a, b, k in zip(first, second, kept):
        assert torch.equal(a, k)
        torch.testing.assert_close(b, -4 * a, rtol=1e-14, atol=1e-15)
    ref = F.cross_entropy(h @ W.T, y, label_smoothing=0.1)
    expected = torch.autograd.grad(ref, (h, W), torch.tensor(0.5, dtype=torch.float64))
    for a, e in zip(first, expected):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    dh = torch.func.grad(lambda t: vocab_parallel_linear_cross_entropy(t, W.detach(), y,
                                                                       **kw))(h.detach())
    torch.testing.assert_close(dh, 2 * expected[0], rtol=1e-12, atol=1e-12)


def test_func_grad_matches_autograd():
    x, target, _ = make_case(ROWS, CLASSES, OPTIONS[0][1], False, gen(11))

    def f(logits):
        return vocab_parallel_cross_entropy(logits, target, label_smoothing=0.2,
                                            **_single_rank())

    grad = torch.func.grad(f)(x)
    xx = x.clone().requires_grad_()
    F.cross_entropy(xx, target, label_smoothing=0.2).backward()
    torch.testing.assert_close(grad, xx.grad, rtol=1e-12, atol=1e-12)


# torch loads its forward-AD decompositions with torch.jit.script on the first make_dual
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_unsupported_transforms_say_so():
    x, target, _ = make_case(ROWS, CLASSES, OPTIONS[0][1], False, gen(12))

    def f(logits):
        return vocab_parallel_cross_entropy(logits, target, **_single_rank())

    with pytest.raises(RuntimeError, match="crossent.*does not support forward-mode AD"):
        torch.func.jvp(f, (x,), (torch.ones_like(x),))
    import torch.autograd.forward_ad as fwad

    with fwad.dual_level(), pytest.raises(RuntimeError, match="crossent.*forward-mode AD"):
        f(fwad.make_dual(x, torch.ones_like(x)))
    with pytest.raises(RuntimeError, match="crossent.*does not support torch.func.vmap"):
        torch.func.vmap(f)(x.unsqueeze(0))
    xs = x.clone().requires_grad_()
    loss = f(xs)
    # the contract's policy (crossent.torch's ops alike): a graph of the gradient is refused
    # when asked for, since the gradient was computed in the forward pass
    with pytest.raises(RuntimeError, match="crossent.*does not support double backward "
                                           r"\(create_graph=True\)"):
        torch.autograd.grad(loss, xs, create_graph=True)
    (g,) = torch.autograd.grad(loss, xs)  # the graph is intact: a first derivative is fine
    torch.testing.assert_close(g, torch.func.grad(f)(x), rtol=1e-14, atol=0)
    with pytest.raises(RuntimeError, match="crossent.*does not support double backward"):
        torch.func.grad(lambda t: torch.func.grad(f)(t).pow(2).sum())(x)
    with pytest.raises(RuntimeError, match="crossent.*does not support double backward"):
        torch.func.grad(f)(x.clone().requires_grad_()).sum().backward()
    with pytest.raises(RuntimeError, match="crossent.*does not support a vmapped backward"):
        torch.func.jacrev(f)(x)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_linear_op_unsupported_transforms_say_so():
    g = gen(18)
    h = torch.randn(5, 4, generator=g, dtype=torch.float64)
    W = torch.randn(CLASSES, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (5,), generator=g)

    def f(t):
        return vocab_parallel_linear_cross_entropy(t, W, y, vocab_start=0, num_classes=CLASSES,
                                                   combine=_OneRankHead())

    name = "crossent.torch.distributed.vocab_parallel_linear_cross_entropy does not support"
    with pytest.raises(RuntimeError, match=name + " torch.func.vmap"):
        torch.func.vmap(f)(h.unsqueeze(0))
    with pytest.raises(RuntimeError, match=name + " forward-mode AD"):
        torch.func.jvp(f, (h,), (torch.ones_like(h),))
    with pytest.raises(RuntimeError, match=name + " a vmapped backward"):
        torch.func.jacrev(f)(h)
    with pytest.raises(RuntimeError, match=name[:-len(" does not support")] +
                       r" computes its gradient .* double backward \(create_graph=True\)"):
        hs = h.clone().requires_grad_()
        torch.autograd.grad(f(hs), hs, create_graph=True)
    expected = torch.func.grad(lambda t: F.cross_entropy(t @ W.T, y))(h)
    torch.testing.assert_close(torch.func.grad(f)(h), expected, rtol=1e-12, atol=1e-14)


def test_inplace_backward():
    x, target, weight = make_case(ROWS, CLASSES, OPTIONS[6][1], True, gen(13))
    params = OPTIONS[6][1]
    kw = dict(weight=weight, ignore_index=params.ignore_index,
              label_smoothing=params.label_smoothing, z_loss=params.z_loss,
              softcap=params.softcap)
    xs = x.clone().requires_grad_()
    loss = vocab_parallel_cross_entropy(xs, target, **kw, **_single_rank())
    (expected,) = torch.autograd.grad(loss, xs, torch.tensor(0.3, dtype=torch.float64))

    leaf = x.clone().requires_grad_()
    logits = leaf * 1.0  # a model output: its memory may be consumed
    loss = vocab_parallel_cross_entropy(logits, target, inplace_backward=True, **kw,
                                        **_single_rank())
    loss.backward(torch.tensor(0.3, dtype=torch.float64), retain_graph=True)
    torch.testing.assert_close(leaf.grad, expected, rtol=1e-14, atol=0)
    with pytest.raises(RuntimeError, match="inplace_backward=True.*second backward"):
        loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace_backward=True.*leaf tensor that requires"):
        vocab_parallel_cross_entropy(leaf, target, inplace_backward=True, **_single_rank())
    broadcast = (torch.zeros(1, CLASSES, requires_grad=True) * 1.0).expand(ROWS, CLASSES)
    with pytest.raises(RuntimeError, match="overlap in memory"):
        vocab_parallel_cross_entropy(broadcast, target, inplace_backward=True,
                                     **_single_rank())


@pytest.mark.parametrize("linear", [False, True])
def test_autocast_computes_in_float32(linear):
    g = gen(14)
    y = torch.randint(0, CLASSES, (ROWS,), generator=g)
    h = torch.randn(ROWS, 8, generator=g)
    W = torch.randn(CLASSES, 8, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = F.linear(h, W)
        expected = F.cross_entropy(logits, y)
        if linear:
            loss = vocab_parallel_linear_cross_entropy(h, W, y, **_single_rank())
        else:
            loss = vocab_parallel_cross_entropy(logits, y, **_single_rank())
    assert expected.dtype == torch.float32 and loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)


class _OneRankHead:
    """The injected combine of a one-rank linear op: both exchanges are the identity."""

    def __call__(self, stats):
        return stats

    def all_reduce(self, tensor):
        return tensor


@pytest.mark.parametrize("dtypes", [(torch.float64, torch.float64),
                                    (torch.bfloat16, torch.float32)], ids=["float64", "mixed"])
def test_linear_op_autocast_follows_linear_cross_entropy(dtypes):
    """Under autocast float64 stays float64 (PyTorch's autocast leaves it alone) and a mix of
    float16/bfloat16/float32 input and head runs in autocast's dtype, exactly as
    crossent.torch.linear_cross_entropy (and F.linear + F.cross_entropy) do."""
    g = gen(16)
    h = torch.randn(ROWS, 8, generator=g, dtype=torch.float64).to(dtypes[0])
    W = torch.randn(CLASSES, 8, generator=g, dtype=torch.float64).to(dtypes[1])
    y = torch.randint(0, CLASSES, (ROWS,), generator=g)
    kw = dict(vocab_start=0, num_classes=CLASSES, combine=_OneRankHead())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = vocab_parallel_linear_cross_entropy(h, W, y, **kw)
        expected = ct.linear_cross_entropy(h, W, y)
        plain = F.cross_entropy(F.linear(h, W), y)
    assert loss.dtype == expected.dtype == plain.dtype == (
        torch.float64 if dtypes[0] == torch.float64 else torch.float32)
    tol = 1e-12 if loss.dtype == torch.float64 else 1e-6
    torch.testing.assert_close(loss, expected, rtol=tol, atol=tol)
    torch.testing.assert_close(loss, plain, rtol=tol, atol=tol)
    if dtypes[0] != dtypes[1]:  # without autocast a mix is refused, as F.linear refuses it
        with pytest.raises(TypeError, match="input and linear_weight must have the same dtype, "
                                            "got bfloat16 and float32"):
            vocab_parallel_linear_cross_entropy(h, W, y, **kw)


def test_class_weight_rules_are_crossent_torch_s():
    """The class weights follow crossent.torch.cross_entropy's rules: with class indices the
    logits' dtype (a float64 weight with float32 logits is refused, as PyTorch refuses it);
    with probabilities any floating dtype, which promotes the loss; never silently detached."""
    g = gen(17)
    x = torch.randn(ROWS, CLASSES, generator=g)
    y = torch.randint(0, CLASSES, (ROWS,), generator=g)
    t = torch.softmax(torch.randn(ROWS, CLASSES, generator=g), 1)
    w64 = torch.rand(CLASSES, generator=g, dtype=torch.float64) + 0.1
    for op in (vocab_parallel_cross_entropy, ct.cross_entropy, F.cross_entropy):
        kw = _single_rank() if op is vocab_parallel_cross_entropy else {}
        with pytest.raises((TypeError, RuntimeError), match="expected scalar type|input's dtype"):
            op(x, y, weight=w64, **kw)
    with pytest.raises(TypeError, match="weight must have the input's dtype float32 for "
                                        "class-index targets"):
        vocab_parallel_cross_entropy(x, y, weight=w64, **_single_rank())
    # probabilities: float32 logits and targets, a float64 weight promotes the loss
    xs = x.clone().requires_grad_()
    loss = vocab_parallel_cross_entropy(xs, t, weight=w64, **_single_rank())
    (grad,) = torch.autograd.grad(loss, xs)
    xx = x.clone().requires_grad_()
    expected = ct.cross_entropy(xx, t, w64)
    (expected_grad,) = torch.autograd.grad(expected, xx)
    assert loss.dtype == expected.dtype == torch.float64 and grad.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=1e-7)
    # the linear op alike
    h = torch.randn(ROWS, 4, generator=g)
    W = torch.randn(CLASSES, 4, generator=g)
    head = dict(vocab_start=0, num_classes=CLASSES, combine=_OneRankHead())
    loss = vocab_parallel_linear_cross_entropy(h, W, t, weight=w64, **head)
    expected = ct.linear_cross_entropy(h, W, t, weight=w64)
    assert loss.dtype == expected.dtype == torch.float64
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(TypeError, match="weight must have the input's dtype float32"):
        vocab_parallel_linear_cross_entropy(h, W, y, weight=w64, **head)
    # a weight that requires grad is refused, not silently detached (any target)
    trained = w64.float().requires_grad_()
    for target in (t, y):
        with pytest.raises(RuntimeError, match="crossent.torch.distributed does not "
                                               "differentiate with respect to weight"):
            vocab_parallel_cross_entropy(x, target, weight=trained, **_single_rank())
        with pytest.raises(RuntimeError, match="crossent.torch.distributed does not "
                                               "differentiate with respect to weight"):
            vocab_parallel_linear_cross_entropy(h, W, target, weight=trained, **head)
    with torch.no_grad():  # nothing is differentiated: it is just a tensor of weights
        loss = vocab_parallel_cross_entropy(x, y, weight=trained, **_single_rank())
    torch.testing.assert_close(loss, F.cross_entropy(x, y, trained.detach()), rtol=1e-6,
                               atol=1e-7)
    # under autocast, a float16/bfloat16/float32 weight is cast with the logits (PyTorch's)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = vocab_parallel_cross_entropy(x.bfloat16(), y, weight=w64.float(),
                                            **_single_rank())
        plain = F.cross_entropy(x.bfloat16(), y, w64.float())
    assert loss.dtype == plain.dtype == torch.float32
    torch.testing.assert_close(loss, plain, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"weight must have shape \(23,\), one weight per "
                                         r"class, got shape \(23, 1\)"):
        vocab_parallel_cross_entropy(x, y, weight=torch.ones(CLASSES, 1), **_single_rank())


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


def test_errors():
    x = torch.randn(3, 4)
    y = torch.tensor([0, 1, 2])
    one = dict(combine=lambda s: s)
    with pytest.raises(ValueError, match="vocab_start must be given with an injected combine"):
        vocab_parallel_cross_entropy(x, y, **one)
    with pytest.raises(ValueError, match="num_classes must be given with vocab_start"):
        vocab_parallel_cross_entropy(x, y, vocab_start=0, **one)
    with pytest.raises(ValueError, match="vocab_start must be an int >= 0"):
        vocab_parallel_cross_entropy(x, y, vocab_start=-1, num_classes=4, **one)
    with pytest.raises(ValueError, match="combine must be one of"):
        vocab_parallel_cross_entropy(x, y, vocab_start=0, num_classes=4, combine="ring")
    with pytest.raises(IndexError, match=r"target\[1\] = 9 is out of range"):
        vocab_parallel_cross_entropy(x, torch.tensor([0, 9, 1]), vocab_start=0, num_classes=4,
                                     **one)
    with pytest.raises(ValueError, match=r"weight must have shape \(6,\)"):
        vocab_parallel_cross_entropy(x, y, vocab_start=0, num_classes=6, weight=torch.ones(4),
                                     **one)
    with pytest.raises(ValueError, match=r"target must have shape \(3,\)"):
        vocab_parallel_cross_entropy(x, y[:2], vocab_start=0, num_classes=4, **one)
    with pytest.raises(TypeError, match="must be floating point"):
        vocab_parallel_cross_entropy(x, torch.ones(3, 4, dtype=torch.int64), vocab_start=0,
                                     num_classes=4, **one)
    with pytest.raises(TypeError, match="target must be a tensor of class probabilities in "
                                        "one of float16, bfloat16, float32, float64, got "
                                        "dtype float8_e4m3fn"):
        vocab_parallel_cross_entropy(x, torch.zeros(3, 4, dtype=torch.float8_e4m3fn),
                                     vocab_start=0, num_classes=4, **one)
    # the linear op names what the user passed, not logits it never saw
    with pytest.raises(ValueError, match=r"for input of shape \(3, 4\) and linear_weight of "
                                         r"shape \(5, 4\), got \(2,\)"):
        vocab_parallel_linear_cross_entropy(x, torch.randn(5, 4), y[:2], vocab_start=0,
                                            num_classes=5, combine=_OneRankHead())
    with pytest.raises(ValueError, match="must return the merged statistics of shape"):
        vocab_parallel_cross_entropy(x, y, vocab_start=0, num_classes=4,
                                     combine=lambda s: s[:, :1])
    with pytest.raises(RuntimeError, match="torch.distributed is not initialized"):
        vocab_parallel_cross_entropy(x, y)
    with pytest.raises(ValueError, match=r"not both: got group=<object object at .*> and "
                                         r"combine=<function"):
        vocab_parallel_cross_entropy(x, y, group=object(), vocab_start=0, num_classes=4, **one)
    with pytest.raises(ValueError, match="all_reduce"):
        vocab_parallel_linear_cross_entropy(x.requires_grad_(), torch.randn(5, 4), y,
                                            vocab_start=0, num_classes=5, **one)


def test_global_mean_scale_errors_name_the_argument():
    """Every argument is checked before any collective, with the argument, what was expected
    and what arrived (no process group is needed to see them)."""
    y = torch.tensor([0, 1, -100, 3])
    w = torch.ones(4)
    cases = [
        (dict(targets=5), TypeError, "targets must be a tensor or a sequence of tensors, got int"),
        (dict(targets=[]), ValueError, "non-empty sequence of tensors, got an empty sequence"),
        (dict(targets=[y, [1, 2]]), TypeError, "targets\\[1\\] must be a torch.Tensor, got list"),
        (dict(targets=y > 0), TypeError, "targets must hold integer class indices or "
                                         "floating-point class probabilities, got dtype bool"),
        (dict(targets=y, weight=[1.0] * 4), TypeError, "weight must be a torch.Tensor, got list"),
        (dict(targets=y, weight=torch.ones(4, dtype=torch.int64)), TypeError,
         "weight must be a floating-point tensor, got dtype int64"),
        (dict(targets=y, weight=torch.ones(2, 2)), ValueError,
         "weight must have shape \\(C,\\), the loss's class weights, got shape \\(2, 2\\)"),
        (dict(targets=[y, torch.tensor([[1, 7]])], weight=w), IndexError,
         "targets\\[1\\]: target\\[0, 1\\] = 7 is out of range: expected a class index in "
         "\\[0, 3\\] or ignore_index \\(-100\\)"),
        (dict(targets=y, average_gradients=1), TypeError,
         "average_gradients must be a bool, got 1"),
        (dict(targets=y, dtype=torch.int32), TypeError,
         "dtype must be a floating-point torch.dtype, got torch.int32"),
        (dict(targets=y, dtype="float32"), TypeError,
         "dtype must be a floating-point torch.dtype, got 'float32'"),
        (dict(targets=y, ignore_index=1.5), TypeError, "ignore_index"),
    ]
    for kw, error, message in cases:
        with pytest.raises(error, match=message):
            global_mean_scale(kw.pop("targets"), **kw)
    # valid arguments reach the group (none here)
    with pytest.raises(RuntimeError, match="torch.distributed is not initialized"):
        global_mean_scale([y, torch.rand(2, 3, 4)], weight=w)


# --------------------------------------------------------------------------------------------
# hypothesis: any world size, split and options
# --------------------------------------------------------------------------------------------


@given(
    classes=st.integers(1, 17),
    padding=st.integers(0, 4),
    world=st.integers(1, 8),
    probability=st.booleans(),
    weighted=st.booleans(),
    smoothing=st.sampled_from([0.0, 0.1, 1.0]),
    z_loss=st.sampled_from([0.0, 1e-2]),
    softcap=st.sampled_from([None, 3.0]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    seed=st.integers(0, 2**16),
)
def test_any_world_equals_the_reference(classes, padding, world, probability, weighted,
                                        smoothing, z_loss, softcap, reduction, seed):
    from crossent.torch._params import CrossEntropyParams

    params = CrossEntropyParams(probability=probability, label_smoothing=smoothing,
                                z_loss=z_loss, softcap=softcap)
    g = gen(seed)
    rows = 5
    x, target, weight = make_case(rows, classes, params, weighted, g)
    padded = classes + padding
    bounds = split_points(padded, min(world, padded), g)
    upstream = torch.randn((rows,) if reduction == "none" else (), dtype=torch.float64,
                           generator=g)
    xp = pad_columns(x, padding, 30.0)
    tp = pad_columns(target, padding, 0.2) if probability else target
    losses, grad, _ = run_ranks(xp, tp, bounds, classes, upstream=upstream,
                                probability=probability, weight=weight, reduction=reduction,
                                label_smoothing=smoothing, z_loss=z_loss, softcap=softcap)
    expected, expected_grad = reference(x, target, upstream, params, weight, reduction)
    for loss in losses:
        torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-10, equal_nan=True)
    torch.testing.assert_close(grad[:, :classes], expected_grad, rtol=1e-10, atol=1e-10,
                               equal_nan=True)
    assert torch.equal(grad[:, classes:], torch.zeros_like(grad[:, classes:]))

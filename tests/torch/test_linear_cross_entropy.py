"""crossent.torch.linear_cross_entropy against the naive full-logits op in float64.

The reference builds the whole ``(N, V)`` logits (``linear_cross_entropy_ref``); the op under
test never does.  Values and all three gradients (input, weight, bias) are compared with a
random upstream gradient.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import crossent.torch as ct  # noqa: E402
from crossent.torch.linear import (  # noqa: E402
    CHUNK_BUDGET_BYTES,
    MIN_CHUNK_ROWS,
    choose_chunk_size,
)

IMPLS = ["cpu", "torch"]


def _problem(lead, features, vocab, *, probability=False, ignore=False, dtype=torch.float64):
    h = torch.randn(*lead, features, dtype=dtype)
    w = torch.randn(vocab, features, dtype=dtype) / features**0.5
    b = torch.randn(vocab, dtype=dtype)
    if probability:
        y = torch.softmax(torch.randn(*lead, vocab, dtype=torch.float64), -1).to(dtype)
    else:
        y = torch.randint(0, vocab, lead)
        if ignore:
            y.view(-1)[::3] = -100
    return h, w, b, y


def _run(fn, h, w, b, y, go=None, **kw):
    hh, ww, bb = (t.detach().clone().requires_grad_() for t in (h, w, b))
    loss = fn(hh, ww, y, linear_bias=bb, **kw)
    if go is None:
        go = torch.randn_like(loss)
    grads = torch.autograd.grad(loss, (hh, ww, bb), go)
    return loss.detach(), grads, go


def _assert_same(fn_kw, ref_kw, problem, rtol=1e-10, atol=1e-12):
    h, w, b, y = problem
    ref, ref_grads, go = _run(ct.linear_cross_entropy_ref, h, w, b, y, **ref_kw)
    loss, grads, _ = _run(ct.linear_cross_entropy, h, w, b, y, go=go, **fn_kw)
    assert loss.shape == ref.shape
    torch.testing.assert_close(loss, ref, rtol=rtol, atol=atol, equal_nan=True)
    for name, g, r in zip(("input", "weight", "bias"), grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=rtol, atol=atol, msg=f"d {name} differs")


# (lead dims, D, V, chunk_size): each with its reason
SHAPES = [
    ((1,), 3, 2, None),  # tiny: one row, two classes
    ((423,), 16, 507, 100),  # unaligned N and V; N not a multiple of the chunk
    ((64,), 8, 33, 64),  # exactly one chunk
    ((50,), 8, 33, 7),  # many chunks, last one short
    ((2, 5), 4, 9, 3),  # leading (B, T) dimensions: rows flattened, classes last
    ((), 6, 5, None),  # unbatched (D,) input, 0-d target
]

OPTIONS = [
    dict(),
    dict(reduction="sum", label_smoothing=0.1),
    dict(reduction="none", ignore=True),
    dict(weight=True, ignore=True, label_smoothing=0.2),
    dict(z_loss=0.01, softcap=3.0),
    dict(probability=True, label_smoothing=0.1, weight=True),
    dict(probability=True, reduction="none", z_loss=0.05),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}x{s[2]}/{s[3]}")
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "plain")
def test_matches_naive_float64(impl, shape, options):
    lead, features, vocab, chunk = shape
    options = dict(options)
    probability = options.pop("probability", False)
    problem = _problem(lead, features, vocab, probability=probability,
                       ignore=options.pop("ignore", False))
    if options.pop("weight", False):
        options["weight"] = torch.rand(vocab, dtype=torch.float64) + 0.1
    _assert_same(dict(options, chunk_size=chunk, impl=impl), options, problem)


def test_all_rows_ignored():
    # 'mean' is 0/0 = nan (as PyTorch), gradients exactly 0; 'sum' is 0
    h, w, b, _ = _problem((6,), 4, 5)
    y = torch.full((6,), -100)
    for reduction in ("mean", "sum"):
        loss, grads, _ = _run(ct.linear_cross_entropy, h, w, b, y, go=torch.tensor(1.0),
                              reduction=reduction, chunk_size=4)
        ref = F.cross_entropy(F.linear(h, w, b), y, reduction=reduction)
        torch.testing.assert_close(loss, ref, equal_nan=True)
        for g in grads:
            assert torch.equal(g, torch.zeros_like(g))


def test_drop_in_for_pytorchs_linear_cross_entropy():
    h, w, b, y = _problem((40,), 8, 30)
    options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=16)
    theirs = F.linear_cross_entropy(h, w, y, linear_bias=b, ignore_index=None,
                                    reduction="sum", options=options)
    ours = ct.linear_cross_entropy(h, w, y, linear_bias=b, ignore_index=None,
                                   reduction="sum", options=options)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)


def test_frozen_weight_gets_no_gradient_work():
    h, w, b, y = _problem((12,), 4, 7)
    hh = h.clone().requires_grad_()
    loss = ct.linear_cross_entropy(hh, w, y, chunk_size=5)  # w, no bias: not trained
    loss.backward()
    hr = h.clone().requires_grad_()
    F.cross_entropy(hr @ w.T, y).backward()
    torch.testing.assert_close(hh.grad, hr.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_float64(reduction):
    h, w, b, y = (t.requires_grad_() if t.is_floating_point() else t
                  for t in _problem((6,), 4, 5))
    assert torch.autograd.gradcheck(
        lambda a, c, d: ct.linear_cross_entropy(a, c, y, linear_bias=d, chunk_size=4,
                                                reduction=reduction, label_smoothing=0.1,
                                                z_loss=0.01),
        (h, w, b))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_tolerance_rule(dtype, within_torch_error):
    h, w, b, y = _problem((96,), 32, 200, dtype=dtype)
    ref, ref_grads, go = _run(ct.linear_cross_entropy_ref, h.double(), w.double(), b.double(),
                              y)
    naive = lambda a, c, t, linear_bias: F.cross_entropy(F.linear(a, c, linear_bias), t)  # noqa: E731
    same, same_grads, _ = _run(naive, h, w, b, y, go=go.to(dtype))
    loss, grads, _ = _run(ct.linear_cross_entropy, h, w, b, y, go=go.to(dtype), chunk_size=40)
    assert loss.dtype == dtype and all(g.dtype == dtype for g in grads)
    within_torch_error(loss, same, ref, eps=1e-3, what="loss")
    for name, g, s, r in zip(("input", "weight", "bias"), grads, same_grads, ref_grads):
        within_torch_error(g, s, r, eps=1e-3, what=f"d {name}")


def test_torch_compile():
    h, w, b, y = _problem((20,), 6, 11)
    compiled = torch.compile(
        lambda a, c, t, linear_bias: ct.linear_cross_entropy(a, c, t, linear_bias=linear_bias,
                                                             chunk_size=8),
        fullgraph=True, backend="aot_eager")
    ref, ref_grads, go = _run(ct.linear_cross_entropy_ref, h, w, b, y)
    loss, grads, _ = _run(compiled, h, w, b, y, go=go)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=0)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_module():
    h, w, b, y = _problem((10,), 4, 6)
    module = ct.LinearCrossEntropyLoss(reduction="sum", label_smoothing=0.1, chunk_size=3)
    torch.testing.assert_close(
        module(h, w, y, b),
        F.cross_entropy(F.linear(h, w, b), y, reduction="sum", label_smoothing=0.1),
        rtol=1e-12, atol=0)


def test_chunk_rule():
    assert choose_chunk_size(10_000, 32000) == CHUNK_BUDGET_BYTES // (4 * 32000)  # the budget
    assert choose_chunk_size(10_000, 128256) == MIN_CHUNK_ROWS  # the floor for fast products
    assert choose_chunk_size(5, 32000) == 5  # never more rows than there are
    assert choose_chunk_size(0, 32000) == 1  # and at least one


@pytest.mark.parametrize(("make", "error", "message"), [
    (lambda: ct.linear_cross_entropy(torch.randn(3, 4), torch.randn(5, 6),
                                     torch.tensor([0, 1, 2])), RuntimeError, "in_features"),
    (lambda: ct.linear_cross_entropy(torch.randn(3, 4), torch.randn(5, 4),
                                     torch.tensor([0, 1])), ValueError, "batch_size"),
    (lambda: ct.linear_cross_entropy(torch.randn(3, 4), torch.randn(5, 4),
                                     torch.tensor([0.0, 1.0, 2.0])), TypeError,
     "integer class indices"),
    (lambda: ct.linear_cross_entropy(torch.randn(3, 4), torch.randn(5, 4, dtype=torch.float64),
                                     torch.tensor([0, 1, 2])), TypeError, "same dtype"),
    (lambda: ct.linear_cross_entropy(torch.randn(3, 4), torch.randn(5, 4),
                                     torch.tensor([0, 1, 7])), IndexError, r"target\[2\] = 7"),
    (lambda: ct.linear_cross_entropy(torch.randn(3, 4), torch.randn(5, 4),
                                     torch.tensor([0, 1, 2]), linear_bias=torch.randn(4)),
     ValueError, r"expected linear_bias shape \(5,\)"),
    (lambda: ct.linear_cross_entropy(torch.randn(3, 4), torch.randn(5, 4),
                                     torch.tensor([0, 1, 2]), chunk_size=0),
     ValueError, "chunk_size"),
])
def test_errors(make, error, message):
    with pytest.raises(error, match=message):
        make()

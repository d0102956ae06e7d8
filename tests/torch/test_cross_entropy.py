"""crossent.torch.cross_entropy against torch.nn.functional.cross_entropy.

Every executor that runs here (``cpu``: the NumPy pass on the tensors' memory; ``torch``: the
portable blocked torch code) is held to PyTorch's float64 numbers, forward and backward
with a random upstream gradient; half precision is held to the tolerance rule.
"""

from __future__ import annotations

import itertools
import math

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import crossent.torch as ct  # noqa: E402
from crossent.torch._impl import resolve_impl  # noqa: E402

IMPLS = ["cpu", "torch"]

# (input shape, index-target shape), each with the reason it is here
SHAPES = [
    ((1, 2), (1,)),  # tiny: one row, two classes
    ((7,), ()),  # unbatched (C,) input, class axis 0
    ((37, 51), (37,)),  # unaligned rows and classes
    ((3, 5, 2, 4), (3, 2, 4)),  # K-dimensional (N, C, d1, d2): class axis 1, copied rows
    ((3, 32000), (3,)),  # a real vocabulary: several kernel blocks per row
]


def _target(kind, shape, tshape, classes, ignore):
    if kind == "probability":
        axis = 0 if len(shape) == 1 else 1
        return torch.softmax(torch.randn(shape, dtype=torch.float64), dim=axis)
    y = torch.randint(0, classes, tshape)
    if ignore and y.numel() > 1:
        y.view(-1)[::3] = -100  # every third element ignored
    return y


def _loss_and_grad(fn, x, target, go=None, **kw):
    xx = x.detach().clone().requires_grad_()
    loss = fn(xx, target, **kw)
    if go is None:
        go = torch.randn_like(loss)
    (grad,) = torch.autograd.grad(loss, xx, go)
    return loss.detach(), grad, go


GRID = list(itertools.product(
    SHAPES, ["index", "probability"], [False, True], [0.0, 0.1, 1.0],
    ["mean", "sum", "none"]))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("shapes", "kind", "weighted", "smoothing", "reduction"), GRID)
def test_matches_pytorch_float64(impl, shapes, kind, weighted, smoothing, reduction):
    shape, tshape = shapes
    classes = shape[0] if len(shape) == 1 else shape[1]
    x = torch.randn(shape, dtype=torch.float64) * 3
    target = _target(kind, shape, tshape, classes, ignore=True)
    kw = dict(reduction=reduction, label_smoothing=smoothing)
    if weighted:
        kw["weight"] = torch.rand(classes, dtype=torch.float64) + 0.1
    expected, expected_grad, go = _loss_and_grad(F.cross_entropy, x, target, **kw)
    loss, grad, _ = _loss_and_grad(ct.cross_entropy, x, target, go=go, impl=impl, **kw)
    assert loss.shape == expected.shape and loss.dtype == expected.dtype
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12, equal_nan=True)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("impl", IMPLS)
def test_ignore_index_equal_to_a_real_class(impl):
    # pytorch#63004: only targets equal to 1 are skipped; class 1 stays in every softmax
    x = torch.randn(6, 4, dtype=torch.float64)
    y = torch.tensor([1, 0, 1, 3, 2, 1])
    for eps in (0.0, 0.2):
        e, eg, go = _loss_and_grad(F.cross_entropy, x, y, ignore_index=1, label_smoothing=eps)
        o, og, _ = _loss_and_grad(ct.cross_entropy, x, y, go=go, ignore_index=1,
                                  label_smoothing=eps, impl=impl)
        torch.testing.assert_close(o, e, rtol=1e-12, atol=0)
        torch.testing.assert_close(og, eg, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("impl", IMPLS)
def test_float32_within_1e_6_of_float64(impl):
    x = torch.randn(64, 1000) * 4
    y = torch.randint(0, 1000, (64,))
    ref, ref_grad, go = _loss_and_grad(F.cross_entropy, x.double(), y, label_smoothing=0.1)
    loss, grad, _ = _loss_and_grad(ct.cross_entropy, x, y, go=go.float(), label_smoothing=0.1,
                                   impl=impl)
    assert loss.dtype == torch.float32 and grad.dtype == torch.float32
    assert abs(loss.double() - ref).item() <= 1e-6 * abs(ref).item()
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", ["random", "confident", "offset"])
def test_half_precision_tolerance_rule(impl, dtype, case, within_torch_error):
    # confident: p -> 1 on the target (the bf16 in-place gradient bug of other kernels);
    # offset: every logit shifted by a large common constant (exactly representable)
    x = torch.randn(48, 300) * 2
    y = torch.randint(0, 300, (48,))
    if case == "confident":
        x[torch.arange(48), y] += 14.0
    if case == "offset":
        x = x + 1024.0
    x = x.to(dtype)
    ref, ref_grad, go = _loss_and_grad(F.cross_entropy, x.double(), y, reduction="none")
    same, same_grad, _ = _loss_and_grad(F.cross_entropy, x, y, go=go.to(dtype),
                                        reduction="none")
    loss, grad, _ = _loss_and_grad(ct.cross_entropy, x, y, go=go.to(dtype), reduction="none",
                                   impl=impl)
    assert loss.dtype == dtype and grad.dtype == dtype
    within_torch_error(loss, same, ref, eps=1e-3, what="loss")
    within_torch_error(grad, same_grad, ref_grad, eps=1e-4, what="gradient")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("options", [
    dict(),
    dict(label_smoothing=0.1, z_loss=1e-2, softcap=2.0),
    dict(reduction="none", z_loss=0.3, weight=True),
    dict(reduction="sum", softcap=0.5, probability=True),
])
def test_gradcheck_float64(impl, options):
    options = dict(options)
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    if options.pop("probability", False):
        y = torch.softmax(torch.randn(5, 6, dtype=torch.float64), 1)
    else:
        y = torch.tensor([0, 5, -100, 2, 3])
    if options.pop("weight", False):
        options["weight"] = torch.rand(6, dtype=torch.float64) + 0.5
    assert torch.autograd.gradcheck(
        lambda v: ct.cross_entropy(v, y, impl=impl, **options), (x,))


def test_reference_extras_by_hand():
    # z-loss and softcap of the reference, computed by hand for logits [2, 4, 0.5], y = 0
    logits = [2.0, 4.0, 0.5]
    lse = math.log(sum(math.exp(v) for v in logits))
    x = torch.tensor([logits], dtype=torch.float64)
    y = torch.tensor([0])
    got = ct.cross_entropy_ref(x, y, z_loss=0.5).item()
    assert got == pytest.approx((lse - 2.0) + 0.5 * lse * lse, rel=1e-12)
    capped = [3.0 * math.tanh(v / 3.0) for v in logits]
    lse_c = math.log(sum(math.exp(v) for v in capped))
    got = ct.cross_entropy_ref(x, y, softcap=3.0).item()
    assert got == pytest.approx(lse_c - capped[0], rel=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("options", [
    dict(z_loss=1e-3),
    dict(softcap=5.0),
    dict(z_loss=0.1, softcap=1.5, label_smoothing=0.2, weight=True, ignore=True),
    dict(z_loss=0.05, reduction="none", probability=True),
])
def test_z_loss_and_softcap_against_reference(impl, options):
    options = dict(options)
    x = torch.randn(9, 13, dtype=torch.float64) * 4
    if options.pop("probability", False):
        y = torch.softmax(torch.randn(9, 13, dtype=torch.float64), 1)
    else:
        y = torch.randint(0, 13, (9,))
        if options.pop("ignore", False):
            y[::4] = -100
    if options.pop("weight", False):
        options["weight"] = torch.rand(13, dtype=torch.float64) + 0.1
    ref, ref_grad, go = _loss_and_grad(ct.cross_entropy_ref, x, y, **options)
    loss, grad, _ = _loss_and_grad(ct.cross_entropy, x, y, go=go, impl=impl, **options)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("impl", IMPLS)
def test_inplace_backward_consumes_input_and_matches(impl):
    x = torch.randn(16, 40)
    y = torch.randint(0, 40, (16,))
    expected, expected_grad, _ = _loss_and_grad(F.cross_entropy, x, y, go=torch.tensor(2.5))
    leaf = x.clone().requires_grad_()
    logits = leaf * 1.0  # a model's output: a non-leaf nothing else uses
    seen = []
    logits.register_hook(lambda g: seen.append(g.data_ptr()))
    address = logits.data_ptr()
    loss = ct.cross_entropy(logits, y, inplace_backward=True, impl=impl)
    assert not torch.equal(logits.detach(), x)  # the logits were overwritten by the gradient
    (loss * 2.5).backward()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(leaf.grad, expected_grad, rtol=1e-5, atol=1e-7)
    assert seen == [address]  # the gradient flowed in the logits' memory: no second N x C


def test_inplace_backward_refuses_a_second_backward():
    x = torch.randn(4, 5, requires_grad=True)
    loss = ct.cross_entropy(x * 1.0, torch.tensor([0, 1, 2, 3]), inplace_backward=True)
    (loss * 3).backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="back-propagated once"):
        (loss * 3).backward()


def test_repeated_backward_without_inplace_is_exact():
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    loss = ct.cross_entropy(x, torch.tensor([0, 1, 2, 3]))
    (g1,) = torch.autograd.grad(loss, x, torch.tensor(3.0, dtype=torch.float64),
                                retain_graph=True)
    (g2,) = torch.autograd.grad(loss, x, torch.tensor(3.0, dtype=torch.float64))
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)


def test_double_backward_raises_clearly():
    x = torch.randn(3, 4, requires_grad=True)
    loss = ct.cross_entropy(x, torch.tensor([0, 1, 2]))
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss, x, create_graph=True)


@pytest.mark.parametrize("impl", IMPLS)
def test_no_grad_forward_matches(impl):
    x = torch.randn(10, 12, dtype=torch.float64)
    y = torch.randint(0, 12, (10,))
    with torch.no_grad():
        loss = ct.cross_entropy(x.requires_grad_(), y, label_smoothing=0.3, impl=impl)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, F.cross_entropy(x.detach(), y, label_smoothing=0.3),
                               rtol=1e-12, atol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_torch_compile_fullgraph(impl):
    x = torch.randn(8, 11, dtype=torch.float64)
    y = torch.randint(0, 11, (8,))
    options = dict(label_smoothing=0.1, z_loss=1e-3, softcap=4.0, impl=impl)
    compiled = torch.compile(lambda v, t: ct.cross_entropy(v, t, **options), fullgraph=True,
                             backend="aot_eager")
    expected, expected_grad, go = _loss_and_grad(ct.cross_entropy_ref, x, y,
                                                 label_smoothing=0.1, z_loss=1e-3, softcap=4.0)
    loss, grad, _ = _loss_and_grad(lambda v, t: compiled(v, t), x, y, go=go)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-14)


def test_torch_compile_inductor_reduction_none():
    x = torch.randn(6, 9)
    y = torch.tensor([0, 8, -100, 3, 4, 5])
    compiled = torch.compile(lambda v: ct.cross_entropy(v, y, reduction="none"),
                             fullgraph=True)
    expected, expected_grad, go = _loss_and_grad(F.cross_entropy, x, y, reduction="none")
    loss, grad, _ = _loss_and_grad(lambda v, t: compiled(v), x, y, go=go)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-7)


def test_module_matches_functional_and_checks_options_early():
    x = torch.randn(5, 7, dtype=torch.float64)
    y = torch.randint(0, 7, (5,))
    w = torch.rand(7, dtype=torch.float64)
    module = ct.CrossEntropyLoss(w, ignore_index=2, reduction="sum", label_smoothing=0.2)
    torch.testing.assert_close(
        module(x, y),
        F.cross_entropy(x, y, w, ignore_index=2, reduction="sum", label_smoothing=0.2),
        rtol=1e-12, atol=0)
    assert "label_smoothing=0.2" in repr(module)
    with pytest.raises(ValueError, match="reduction"):
        ct.CrossEntropyLoss(reduction="avg")
    with pytest.raises(RuntimeError, match="label_smoothing"):
        ct.CrossEntropyLoss(label_smoothing=1.5)


def test_non_finite_logits_follow_pytorch_except_zero_times_log_zero():
    inf = float("inf")
    x = torch.tensor([[0.0, -inf, 1.0]], dtype=torch.float64)
    # index path: PyTorch is finite, and so are we (loss and gradient)
    e, eg, go = _loss_and_grad(F.cross_entropy, x, torch.tensor([0]))
    o, og, _ = _loss_and_grad(ct.cross_entropy, x, torch.tensor([0]), go=go)
    torch.testing.assert_close(o, e)
    torch.testing.assert_close(og, eg)
    # probability target with 0 on the -inf class: PyTorch NaN (0 * log 0), we are finite
    p = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.isnan(F.cross_entropy(x, p))
    assert ct.cross_entropy(x, p).item() == pytest.approx(1.313261687518223, rel=1e-12)
    # an all -inf row is NaN in both
    assert torch.isnan(ct.cross_entropy(torch.full((1, 3), -inf), torch.tensor([0])))


def test_ignored_rows_with_non_finite_logits_get_zero_gradient():
    # PyTorch gives this row a NaN gradient (pytorch#11551); it is ignored, so 0 is right
    x = torch.tensor([[float("nan"), 1.0, 2.0], [1.0, 2.0, 3.0]], requires_grad=True)
    loss = ct.cross_entropy(x, torch.tensor([-100, 1]))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.equal(x.grad[0], torch.zeros(3))
    assert torch.isfinite(x.grad).all()


# ---------------------------------------------------------------------------------------------
# Errors: PyTorch's exception type, our message naming the argument
# ---------------------------------------------------------------------------------------------

BAD_CALLS = [
    # (description, input, target, kwargs, message fragment)
    ("index out of range", torch.randn(2, 3), torch.tensor([0, 3]), {}, r"target\[1\] = 3"),
    ("negative index", torch.randn(2, 3), torch.tensor([-1, 0]), {}, r"target\[0\] = -1"),
    ("float index target", torch.randn(2, 3), torch.tensor([0.0, 1.0]), {},
     "integer class indices"),
    ("integer probability target", torch.randn(2, 3), torch.zeros(2, 3, dtype=torch.long),
     {}, "probabilities as floats"),
    ("batch mismatch", torch.randn(2, 3), torch.tensor([0, 1, 2]), {}, "batch_size"),
    ("target of wrong rank", torch.randn(2, 3), torch.zeros(2, 4, dtype=torch.long), {},
     "must have shape"),
    ("spatial mismatch", torch.randn(2, 3, 4), torch.zeros(2, 5, dtype=torch.long), {},
     "must have shape"),
    ("weight of wrong length", torch.randn(2, 3), torch.tensor([0, 1]),
     {"weight": torch.ones(4)}, "one weight per class"),
    ("unknown reduction", torch.randn(2, 3), torch.tensor([0, 1]), {"reduction": "avg"},
     "reduction must be one of"),
    ("smoothing above 1", torch.randn(2, 3), torch.tensor([0, 1]), {"label_smoothing": 1.5},
     r"label_smoothing must be in \[0, 1\]"),
    ("ignore_index with probabilities", torch.randn(2, 3), torch.rand(2, 3),
     {"ignore_index": 1}, "ignore_index is not supported"),
    ("integer logits", torch.zeros(2, 3, dtype=torch.long), torch.tensor([0, 1]), {},
     "floating-point"),
]


@pytest.mark.parametrize(("what", "x", "y", "kw", "message"), BAD_CALLS,
                         ids=[c[0] for c in BAD_CALLS])
def test_bad_input_raises_pytorchs_exception_type(what, x, y, kw, message):
    with pytest.raises(Exception) as theirs:
        F.cross_entropy(x, y, **kw)
    with pytest.raises(theirs.type, match=message):
        ct.cross_entropy(x, y, **kw)


def test_errors_pytorch_does_not_raise():
    # PyTorch silently ignores a negative label_smoothing (pytorch#134767); we refuse it
    with pytest.raises(ValueError, match="label_smoothing"):
        ct.cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]), label_smoothing=-0.1)
    with pytest.raises(ValueError, match="z_loss"):
        ct.cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]), z_loss=-1.0)
    with pytest.raises(ValueError, match="softcap"):
        ct.cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]), softcap=0.0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        ct.cross_entropy([[1.0, 2.0]], torch.tensor([0]))
    with pytest.raises(ValueError, match="empty class dimension"):
        ct.cross_entropy(torch.randn(2, 0), torch.tensor([0, 1]))


def test_impl_selection_is_explicit():
    assert resolve_impl("auto", torch.device("cpu")) == "cpu"
    assert resolve_impl("auto", torch.device("meta")) == "torch"
    with pytest.raises(ValueError, match="impl must be one of"):
        resolve_impl("fast", torch.device("cpu"))
    with pytest.raises(RuntimeError, match="CPU tensors only"):
        resolve_impl("cpu", torch.device("meta"))

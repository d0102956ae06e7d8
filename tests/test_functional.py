"""The NumPy losses against PyTorch (float64 autograd), hand values, and their own invariants.

Layout of this module:

1. a PyTorch reference for every loss (plain ``torch.nn.functional`` in float64, autograd
   for the gradient);
2. every conformance value of ``reference/semantics.md`` section 8 that these functions cover;
3. the grid: shapes x target kinds x weight x ignore_index x label smoothing x reduction,
   forward and gradient together with a random ``grad_output``;
4. the edge-case table of section 6;
5. finite differences, float16/float32 against float64, z-loss and softcap;
6. hypothesis properties.

Error messages are in ``test_semantics.py``; the threaded and blocked paths of the kernel in
``test_kernel.py``.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import crossent
from crossent import functional as fn

torch = pytest.importorskip("torch")
F = torch.nn.functional

INF = np.inf
NAN = np.nan

# float64 against float64: both sides compute the same formula in a different order.
RTOL64, ATOL64 = 1e-10, 1e-12


def close64(actual, expected, rtol=RTOL64, atol=ATOL64):
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64),
                               np.asarray(expected, dtype=np.float64),
                               rtol=rtol, atol=atol, equal_nan=True)


# --------------------------------------------------------------------------------------------
# 1. PyTorch references (float64 unless told otherwise)
# --------------------------------------------------------------------------------------------


def _t(a, dtype=torch.float64, grad=False):
    t = torch.tensor(np.asarray(a), dtype=dtype)
    return t.requires_grad_(grad) if grad else t


def _backward(xt, loss, grad_output):
    go = torch.ones_like(loss) if grad_output is None else _t(grad_output, loss.dtype)
    loss.backward(go)
    return loss.detach().numpy(), xt.grad.numpy()


def torch_cross_entropy(x, target, weight=None, ignore_index=-100, reduction="mean",
                        label_smoothing=0.0, *, z_loss=0.0, softcap=None, grad_output=None,
                        dtype=torch.float64):
    """``F.cross_entropy`` with z-loss and softcap written out in plain torch.

    softcap: ``z = s * tanh(x / s)`` before the loss; z-loss: ``z_loss * w[y_n] * lse(z_n)**2``
    per element (0 where ignored; ``w[y_n] = 1`` for probability targets), reduced with the
    loss's own reduction and ``'mean'`` denominator.
    """
    x = np.asarray(x)
    target = np.asarray(target)
    xt = _t(x, dtype, grad=True)
    probability = target.shape == x.shape
    tt = _t(target, dtype) if probability else _t(target, torch.int64)
    wt = None if weight is None else _t(weight, dtype)
    z = xt if softcap is None else softcap * torch.tanh(xt / softcap)
    kwargs = dict(weight=wt, ignore_index=ignore_index, label_smoothing=label_smoothing)
    if not z_loss:
        loss = F.cross_entropy(z, tt, reduction=reduction, **kwargs)
    else:
        per = F.cross_entropy(z, tt, reduction="none", **kwargs)
        lse = torch.logsumexp(z, dim=0 if x.ndim == 1 else 1)
        if probability:
            w_y = torch.ones_like(lse)
        else:
            valid = tt != ignore_index
            safe = torch.where(valid, tt, 0)
            w_y = (wt[safe] if wt is not None else torch.ones_like(lse)) * valid
        per = per + z_loss * w_y * lse**2
        if reduction == "none":
            loss = per
        elif reduction == "sum":
            loss = per.sum()
        else:
            loss = per.sum() / (lse.numel() if probability else w_y.sum())
    return _backward(xt, loss, grad_output)


def torch_nll(x, target, weight=None, ignore_index=-100, reduction="mean", grad_output=None):
    xt = _t(x, grad=True)
    wt = None if weight is None else _t(weight)
    loss = F.nll_loss(xt, _t(target, torch.int64), weight=wt, ignore_index=ignore_index,
                      reduction=reduction)
    return _backward(xt, loss, grad_output)


def torch_bce(x, target, weight=None, reduction="mean", grad_output=None, dtype=torch.float64):
    xt = _t(x, dtype, grad=True)
    wt = None if weight is None else _t(weight, dtype)
    loss = F.binary_cross_entropy(xt, _t(target, dtype), weight=wt, reduction=reduction)
    return _backward(xt, loss, grad_output)


def torch_bce_logits(x, target, weight=None, reduction="mean", pos_weight=None,
                     grad_output=None, dtype=torch.float64):
    xt = _t(x, dtype, grad=True)
    wt = None if weight is None else _t(weight, dtype)
    pw = None if pos_weight is None else _t(pos_weight, dtype)
    loss = F.binary_cross_entropy_with_logits(xt, _t(target, dtype), weight=wt,
                                              reduction=reduction, pos_weight=pw)
    return _backward(xt, loss, grad_output)


def torch_kl(x, target, reduction="mean", log_target=False, grad_output=None):
    xt = _t(x, grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's 'mean' warning
        loss = F.kl_div(xt, _t(target), reduction=reduction, log_target=log_target)
    return _backward(xt, loss, grad_output)


def random_grad_output(rng, loss):
    """A random upstream gradient of the loss's shape (a scalar for reduced losses)."""
    shape = np.shape(loss)
    return rng.uniform(-2.0, 2.0, size=shape) if shape else float(rng.uniform(0.5, 2.0))


# --------------------------------------------------------------------------------------------
# 2. Conformance values (reference/semantics.md section 8), shared inputs X, Y, W, P
# --------------------------------------------------------------------------------------------

X = np.array([[1.0, 2.0, 3.0], [1.0, -1.0, 0.0], [0.5, 0.5, 4.0]])
Y = np.array([2, 0, 1])
W = np.array([1.0, 2.0, 0.5])
P = np.array([[0.1, 0.2, 0.7], [0.9, 0.05, 0.05], [0.3, 0.3, 0.4]])
Z = np.array([[2.0, 4.0, 0.5]])  # the "explain" example


@pytest.mark.parametrize(
    ("case", "call", "expected"),
    [
        (1, lambda: fn.cross_entropy(Z, [0]), 2.153178207),
        (2, lambda: fn.cross_entropy(Z, [1]), 0.1531782071),
        (3, lambda: fn.cross_entropy(Z, [2]), 3.653178207),
        (4, lambda: fn.nll_loss(np.log([[0.6, 0.2, 0.2]]), [2]), 1.609437912),
        (5, lambda: fn.softmax(np.array([-9.0, 5.0, 10.0])),
         [5.565297725e-09, 0.006692850887, 0.9933071435]),
        (6, lambda: fn.log_softmax(np.array([2.0, 4.0, 0.5])),
         [-2.153178207, -0.1531782071, -3.653178207]),
        (7, lambda: fn.cross_entropy_with_grad(Z, [0])[1][0],
         [-0.8838854653, 0.8579768106, 0.02590865472]),
        (8, lambda: fn.cross_entropy(X, Y, reduction="none"),
         [0.4076059644, 0.4076059644, 3.55864126]),
        (9, lambda: fn.cross_entropy(X, Y), 1.457951063),
        (9, lambda: fn.cross_entropy(X, Y, reduction="sum"), 4.373853189),
        (10, lambda: fn.cross_entropy(X, Y, weight=W), 2.208197562),
        (10, lambda: fn.cross_entropy(X, Y, weight=W, reduction="none"),
         [0.2038029822, 0.4076059644, 7.117282521]),
        (11, lambda: fn.cross_entropy(X, Y, ignore_index=1), 0.4076059644),
        (12, lambda: fn.cross_entropy(X, Y, label_smoothing=0.1), 1.485728841),
        (12, lambda: fn.cross_entropy(X, Y, label_smoothing=0.1, reduction="none"),
         [0.5076059644, 0.5076059644, 3.441974594]),
        (13, lambda: fn.cross_entropy(X, Y, W, label_smoothing=0.1), 2.197458626),
        (14, lambda: fn.cross_entropy(X, Y, W, ignore_index=1, label_smoothing=0.1),
         0.6191396291),
        (14, lambda: fn.cross_entropy(X, Y, W, ignore_index=1, label_smoothing=0.1,
                                      reduction="sum"), 0.9287094437),
        (15, lambda: fn.cross_entropy(X, P, reduction="none"),
         [0.8076059644, 0.5576059644, 2.15864126]),
        (15, lambda: fn.cross_entropy(X, P), 1.17461773),
        (16, lambda: fn.cross_entropy(X, P, weight=W), 1.601255523),
        (17, lambda: fn.cross_entropy(X, P, label_smoothing=0.1), 1.230728841),
        (18, lambda: fn.cross_entropy(X, np.eye(3)[Y], weight=W), 2.576230489),
        (19, lambda: fn.cross_entropy(X, [-100] * 3), NAN),
        (19, lambda: fn.cross_entropy(np.zeros((0, 3)), np.zeros(0, dtype=np.int64)), NAN),
        (19, lambda: fn.cross_entropy(np.zeros((0, 3)), np.zeros(0, dtype=np.int64),
                                      reduction="sum"), 0.0),
        (20, lambda: fn.cross_entropy(np.array([[0.0, -INF, 1.0]]), [0]), 1.313261688),
        (20, lambda: fn.cross_entropy(np.array([[0.0, -INF, 1.0]]), [0], label_smoothing=0.1),
         INF),
        (21, lambda: fn.cross_entropy(np.array([[[1.0, 2.0], [0.0, 1.0], [3.0, -1.0]]]),
                                      [[2, 0]], reduction="none"),
         [[0.1698460196, 0.3490122168]]),
        (21, lambda: fn.cross_entropy(np.array([[[1.0, 2.0], [0.0, 1.0], [3.0, -1.0]]]),
                                      [[2, 0]], weight=[1.0, 2.0, 3.0]), 0.2146375689),
        (22, lambda: fn.cross_entropy(np.array([2.0, 4.0, 0.5]), np.array(1)), 0.1531782071),
        (23, lambda: fn.binary_cross_entropy([0.9, 0.2, 0.5, 1.0, 0.0],
                                             [1.0, 0.0, 1.0, 0.0, 1.0], reduction="none"),
         [0.1053605157, 0.2231435513, 0.6931471806, 100.0, 100.0]),
        (23, lambda: fn.binary_cross_entropy([0.9, 0.2, 0.5, 1.0, 0.0],
                                             [1.0, 0.0, 1.0, 0.0, 1.0]), 40.20433025),
        (24, lambda: fn.binary_cross_entropy([0.9, 0.2, 0.5, 1.0, 0.0],
                                             [1.0, 0.0, 1.0, 0.0, 1.0],
                                             weight=[1.0, 2.0, 0.5, 1.0, 3.0]), 80.17964424),
        (25, lambda: fn.binary_cross_entropy_with_logits(
            [2.0, -1.0, 0.0, 100.0, -100.0], [1.0, 0.0, 1.0, 0.0, 1.0], reduction="none"),
         [0.126928011, 0.3132616875, 0.6931471806, 100.0, 100.0]),
        (25, lambda: fn.binary_cross_entropy_with_logits(
            [2.0, -1.0, 0.0, 100.0, -100.0], [1.0, 0.0, 1.0, 0.0, 1.0], reduction="none",
            pos_weight=3.0),
         [0.3807840331, 0.3132616875, 2.079441542, 100.0, 300.0]),
        (26, lambda: fn.binary_cross_entropy_with_logits(
            [[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]], [[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]],
            pos_weight=[1.0, 2.0, 3.0]), 1.0987546),
        (27, lambda: fn.kl_div(fn.log_softmax(np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]])),
                               [[0.2, 0.3, 0.5], [0.5, 0.5, 0.0]], reduction="batchmean"),
         0.4681252419),
        (27, lambda: fn.kl_div(fn.log_softmax(np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]])),
                               [[0.2, 0.3, 0.5], [0.5, 0.5, 0.0]], reduction="sum"),
         0.9362504838),
        (38, lambda: fn.logsumexp(np.array([1.0, 2.0, 3.0])), 3.40760596444438),
    ],
)
def test_conformance_values(case, call, expected):
    """semantics.md section 8: values printed by PyTorch (float64) and SciPy, 10 digits."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none of these calls may warn
        result = call()
    # the reference values have 10 significant digits; case 26 has 8
    close64(result, expected, rtol=5e-8 if case == 26 else 5e-10, atol=0)


def test_conformance_27_mean_warns_and_divides_by_numel():
    """Case 27 'mean': the sum over all 6 elements / 6, with PyTorch's warning."""
    lq = fn.log_softmax(np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]]))
    with pytest.warns(UserWarning, match="batchmean"):
        result = fn.kl_div(lq, [[0.2, 0.3, 0.5], [0.5, 0.5, 0.0]], reduction="mean")
    close64(result, 0.1560417473, rtol=5e-10, atol=0)


def test_conformance_1_float32():
    """Case 1 in float32 is 2.153178215 (float32 rounding of the float64 value)."""
    loss = fn.cross_entropy(Z.astype(np.float32), [0])
    assert loss.dtype == np.float32
    assert loss == pytest.approx(2.153178215, rel=1e-7)


def test_index_and_one_hot_agree_without_weight_but_not_with_it():
    """Cases 10 and 18: probability 'mean' divides by N, index 'mean' by sum w[y]."""
    plain_index = fn.cross_entropy(X, Y)
    plain_prob = fn.cross_entropy(X, np.eye(3)[Y])
    close64(plain_index, plain_prob)
    assert fn.cross_entropy(X, Y, weight=W) != pytest.approx(
        fn.cross_entropy(X, np.eye(3)[Y], weight=W), rel=1e-3)


def test_weighted_mean_is_not_the_mean_of_none():
    """pytorch#50528: 'mean' divides by sum w[y_n], not by N (section 6, last row)."""
    none = fn.cross_entropy(X, Y, W, reduction="none")
    mean = fn.cross_entropy(X, Y, W)
    assert mean == pytest.approx(none.sum() / W[Y].sum(), rel=1e-15)
    assert abs(mean - none.mean()) > 0.1


def test_with_grad_returns_the_same_loss_as_the_plain_call(rng):
    """``f_with_grad`` must not compute a different loss from ``f`` (bitwise equal)."""
    x = rng.standard_normal((7, 5))
    y = rng.integers(0, 5, 7)
    for reduction in ("none", "mean", "sum"):
        plain = fn.cross_entropy(x, y, W.tolist() + [1.0, 1.0], reduction=reduction,
                                 label_smoothing=0.2)
        fused, _ = fn.cross_entropy_with_grad(x, y, W.tolist() + [1.0, 1.0],
                                              reduction=reduction, label_smoothing=0.2)
        np.testing.assert_array_equal(plain, fused)


def test_inputs_are_not_modified(rng):
    """The fused pass writes its gradient into a fresh array, never into the logits."""
    x = rng.standard_normal((6, 4))
    t = rng.dirichlet(np.ones(4), size=6)
    x0, t0 = x.copy(), t.copy()
    fn.cross_entropy_with_grad(x, t, label_smoothing=0.1, softcap=3.0, z_loss=1e-3)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(t, t0)


# --------------------------------------------------------------------------------------------
# 3. The grid against F.cross_entropy (float64, forward and gradient)
# --------------------------------------------------------------------------------------------

# (shape, why it is in the grid)
SMALL_SHAPES = [
    ((1, 2), "tiny: one row, two classes, the smallest softmax there is"),
    ((3,), "unbatched (C,): classes on axis 0 and a 0-d target"),
    ((6, 7), "small, odd C: no SIMD-friendly width"),
    ((2, 5, 3), "K=1: classes on axis 1 with a trailing axis, not last"),
    ((2, 4, 3, 2), "K=2: two spatial axes are flattened and moved back"),
]
LARGE_SHAPES = [
    ((423, 507), "unaligned rows and columns, several kernel blocks"),
    ((64, 1024), "powers of two, exactly one 2**16-logit block"),
    ((16, 32000), "large vocabulary (Llama 2): one row is bigger than a block"),
]
# ignore_index settings: none of the targets ignored / some at the default -100 /
# a real class (1) ignored, which still sits in every row's softmax (pytorch#63004)
IGNORE = ["none", "default", "class1"]
SMOOTHING = [
    0.0,  # plain cross-entropy
    0.1,  # the usual value: both the target term and the uniform term
    1.0,  # the edge: the target drops out entirely, uniform loss -mean_c log p_c
]
REDUCTIONS = ["none", "mean", "sum"]


def make_case(rng, shape, kind, weighted, ignore):
    """Logits, target, weight and ignore_index for one grid point."""
    x = rng.normal(0.0, 3.0, size=shape)
    class_axis = 0 if len(shape) == 1 else 1
    num_classes = shape[class_axis]
    batch_shape = shape[:class_axis] + shape[class_axis + 1:]
    weight = rng.uniform(0.2, 2.0, size=num_classes) if weighted else None
    ignore_index = -100
    if kind == "prob":
        t = rng.dirichlet(np.ones(num_classes), size=batch_shape)  # classes last
        target = np.moveaxis(t, -1, class_axis) if t.ndim > 1 else t
        return x, target, weight, ignore_index
    target = rng.integers(0, num_classes, size=batch_shape)
    if ignore == "default":
        mask = rng.random(batch_shape) < 0.3
        target = np.where(mask, -100, target)
    elif ignore == "class1":
        ignore_index = 1
    return x, np.asarray(target), weight, ignore_index


def _grid_params(shapes, kinds, weights, ignores, smoothing, reductions):
    for (shape, _why), kind, weighted, ignore, eps, red in itertools.product(
            shapes, kinds, weights, ignores, smoothing, reductions):
        if kind == "prob" and ignore != "none":
            continue  # probability targets have no ignore_index
        yield pytest.param(shape, kind, weighted, ignore, eps, red,
                           id=f"{'x'.join(map(str, shape))}-{kind}-{'w' if weighted else 'nw'}"
                              f"-{ignore}-eps{eps}-{red}")


def check_against_torch(rng, shape, kind, weighted, ignore, eps, reduction, rtol=RTOL64,
                        atol=ATOL64):
    x, target, weight, ii = make_case(rng, shape, kind, weighted, ignore)
    loss = fn.cross_entropy(x, target, weight, ii, reduction, eps)
    go = random_grad_output(rng, loss)
    ours, grad = fn.cross_entropy_with_grad(x, target, weight, ii, reduction, eps,
                                            grad_output=go)
    ref, ref_grad = torch_cross_entropy(x, target, weight, ii, reduction, eps, grad_output=go)
    assert np.shape(ours) == ref.shape
    assert grad.shape == x.shape and grad.dtype == x.dtype
    close64(ours, ref, rtol, atol)
    close64(loss, ref, rtol, atol)
    close64(grad, ref_grad, rtol, atol)


@pytest.mark.parametrize(
    ("shape", "kind", "weighted", "ignore", "eps", "reduction"),
    list(_grid_params(SMALL_SHAPES, ["index", "prob"], [False, True], IGNORE, SMOOTHING,
                      REDUCTIONS)),
)
def test_cross_entropy_grid_small(rng, shape, kind, weighted, ignore, eps, reduction):
    check_against_torch(rng, shape, kind, weighted, ignore, eps, reduction)


@pytest.mark.parametrize(
    ("shape", "kind", "weighted", "ignore", "eps", "reduction"),
    # the large shapes exercise the blocking, not the rules: a plain and a fully loaded
    # combination for each target kind is enough there
    [p for p in _grid_params(LARGE_SHAPES, ["index", "prob"], [False, True],
                             ["none", "default"], [0.0, 0.1], ["none", "mean"])
     if (p.values[2], p.values[3], p.values[4]) in
     {(False, "none", 0.0), (True, "default", 0.1), (True, "none", 0.1)}],
)
def test_cross_entropy_grid_large(rng, shape, kind, weighted, ignore, eps, reduction):
    # summing 32000 terms in another order costs a few ulps more than the small shapes
    check_against_torch(rng, shape, kind, weighted, ignore, eps, reduction, rtol=1e-9)


@pytest.mark.parametrize(("shape", "_why"), SMALL_SHAPES + [((5, 1), "a single class")])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore", IGNORE)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nll_loss_grid(rng, shape, _why, weighted, ignore, reduction):
    x, target, weight, ii = make_case(rng, shape, "index", weighted, ignore)
    if shape == (5, 1) and ignore == "class1":
        ii = 0  # the only class
    logp = fn.log_softmax(x, axis=0 if x.ndim == 1 else 1)
    loss = fn.nll_loss(logp, target, weight, ii, reduction)
    go = random_grad_output(rng, loss)
    ours, grad = fn.nll_loss_with_grad(logp, target, weight, ii, reduction, grad_output=go)
    ref, ref_grad = torch_nll(logp, target, weight, ii, reduction, grad_output=go)
    close64(loss, ref)
    close64(ours, ref)
    close64(grad, ref_grad)


def test_nll_loss_does_not_check_its_input():
    """As in PyTorch, nll_loss takes any numbers: [[0.1, 0.7, 0.2]], y=1 gives -0.7."""
    assert fn.nll_loss([[0.1, 0.7, 0.2]], [1]) == pytest.approx(-0.7, rel=1e-15)


BINARY_SHAPES = [
    ((5,), "1-D"),
    ((4, 3), "(N, C): pos_weight broadcasts against the last axis"),
    ((2, 3, 4), "3-D: weight broadcast from a trailing shape"),
]


@pytest.mark.parametrize(("shape", "_why"), BINARY_SHAPES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_grid(rng, shape, _why, weighted, reduction):
    x = rng.uniform(0.01, 0.99, size=shape)
    x.flat[0] = 0.0  # the -100 clamp: loss 100 * y, gradient clamped at 1e12
    x.flat[-1] = 1.0
    t = rng.uniform(0.0, 1.0, size=shape)
    w = rng.uniform(0.2, 2.0, size=shape[-1:]) if weighted else None
    loss = fn.binary_cross_entropy(x, t, w, reduction)
    go = random_grad_output(rng, loss)
    ours, grad = fn.binary_cross_entropy_with_grad(x, t, w, reduction, grad_output=go)
    ref, ref_grad = torch_bce(x, t, w, reduction, grad_output=go)
    close64(loss, ref)
    close64(ours, ref)
    close64(grad, ref_grad)


@pytest.mark.parametrize(("shape", "_why"), BINARY_SHAPES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("pos_weighted", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_with_logits_grid(rng, shape, _why, weighted, pos_weighted,
                                               reduction):
    x = rng.normal(0.0, 5.0, size=shape)
    x.flat[0] = 60.0  # exp(60) overflows nothing in the stable form
    x.flat[-1] = -60.0
    t = rng.uniform(0.0, 1.0, size=shape)
    w = rng.uniform(0.2, 2.0, size=shape[-1:]) if weighted else None
    pw = rng.uniform(0.5, 3.0, size=shape[-1:]) if pos_weighted else None
    loss = fn.binary_cross_entropy_with_logits(x, t, w, reduction, pw)
    go = random_grad_output(rng, loss)
    ours, grad = fn.binary_cross_entropy_with_logits_with_grad(x, t, w, reduction, pw,
                                                               grad_output=go)
    ref, ref_grad = torch_bce_logits(x, t, w, reduction, pw, grad_output=go)
    close64(loss, ref)
    close64(ours, ref)
    close64(grad, ref_grad)


@pytest.mark.parametrize(("shape", "_why"), [((4,), "1-D: batchmean divides by C"),
                                             ((3, 5), "(N, C)"),
                                             ((2, 3, 4), "3-D: batchmean divides by N")])
@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("reduction", ["none", "batchmean", "mean", "sum"])
def test_kl_div_grid(rng, shape, _why, log_target, reduction):
    logq = fn.log_softmax(rng.normal(size=shape))
    t = rng.dirichlet(np.ones(shape[-1]), size=shape[:-1])
    if not log_target:
        t.flat[0] = 0.0  # 0 log 0 = 0 (a log-target of -inf is where we differ: see below)
    target = np.log(t) if log_target else t
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # 'mean' warns, tested elsewhere
        loss = fn.kl_div(logq, target, reduction, log_target)
        go = random_grad_output(rng, loss)
        ours, grad = fn.kl_div_with_grad(logq, target, reduction, log_target, grad_output=go)
    ref, ref_grad = torch_kl(logq, target, reduction, log_target, grad_output=go)
    close64(loss, ref)
    close64(ours, ref)
    close64(grad, ref_grad)


@pytest.mark.parametrize("func", ["softmax", "log_softmax", "logsumexp"])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_softmax_family_against_torch(rng, func, axis):
    x = rng.normal(0.0, 10.0, size=(5, 7, 3))
    ours = getattr(fn, func)(x, axis=axis)
    xt = _t(x)
    ref = {"softmax": torch.softmax, "log_softmax": torch.log_softmax,
           "logsumexp": torch.logsumexp}[func](xt, axis).numpy()
    close64(ours, ref)


def test_logsumexp_keepdims(rng):
    x = rng.normal(size=(3, 4))
    out = fn.logsumexp(x, axis=1, keepdims=True)
    assert out.shape == (3, 1)
    close64(out[:, 0], torch.logsumexp(_t(x), 1).numpy())


TORCH_SOFTMAX_FAMILY = {"softmax": torch.softmax, "log_softmax": torch.log_softmax,
                        "logsumexp": torch.logsumexp}


def assert_same_as_torch(ours, ref):
    """Shape, dtype and values (NaN where torch has NaN) of a torch result."""
    ref_np = ref.numpy()
    assert np.shape(ours) == ref_np.shape
    assert np.asarray(ours).dtype == ref_np.dtype
    close64(ours, ref_np)


# (shape, axes to try, why)
EMPTY_AND_0D = [
    ((), [0, -1], "0-d: PyTorch's one-element vector along dim 0 / -1"),
    ((0,), [0, -1], "empty 1-D: logsumexp of an empty sum is -inf"),
    ((0, 3), [0, 1, -1], "no rows: softmax empty, logsumexp over axis 0 is -inf per column"),
    ((3, 0), [0, 1], "no classes: logsumexp over the empty axis is -inf per row"),
    ((2, 0, 3), [0, 1, 2], "an empty middle axis"),
]


@pytest.mark.parametrize("func", list(TORCH_SOFTMAX_FAMILY))
@pytest.mark.parametrize(("shape", "axes", "_why"), EMPTY_AND_0D,
                         ids=[str(s) for s, _, _ in EMPTY_AND_0D])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_softmax_family_empty_and_0d_like_torch(rng, func, shape, axes, _why, dtype):
    x = rng.normal(size=shape).astype(dtype)
    for axis in axes:
        ours = getattr(fn, func)(x, axis=axis)
        assert_same_as_torch(ours, TORCH_SOFTMAX_FAMILY[func](torch.from_numpy(x), axis))
    if func == "logsumexp":
        for axis in axes:
            ours = fn.logsumexp(x, axis=axis, keepdims=True)
            assert_same_as_torch(ours, torch.logsumexp(torch.from_numpy(x), axis, keepdim=True))


@pytest.mark.parametrize("func", list(TORCH_SOFTMAX_FAMILY))
@pytest.mark.parametrize("value", [2.5, -7.0, INF, -INF, NAN])
def test_softmax_family_of_a_0d_value(func, value):
    """softmax of a finite 0-d value is 1, log_softmax 0, logsumexp the value itself;
    infinite and NaN values give torch's NaN (softmax: inf - inf) or the value (lse)."""
    ours = getattr(fn, func)(np.array(value))
    ref = TORCH_SOFTMAX_FAMILY[func](torch.tensor(value, dtype=torch.float64), 0)
    assert_same_as_torch(ours, ref)
    if np.isfinite(value):
        assert float(ours) == {"softmax": 1.0, "log_softmax": 0.0, "logsumexp": value}[func]


@pytest.mark.parametrize(("shape", "axis"), [
    ((2, 3, 4), (0, 1)),
    ((2, 3, 4), (0, 2)),
    ((2, 3, 4), (2, 0)),  # order does not matter
    ((2, 3, 4), (-1, -3)),
    ((2, 3, 4), [1, 2]),  # a list, as torch accepts
    ((2, 3, 4), (0, 1, 2)),  # every axis: a scalar
    ((2, 3, 4), (1,)),
    ((5, 0, 2), (1, 2)),  # an empty axis among them: -inf
    ((0, 4), (0, 1)),
    ((), ()),  # torch accepts dim=() on a 0-d tensor
    ((), (0,)),
])
@pytest.mark.parametrize("keepdims", [False, True])
def test_logsumexp_over_a_tuple_of_axes_like_torch(rng, shape, axis, keepdims):
    x = rng.normal(0.0, 10.0, size=shape)
    if x.size:
        x.flat[0] = -INF  # one -inf entry changes nothing but its own term
    ours = fn.logsumexp(x, axis=axis, keepdims=keepdims)
    assert_same_as_torch(ours, torch.logsumexp(_t(x), axis, keepdim=keepdims))


@pytest.mark.parametrize(("call", "torch_call"), [
    (lambda x: fn.logsumexp(x, axis=3), lambda x: torch.logsumexp(x, 3)),
    (lambda x: fn.logsumexp(x, axis=(0, -4)), lambda x: torch.logsumexp(x, (0, -4))),
    (lambda x: fn.softmax(x, axis=-4), lambda x: torch.softmax(x, -4)),
    (lambda x: fn.log_softmax(x[0, 0, 0], axis=1), lambda x: torch.log_softmax(x[0, 0, 0], 1)),
    (lambda x: fn.logsumexp(x, axis=(1, 1)), lambda x: torch.logsumexp(x, (1, 1))),
    (lambda x: fn.logsumexp(x, axis=(0, -3)), lambda x: torch.logsumexp(x, (0, -3))),
    (lambda x: fn.logsumexp(x, axis=()), lambda x: torch.logsumexp(x, ())),
    (lambda x: fn.softmax(x, axis=(0, 1)), lambda x: torch.softmax(x, (0, 1))),
    (lambda x: fn.logsumexp(x, axis=None), lambda x: torch.logsumexp(x, None)),
], ids=["lse-out-of-range", "lse-tuple-out-of-range", "softmax-out-of-range",
        "0d-axis-1", "lse-duplicate", "lse-duplicate-negative", "lse-empty-tuple-nd",
        "softmax-tuple", "lse-none"])
def test_softmax_family_axis_errors_have_torchs_type(call, torch_call):
    """Each bad axis raises the exception type PyTorch raises for the same dim."""
    x = np.zeros((2, 3, 4))
    with pytest.raises(Exception) as theirs:
        torch_call(torch.zeros(2, 3, 4))
    with pytest.raises(type(theirs.value)) as ours:
        call(x)
    assert "axis" in str(ours.value)


# --------------------------------------------------------------------------------------------
# 4. Edge cases: semantics.md section 6
# --------------------------------------------------------------------------------------------


def test_softmax_family_is_stable_for_huge_logits():
    """Logits of magnitude 1e30: no overflow, the max-shift makes them ordinary."""
    x = np.array([[1e30, -1e30, 0.0], [1e30, 1e30, 0.0]])
    close64(fn.softmax(x, axis=1), [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    close64(fn.log_softmax(x, axis=1), [[0.0, -2e30, -1e30], [-np.log(2), -np.log(2), -1e30]])
    close64(fn.logsumexp(x, axis=1), [1e30, 1e30])
    loss, grad = fn.cross_entropy_with_grad(x, [1, 2], reduction="none")
    close64(loss, [2e30, 1e30], rtol=1e-15)
    close64(grad, [[1.0, -1.0, 0.0], [0.5, 0.5, -1.0]])


def test_softmax_family_with_minus_inf_entries():
    """-inf among finite entries: p = 0, log p = -inf; all -inf: NaN (softmax) / -inf (lse)."""
    x = np.array([[-INF, 0.0, 1.0], [-INF, -INF, -INF], [INF, 0.0, 1.0]])
    sm = fn.softmax(x, axis=1)
    close64(sm[0], [0.0, 0.2689414214, 0.7310585786], rtol=1e-9)
    assert np.isnan(sm[1]).all() and np.isnan(sm[2]).all()  # as torch: all -inf, or +inf
    lsm = fn.log_softmax(x, axis=1)
    assert lsm[0, 0] == -INF and np.isfinite(lsm[0, 1:]).all()
    assert np.isnan(lsm[1]).all()
    lse = fn.logsumexp(x, axis=1)
    close64(lse, [1.3132616875, -INF, INF], rtol=1e-9)
    ref = torch.logsumexp(_t(x), 1).numpy()
    close64(lse, ref)


def test_ce_row_all_minus_inf_is_nan():
    loss, grad = fn.cross_entropy_with_grad(np.array([[-INF, -INF, -INF], [1.0, 2.0, 3.0]]),
                                            [0, 1], reduction="none")
    assert np.isnan(loss[0]) and np.isnan(grad[0]).all()
    ref, ref_grad = torch_cross_entropy(np.array([[-INF, -INF, -INF], [1.0, 2.0, 3.0]]),
                                        [0, 1], reduction="none")
    close64(loss, ref)
    close64(grad, ref_grad)  # the other row is untouched


def test_ce_minus_inf_on_a_non_target_class():
    """Index path: finite, gradient 0 there; eps > 0: inf (smoothing sums -log p)."""
    x = np.array([[0.0, -INF, 1.0]])
    loss, grad = fn.cross_entropy_with_grad(x, [0])
    ref, ref_grad = torch_cross_entropy(x, [0])
    close64(loss, 1.313261688, rtol=1e-9)
    close64(grad, ref_grad)
    assert grad[0, 1] == 0.0
    assert fn.cross_entropy(x, [0], label_smoothing=0.1) == INF


def test_ce_probability_target_zero_on_minus_inf_is_finite():
    """Where PyTorch gives NaN only through 0 * log 0, crossent gives the right value.

    Probability target [1, 0, 0] on logits [0, -inf, 1] is the index target 0: 1.3132616875.
    """
    x = np.array([[0.0, -INF, 1.0]])
    ref, _ = torch_cross_entropy(x, np.array([[1.0, 0.0, 0.0]]))
    assert np.isnan(ref)  # PyTorch's NaN, the documented difference
    loss, grad = fn.cross_entropy_with_grad(x, np.array([[1.0, 0.0, 0.0]]))
    close64(loss, 1.313261688, rtol=1e-9)
    _, index_grad = fn.cross_entropy_with_grad(x, [0])
    close64(grad, index_grad)
    # and with a weight of 0 on the -inf class under smoothing, the smoothing term is finite
    w = np.array([1.0, 0.0, 1.0])
    smoothed = fn.cross_entropy(x, [0], weight=w, label_smoothing=0.3)
    expected = fn.cross_entropy(np.array([[0.0, -50.0, 1.0]]), [0], weight=w,
                                label_smoothing=0.3)  # -50 is "-inf" to 20 digits
    close64(smoothed, expected, rtol=1e-12)


def test_ce_minus_inf_on_the_target_class():
    x = np.array([[0.0, -INF, 1.0]])
    loss, grad = fn.cross_entropy_with_grad(x, [1])
    assert loss == INF
    close64(grad, [[0.2689414214, -1.0, 0.7310585786]], rtol=1e-9)
    close64(grad, torch_cross_entropy(x, [1])[1])


@pytest.mark.parametrize("bad", [INF, NAN])
def test_ce_plus_inf_or_nan_makes_the_row_nan(bad):
    x = np.array([[0.0, bad, 1.0], [1.0, 2.0, 3.0]])
    loss, grad = fn.cross_entropy_with_grad(x, [0, 2], reduction="none")
    ref, ref_grad = torch_cross_entropy(x, [0, 2], reduction="none")
    assert np.isnan(loss[0]) and np.isnan(grad[0]).all()
    close64(loss, ref)
    close64(grad, ref_grad)
    assert np.isnan(fn.cross_entropy(x, [0, 2]))  # and the mean


@pytest.mark.parametrize("bad", [-INF, INF, NAN])
def test_ignored_row_with_non_finite_logits_has_zero_gradient(bad):
    """PyTorch: finite loss but a NaN gradient row (pytorch#11551); crossent: exactly 0."""
    x = np.array([[bad, 0.0, 1.0], [1.0, 2.0, 3.0]])
    loss, grad = fn.cross_entropy_with_grad(x, [-100, 2], reduction="none")
    close64(loss, [0.0, 0.4076059644], rtol=1e-9)
    np.testing.assert_array_equal(grad[0], 0.0)
    close64(grad[1], torch_cross_entropy(x, [-100, 2], reduction="none")[1][1])


def test_ignore_index_equal_to_a_real_class():
    """Only that target is skipped; the class still sits in every row's softmax."""
    loss, grad = fn.cross_entropy_with_grad(X, Y, ignore_index=1, reduction="none")
    close64(loss, [0.4076059644, 0.4076059644, 0.0], rtol=1e-9)
    assert (grad[:2, 1] > 0).all()  # class 1 still takes probability in rows 0 and 1
    np.testing.assert_array_equal(grad[2], 0.0)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_all_targets_ignored(eps):
    """'mean' is 0/0 = nan (also with smoothing), 'sum' 0, the gradient all 0."""
    y = np.full(3, -100)
    assert np.isnan(fn.cross_entropy(X, y, label_smoothing=eps))
    loss, grad = fn.cross_entropy_with_grad(X, y, reduction="sum", label_smoothing=eps)
    assert loss == 0.0
    np.testing.assert_array_equal(grad, 0.0)
    _, grad = fn.cross_entropy_with_grad(X, y, label_smoothing=eps)  # mean: 0 / 0 scale
    ref_grad = torch_cross_entropy(X, y, label_smoothing=eps)[1]
    close64(grad, ref_grad)


@pytest.mark.parametrize(
    "func",
    [
        lambda red: fn.cross_entropy_with_grad(np.zeros((0, 4)), np.zeros(0, np.int64),
                                               reduction=red),
        lambda red: fn.cross_entropy_with_grad(np.zeros((0, 4)), np.zeros((0, 4)),
                                               reduction=red),
        lambda red: fn.cross_entropy_with_grad(np.zeros((0, 4, 2)), np.zeros((0, 2), np.int64),
                                               reduction=red),
        lambda red: fn.nll_loss_with_grad(np.zeros((0, 4)), np.zeros(0, np.int64),
                                          reduction=red),
        lambda red: fn.binary_cross_entropy_with_grad(np.zeros(0), np.zeros(0), reduction=red),
        lambda red: fn.binary_cross_entropy_with_logits_with_grad(np.zeros((0, 3)),
                                                                  np.zeros((0, 3)),
                                                                  reduction=red),
        lambda red: fn.kl_div_with_grad(np.zeros((0, 3)), np.zeros((0, 3)),
                                        reduction="batchmean" if red == "mean" else red),
    ],
    ids=["ce-index", "ce-prob", "ce-kdim", "nll", "bce", "bce-logits", "kl"],
)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch(func, reduction):
    """N = 0: 'mean' nan, 'sum' 0, 'none' an empty array; the gradient is empty."""
    loss, grad = func(reduction)
    if reduction == "mean":
        assert np.isnan(loss)
    elif reduction == "sum":
        assert loss == 0.0
    else:
        assert np.shape(loss)[0] == 0
    assert grad.size == 0


def test_label_smoothing_with_ignore_index_masks_the_smoothing_term(rng):
    """pytorch#73205: an ignored element adds neither term and is not in the denominator."""
    x = rng.normal(size=(5, 4))
    y = np.array([0, -100, 3, -100, 1])
    loss = fn.cross_entropy(x, y, W.tolist() + [1.5], label_smoothing=0.2)
    kept = fn.cross_entropy(x[[0, 2, 4]], y[[0, 2, 4]], W.tolist() + [1.5],
                            label_smoothing=0.2)
    close64(loss, kept)


def test_bce_at_exact_zero_and_one():
    """The log is clamped at -100: at most 100 per element; the gradient is +-1e12."""
    x = np.array([0.0, 0.0, 1.0, 0.0, 1e-44, 1e-40])
    t = np.array([1.0, 0.5, 0.0, 0.0, 1.0, 1.0])
    loss, grad = fn.binary_cross_entropy_with_grad(x, t, reduction="none")
    close64(loss, [100.0, 50.0, 100.0, 0.0, 100.0, 92.1034037198], rtol=1e-10)
    close64(grad, torch_bce(x, t, reduction="none")[1])
    # PyTorch's clamp 1e-12 is a float32 constant, 9.99999996e-13, in float64 too
    assert grad[0] == -1000000003995.8029
    assert grad[2] == 1000000003995.8029


def test_bce_with_logits_infinite_logits():
    """(+inf, 1) and (-inf, 0) cost 0 and (-inf, y > 0) costs inf here; PyTorch gives NaN
    for all three through 0 * inf.  (+inf, 0) is inf in both; gradients are PyTorch's."""
    x = np.array([INF, -INF, INF, -INF, -INF, 100.0])
    t = np.array([1.0, 0.0, 0.0, 1.0, 0.5, 0.0])
    loss, grad = fn.binary_cross_entropy_with_logits_with_grad(x, t, reduction="none")
    np.testing.assert_array_equal(loss, [0.0, 0.0, INF, INF, INF, 100.0])
    ref, ref_grad = torch_bce_logits(x, t, reduction="none")
    np.testing.assert_array_equal(grad, ref_grad)
    np.testing.assert_array_equal(grad, [0.0, 0.0, 1.0, -1.0, -0.5, 1.0])
    assert np.isnan(ref[[0, 1, 3, 4]]).all()  # where we differ
    np.testing.assert_array_equal(ref[[2, 5]], loss[[2, 5]])  # where we agree
    pw_loss = fn.binary_cross_entropy_with_logits(np.array([-100.0]), np.array([1.0]),
                                                  reduction="sum", pos_weight=3.0)
    assert pw_loss == 300.0  # no clamp on the logit side


def test_bce_with_logits_does_not_range_check_targets():
    """A target of 2 is accepted (-0.0259 for z = 4), as in PyTorch."""
    loss = fn.binary_cross_entropy_with_logits([4.0], [2.0])
    close64(loss, torch_bce_logits([4.0], [2.0])[0])
    assert loss < 0


def test_kl_div_zero_target_on_minus_inf_input_is_zero():
    """t = 0 adds 0 even where log q = -inf (PyTorch: NaN); t < 0 is NaN as in PyTorch."""
    x = np.array([[-INF, -0.5, -1.0]])
    assert fn.kl_div(x, [[0.0, 0.5, 0.5]], reduction="sum") == pytest.approx(
        0.5 * np.log(0.5) - 0.5 * -0.5 + 0.5 * np.log(0.5) - 0.5 * -1.0, rel=1e-14)
    assert fn.kl_div(x, [[-INF, np.log(0.5), np.log(0.5)]], reduction="sum",
                     log_target=True) == pytest.approx(
        0.5 * (np.log(0.5) + 0.5) + 0.5 * (np.log(0.5) + 1.0), rel=1e-14)
    assert np.isnan(fn.kl_div([[0.0, 0.0]], [[-0.1, 1.1]], reduction="sum"))


KL_INPUTS = [-INF, INF, NAN, -1.5, 0.0, 2.0]  # 2.0: finite but no log-probability
KL_TARGETS = {False: [0.0, 0.3, 1.0, INF, NAN, -0.2],
              True: [-INF, np.log(0.3), 0.0, -800.0, INF, NAN]}  # -800: exp underflows to 0


@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_special_values_against_torch(log_target):
    """Every pair of special input and target values, element by element: PyTorch's loss
    and gradient, except the documented ``0 * log 0`` cases (target probability 0 on an
    input of -inf; with log_target also on a finite input), where the loss is 0 and PyTorch
    says NaN.  An input of +inf or NaN with target probability 0 is NaN, as in PyTorch."""
    pairs = list(itertools.product(KL_INPUTS, KL_TARGETS[log_target]))
    x = np.array([p[0] for p in pairs])
    t = np.array([p[1] for p in pairs])
    loss, grad = fn.kl_div_with_grad(x, t, reduction="none", log_target=log_target)
    ref, ref_grad = torch_kl(x, t, reduction="none", log_target=log_target)
    target_prob_zero = t == (-INF if log_target else 0.0)
    ours_only = target_prob_zero & ((x == -INF) | (np.isfinite(x) & log_target))
    assert np.isnan(ref[ours_only]).all()
    np.testing.assert_array_equal(loss[ours_only], 0.0)
    np.testing.assert_array_equal(loss[~ours_only], ref[~ours_only])  # NaN == NaN here
    np.testing.assert_array_equal(grad, ref_grad)
    plus_inf_or_nan = target_prob_zero & ((x == INF) | np.isnan(x))
    assert plus_inf_or_nan.sum() == 2 and np.isnan(loss[plus_inf_or_nan]).all()


# (input shape, target shape): broadcasting either way, as F.kl_div allows
KL_BROADCASTS = [
    ((2, 3), (3,)),
    ((2, 3), (1, 3)),
    ((2, 3), (2, 1)),
    ((3,), (2, 3)),  # the input broadcasts: its gradient sums over the new axis
    ((2, 3), ()),
    ((), (2, 3)),  # a 0-d input: 'batchmean' divides by 1
    ((1, 3), (2, 3)),
    ((2, 1, 3), (4, 3)),  # both broadcast: the loss is (2, 4, 3)
]


@pytest.mark.parametrize(("x_shape", "t_shape"), KL_BROADCASTS,
                         ids=[f"{a}-{b}" for a, b in KL_BROADCASTS])
@pytest.mark.parametrize("reduction", ["none", "batchmean", "mean", "sum"])
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_broadcasts_like_torch(rng, x_shape, t_shape, reduction, log_target):
    """Loss shape and value, gradient shape and value, and only torch's own warning."""
    x = np.log(rng.uniform(0.05, 1.0, size=x_shape))
    t = rng.uniform(0.0, 1.0, size=t_shape)
    target = np.log(t) if log_target else t
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = fn.kl_div(x, target, reduction, log_target)
        go = random_grad_output(rng, loss)
        ours, grad = fn.kl_div_with_grad(x, target, reduction, log_target, grad_output=go)
    assert all("batchmean" in str(w.message) for w in caught)
    assert bool(caught) == (reduction == "mean")
    ref, ref_grad = torch_kl(x, target, reduction, log_target, grad_output=go)
    assert np.shape(loss) == ref.shape and grad.shape == x.shape == ref_grad.shape
    close64(loss, ref)
    close64(ours, ref)
    close64(grad, ref_grad)


def test_kl_div_target_that_does_not_broadcast():
    """PyTorch: RuntimeError 'The size of tensor a (4) must match'; ours is one too."""
    x, t = np.zeros((2, 3)), np.full((4, 3), 0.5)
    with pytest.raises(RuntimeError):
        F.kl_div(_t(x), _t(t), reduction="sum")
    with pytest.raises(RuntimeError, match=r"broadcast against the input's shape \(2, 3\)"):
        fn.kl_div(x, t, reduction="sum")


@pytest.mark.parametrize("func", ["bce", "bce_logits"])
@pytest.mark.parametrize(("x_shape", "t_shape"), [((2, 3), (3,)), ((2, 3), (1, 3)),
                                                  ((3,), (2, 3)), ((2, 3), ()),
                                                  ((2, 3), (4, 3))])
def test_binary_losses_refuse_other_target_shapes_like_torch(func, x_shape, t_shape):
    """Unlike kl_div, PyTorch's binary losses take no broadcasting: ValueError, always."""
    x, t = np.full(x_shape, 0.5), np.full(t_shape, 0.5)
    ours = {"bce": fn.binary_cross_entropy, "bce_logits": fn.binary_cross_entropy_with_logits}
    theirs = {"bce": F.binary_cross_entropy, "bce_logits": F.binary_cross_entropy_with_logits}
    with pytest.raises(ValueError):
        theirs[func](_t(x), _t(t))
    with pytest.raises(ValueError, match=r"^target must have the input's shape"):
        ours[func](x, t)


@pytest.mark.parametrize("name", ["weight", "pos_weight"])
@pytest.mark.parametrize("w_shape", [(2,), (2, 2, 3)])
def test_binary_weights_that_do_not_broadcast_raise_torchs_type(name, w_shape):
    x, t, w = np.full((2, 3), 0.5), np.full((2, 3), 0.5), np.ones(w_shape)
    with pytest.raises(RuntimeError):
        F.binary_cross_entropy_with_logits(_t(x), _t(t), reduction="none", **{name: _t(w)})
    with pytest.raises(RuntimeError, match=rf"^{name} must broadcast"):
        fn.binary_cross_entropy_with_logits(x, t, reduction="none", **{name: w})
    if name == "weight":
        with pytest.raises(RuntimeError):
            F.binary_cross_entropy(_t(x), _t(t), reduction="none", weight=_t(w))
        with pytest.raises(RuntimeError, match=r"^weight must broadcast"):
            fn.binary_cross_entropy(x, t, reduction="none", weight=w)


@pytest.mark.parametrize(("x_dtype", "t_dtype"), [(np.float32, np.float64),
                                                  (np.float16, np.float32),
                                                  (np.float64, np.float32)])
def test_elementwise_gradients_have_the_inputs_dtype(x_dtype, t_dtype):
    """``input.grad`` has the input's dtype in PyTorch, whatever the target's."""
    x = np.array([[0.2, 0.5], [0.7, 0.9]], x_dtype)
    t = np.array([[0.1, 0.6], [0.3, 1.0]], t_dtype)
    for ours, theirs in [(fn.kl_div_with_grad, F.kl_div),
                         (fn.binary_cross_entropy_with_logits_with_grad,
                          F.binary_cross_entropy_with_logits)]:
        xt = torch.from_numpy(x).requires_grad_(True)
        theirs(xt, torch.from_numpy(t), reduction="sum").backward()
        _, grad = ours(np.log(x) if ours is fn.kl_div_with_grad else x, t, reduction="sum")
        assert grad.dtype == x_dtype == torch.empty(0, dtype=xt.grad.dtype).numpy().dtype


# --------------------------------------------------------------------------------------------
# Class weights: PyTorch's dtype rule, in one home for every NumPy loss
# --------------------------------------------------------------------------------------------

FLOATS = [np.float16, np.float32, np.float64]


def _torch_outcome(call):
    """``('ok', loss dtype)`` or ``('raises', exception type)`` of a torch call."""
    try:
        return "ok", call().detach().numpy().dtype
    except Exception as exc:  # the type is the answer
        return "raises", type(exc)


@pytest.mark.parametrize("x_dtype", FLOATS)
@pytest.mark.parametrize("w_dtype", FLOATS)
@pytest.mark.parametrize("loss", ["ce-index", "ce-kdim", "ce-prob", "nll"])
def test_weight_dtype_rule_like_torch(rng, x_dtype, w_dtype, loss):
    """A weight array of another dtype than the input: refused for class indices (torch:
    RuntimeError), promoted for probability targets; where accepted, torch's loss dtype."""
    shape = (2, 3, 2) if loss == "ce-kdim" else (4, 3)
    x = rng.normal(size=shape).astype(x_dtype)
    w = rng.uniform(0.5, 2.0, 3).astype(w_dtype)
    if loss == "ce-prob":
        target = rng.dirichlet(np.ones(3), size=4).astype(x_dtype)
    else:
        target = rng.integers(0, 3, (2, 2) if loss == "ce-kdim" else 4)
    ours_fn = fn.nll_loss if loss == "nll" else fn.cross_entropy
    theirs_fn = F.nll_loss if loss == "nll" else F.cross_entropy
    tt = torch.from_numpy(target)
    expected = _torch_outcome(lambda: theirs_fn(torch.from_numpy(x), tt, torch.from_numpy(w)))
    if expected[0] == "raises":
        assert expected[1] is RuntimeError
        with pytest.raises(RuntimeError, match=r"^weight must have the input's dtype"):
            ours_fn(x, target, w)
        with pytest.raises(TypeError):  # and the NumPy user's natural type
            ours_fn(x, target, w)
        return
    ours = ours_fn(x, target, w)
    assert np.asarray(ours).dtype == expected[1]
    ref = theirs_fn(_t(x.astype(np.float64)), tt, _t(w.astype(np.float64)))
    np.testing.assert_allclose(float(ours), ref.item(), rtol=2e-3 if np.float16 in (
        x_dtype, w_dtype) else 1e-6)


@pytest.mark.parametrize("x_dtype", FLOATS)
def test_a_weight_list_takes_the_inputs_dtype(rng, x_dtype):
    """A list carries no dtype: converted to the input's (so any input dtype works)."""
    x = rng.normal(size=(4, 3)).astype(x_dtype)
    y = rng.integers(0, 3, 4)
    listed = fn.cross_entropy_with_grad(x, y, [0.5, 1.0, 2.0])
    typed = fn.cross_entropy_with_grad(x, y, np.array([0.5, 1.0, 2.0], x_dtype))
    np.testing.assert_array_equal(listed[0], typed[0])
    np.testing.assert_array_equal(listed[1], typed[1])
    assert fn.nll_loss(x, y, [0.5, 1.0, 2.0]) == fn.nll_loss(x, y, np.array([0.5, 1.0, 2.0],
                                                                              x_dtype))


# --------------------------------------------------------------------------------------------
# Empty inputs: no elements, and no classes either
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "t_shape"), [((0, 0), (0,)), ((0, 3), (0,)),
                                                ((0, 0, 2), (0, 2)), ((0, 3, 0), (0, 0)),
                                                ((0, 0, 0), (0, 0))])
@pytest.mark.parametrize("loss", ["nll", "ce", "ce-weight", "ce-smooth", "ce-prob"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_no_elements_like_torch(shape, t_shape, loss, reduction):
    """(0, 0) and friends: an empty 'none', NaN 'mean', 0 'sum', a gradient of the input's
    shape, exactly as PyTorch (which accepts zero classes when there is no element)."""
    x = np.zeros(shape)
    target = np.zeros(shape) if loss == "ce-prob" else np.zeros(t_shape, np.int64)
    weight = np.ones(shape[1]) if loss == "ce-weight" else None
    eps = 0.1 if loss == "ce-smooth" else 0.0
    if loss == "nll":
        ours = fn.nll_loss_with_grad(x, target, reduction=reduction)
        ref = torch_nll(x, target, reduction=reduction)
    else:
        ours = fn.cross_entropy_with_grad(x, target, weight, reduction=reduction,
                                          label_smoothing=eps)
        ref = torch_cross_entropy(x, target, weight, reduction=reduction, label_smoothing=eps)
    assert np.shape(ours[0]) == ref[0].shape and ours[1].shape == ref[1].shape == shape
    if eps and shape[1] == 0 and reduction == "sum":
        # PyTorch divides its empty smoothing sum by C = 0 (NaN); a sum of no terms is 0
        assert np.isnan(ref[0]) and ours[0] == 0.0
        return
    close64(ours[0], ref[0])


@pytest.mark.parametrize("func", [fn.nll_loss, fn.cross_entropy])
def test_elements_without_classes_are_refused_like_torch(func):
    """(2, 0): every target is out of range (torch: IndexError 'Target 0 is out of bounds')."""
    with pytest.raises(IndexError):
        F.nll_loss(torch.zeros(2, 0), torch.zeros(2, dtype=torch.long))
    with pytest.raises(IndexError, match="at least one class"):
        func(np.zeros((2, 0)), np.zeros(2, np.int64))


def test_kl_div_batchmean_of_empty_is_nan():
    assert np.isnan(fn.kl_div(np.zeros((0, 3)), np.zeros((0, 3)), reduction="batchmean"))


def test_float16_overflow_is_inf_like_pytorch():
    """fp16 [65504, -65504], y = 1: the true loss 131008 is above fp16's max: inf."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # overflow to inf is the answer, not a warning
        loss = fn.cross_entropy(np.array([[65504, -65504]], np.float16), [1])
    assert loss.dtype == np.float16 and loss == INF


def test_float16_large_vocabulary_stays_finite():
    """PyTorch's CPU fp16 log_softmax over zeros(1, 70000) is -inf (pytorch#158310); computing
    in float32 gives log(70000) = 11.156, rounded to fp16."""
    loss = fn.cross_entropy(np.zeros((1, 70000), np.float16), [3])
    assert loss.dtype == np.float16
    assert loss == np.float16(np.log(70000.0))


def test_float16_softmax_underflow():
    """softmax([-9, 5, 10]) in fp16: the first entry underflows to 0 as in PyTorch."""
    out = fn.softmax(np.array([-9.0, 5.0, 10.0], np.float16))
    assert out.dtype == np.float16
    ref = torch.softmax(_t([-9.0, 5.0, 10.0], torch.float16), 0).numpy()
    np.testing.assert_allclose(out.astype(np.float64), ref.astype(np.float64), rtol=1e-3,
                               atol=1e-7)
    assert out[0] == 0.0


# --------------------------------------------------------------------------------------------
# 5. Finite differences, precisions, and the extras (z-loss, softcap)
# --------------------------------------------------------------------------------------------


def numerical_gradient(f, x, h=1e-6):
    """Central differences of the scalar ``f`` at every entry of ``x`` (float64)."""
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        up = f(x)
        x[i] = old - h
        down = f(x)
        x[i] = old
        g[i] = (up - down) / (2 * h)
    return g


FD_CASES = {
    # name: (loss of x, with_grad of x, input sampler)
    "ce-index-weight-smooth-ignore": (
        lambda x: fn.cross_entropy(x, [2, -100, 0], W, label_smoothing=0.3),
        lambda x: fn.cross_entropy_with_grad(x, [2, -100, 0], W, label_smoothing=0.3),
        lambda rng: rng.normal(size=(3, 3)),
    ),
    "ce-prob-weight-smooth-sum": (
        lambda x: fn.cross_entropy(x, P, W, reduction="sum", label_smoothing=0.2),
        lambda x: fn.cross_entropy_with_grad(x, P, W, reduction="sum", label_smoothing=0.2),
        lambda rng: rng.normal(size=(3, 3)),
    ),
    "ce-kdim-zloss-softcap": (
        lambda x: fn.cross_entropy(x, [[2, 0], [1, 1]], z_loss=0.1, softcap=2.0),
        lambda x: fn.cross_entropy_with_grad(x, [[2, 0], [1, 1]], z_loss=0.1, softcap=2.0),
        lambda rng: rng.normal(0, 2, size=(2, 3, 2)),
    ),
    "ce-unbatched": (
        lambda x: fn.cross_entropy(x, np.array(1)),
        lambda x: fn.cross_entropy_with_grad(x, np.array(1)),
        lambda rng: rng.normal(size=4),
    ),
    "bce-weight": (
        lambda x: fn.binary_cross_entropy(x, [[0.2, 1.0], [0.0, 0.7]], [2.0, 0.5]),
        lambda x: fn.binary_cross_entropy_with_grad(x, [[0.2, 1.0], [0.0, 0.7]], [2.0, 0.5]),
        lambda rng: rng.uniform(0.1, 0.9, size=(2, 2)),
    ),
    "bce-logits-pos-weight": (
        lambda x: fn.binary_cross_entropy_with_logits(x, [[0.2, 1.0], [0.0, 0.7]],
                                                      pos_weight=[3.0, 0.5]),
        lambda x: fn.binary_cross_entropy_with_logits_with_grad(
            x, [[0.2, 1.0], [0.0, 0.7]], pos_weight=[3.0, 0.5]),
        lambda rng: rng.normal(0, 3, size=(2, 2)),
    ),
    "kl-batchmean-log-target": (
        lambda x: fn.kl_div(x, np.log(P), "batchmean", True),
        lambda x: fn.kl_div_with_grad(x, np.log(P), "batchmean", True),
        lambda rng: rng.normal(size=(3, 3)),
    ),
    "nll-weight": (
        lambda x: fn.nll_loss(x, [0, 2, 1], W),
        lambda x: fn.nll_loss_with_grad(x, [0, 2, 1], W),
        lambda rng: rng.normal(size=(3, 3)),
    ),
}


@pytest.mark.parametrize("name", list(FD_CASES))
def test_gradient_matches_finite_differences(rng, name):
    loss_fn, grad_fn, sample = FD_CASES[name]
    x = sample(rng)
    _, grad = grad_fn(x.copy())
    numeric = numerical_gradient(lambda v: float(loss_fn(v)), x.copy())
    # central differences with h = 1e-6 are good to about 1e-9 on these O(1) functions
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------------------------------
# K-dimensional inputs (N, C, d1, ..., dK): the fused pass on the strided layout
# --------------------------------------------------------------------------------------------

# (shape, why)
KDIM_SHAPES = [
    ((3, 5, 7), "K=1, odd sizes"),
    ((1, 2, 4, 3), "K=2, one sample, two classes"),
    ((2, 1, 3, 2, 2), "K=3, a single class: every loss 0"),
    ((0, 4, 5), "no samples: empty 'none', NaN 'mean', 0 'sum'"),
    ((5, 300, 3, 1), "K=2 with a trailing 1, a larger C"),
]
# (name, make_case kind, weighted, ignore, eps, extra options)
KDIM_OPTIONS = [
    ("plain", "index", False, "none", 0.0, {}),
    ("weight-ignore-smooth", "index", True, "default", 0.1, {}),
    ("ignore-a-class", "index", False, "class1", 0.0, {}),
    ("zloss-softcap-weight", "index", True, "default", 0.0, {"z_loss": 1e-2, "softcap": 2.0}),
    ("prob-weight-smooth", "prob", True, "none", 0.2, {}),
    ("prob-zloss-softcap", "prob", False, "none", 0.0, {"z_loss": 1e-2, "softcap": 2.0}),
]


@pytest.mark.parametrize(("shape", "_why"), KDIM_SHAPES, ids=[str(s) for s, _ in KDIM_SHAPES])
@pytest.mark.parametrize(("name", "kind", "weighted", "ignore", "eps", "extra"), KDIM_OPTIONS,
                         ids=[o[0] for o in KDIM_OPTIONS])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_kdim_against_torch(rng, shape, _why, name, kind, weighted, ignore, eps, extra,
                            reduction):
    """Loss and gradient (random upstream gradient) against torch float64, and the
    gradient in the input's own layout (C-contiguous, the input's shape)."""
    x, target, weight, ii = make_case(rng, shape, kind, weighted, ignore)
    if shape[1] == 1 and ignore == "class1":
        ii = 0
    x = x * 2.0
    loss = fn.cross_entropy(x, target, weight, ii, reduction, eps, **extra)
    go = random_grad_output(rng, loss)
    ours, grad = fn.cross_entropy_with_grad(x, target, weight, ii, reduction, eps,
                                            grad_output=go, **extra)
    ref, ref_grad = torch_cross_entropy(x, target, weight, ii, reduction, eps,
                                        grad_output=go, **extra)
    assert np.shape(ours) == ref.shape
    assert grad.shape == x.shape and grad.flags.c_contiguous
    close64(loss, ref)
    close64(ours, ref)
    close64(grad, ref_grad)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize(("name", "kind", "weighted", "ignore", "eps", "extra"),
                         [KDIM_OPTIONS[1], KDIM_OPTIONS[3], KDIM_OPTIONS[4]],
                         ids=[KDIM_OPTIONS[i][0] for i in (1, 3, 4)])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_kdim_low_precision(rng, dtype, name, kind, weighted, ignore, eps, extra, reduction):
    """float32: close to torch's float64 on the same values; float16: computed in float32,
    so at least as close to float64 as torch's own float16, plus one rounding."""
    x, target, weight, ii = make_case(rng, (3, 40, 6, 5), kind, weighted, ignore)
    xl = x.astype(dtype)
    tl = target.astype(dtype) if kind == "prob" else target
    wl = None if weight is None else weight.astype(dtype)
    loss, grad = fn.cross_entropy_with_grad(xl, tl, wl, ii, reduction, eps, **extra)
    assert np.asarray(loss).dtype == dtype and grad.dtype == dtype
    as64 = {"x": xl.astype(np.float64), "t": tl.astype(np.float64) if kind == "prob" else tl,
            "w": None if wl is None else wl.astype(np.float64)}
    gold, gold_grad = torch_cross_entropy(as64["x"], as64["t"], as64["w"], ii, reduction, eps,
                                          **extra)
    if dtype == np.float32:
        np.testing.assert_allclose(loss, gold, rtol=2e-6, atol=1e-6)
        np.testing.assert_allclose(grad, gold_grad, rtol=2e-5,
                                   atol=2e-6 * np.abs(gold_grad).max())
        return
    same, same_grad = torch_cross_entropy(xl, tl, wl, ii, reduction, eps, dtype=torch.float16,
                                          **extra)
    for ours, ref16, ref64 in ((loss, same, gold), (grad, same_grad, gold_grad)):
        ours, ref16 = np.asarray(ours, np.float64), np.asarray(ref16, np.float64)
        ulp = np.spacing(np.abs(ref64).astype(np.float16)).astype(np.float64)
        err = np.abs(ours - ref64)
        assert (err <= np.abs(ref16 - ref64) + ulp).all(), float(np.max(err - ulp))


def test_kdim_large_vocabulary_blocks_within_a_slab(rng):
    """One (C, S) slab larger than a block: blocks of 16 positions of one sample, threaded."""
    x = rng.normal(0.0, 2.0, size=(2, 32000, 20)).astype(np.float32)
    y = rng.integers(0, 32000, (2, 20))
    y[0, 3] = -100
    loss, grad = fn.cross_entropy_with_grad(x, y, reduction="sum", label_smoothing=0.1)
    ref, ref_grad = torch_cross_entropy(x.astype(np.float64), y, reduction="sum",
                                        label_smoothing=0.1)
    np.testing.assert_allclose(loss, ref, rtol=2e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=2e-5, atol=1e-9)
    np.testing.assert_array_equal(grad[0, :, 3], 0.0)


def test_kdim_non_contiguous_input(rng):
    """A transposed K-dim view: the numbers of its contiguous copy."""
    base = rng.normal(size=(3, 4, 6, 5))
    x = base.transpose(0, 1, 3, 2)  # (3, 4, 5, 6), strides that do not merge
    y = rng.integers(0, 4, (3, 5, 6))
    loss, grad = fn.cross_entropy_with_grad(x, y, reduction="none")
    expected = fn.cross_entropy_with_grad(np.ascontiguousarray(x), y, reduction="none")
    close64(loss, expected[0], rtol=1e-14)
    close64(grad, expected[1], rtol=1e-14)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_kdim_nll_loss_against_torch(rng, reduction, weighted):
    shape = (3, 6, 4, 5)
    x, target, weight, ii = make_case(rng, shape, "index", weighted, "default")
    logp = fn.log_softmax(x, axis=1)
    loss = fn.nll_loss(logp, target, weight, ii, reduction)
    go = random_grad_output(rng, loss)
    ours, grad = fn.nll_loss_with_grad(logp, target, weight, ii, reduction, grad_output=go)
    ref, ref_grad = torch_nll(logp, target, weight, ii, reduction, grad_output=go)
    close64(ours, ref)
    close64(grad, ref_grad)
    assert grad.shape == shape and grad.flags.c_contiguous


# --------------------------------------------------------------------------------------------
# Memory of K-dimensional inputs: no (N, C, S)-sized temporary besides the gradient
# --------------------------------------------------------------------------------------------


def traced_peak(call):
    """Peak bytes NumPy allocated during ``call()`` (NumPy reports to tracemalloc)."""
    import gc
    import tracemalloc

    gc.collect()
    tracemalloc.start()
    try:
        result = call()
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(("shape", "dtype", "kind", "options"), [
    ((16, 1000, 32, 16), np.float32, "index", {}),
    ((16, 1000, 32, 16), np.float32, "index",
     {"label_smoothing": 0.1, "softcap": 30.0, "z_loss": 1e-4}),
    ((16, 1000, 32, 16), np.float32, "prob", {"label_smoothing": 0.1}),
    ((16, 1000, 32, 16), np.float16, "index", {}),
    ((16, 1000, 32, 16), np.float64, "index", {"label_smoothing": 0.1}),
    ((4, 32000, 8, 8), np.float32, "index", {"label_smoothing": 0.1}),
    ((4, 32000, 8, 8), np.float32, "prob", {}),
], ids=["f32", "f32-all-options", "f32-prob", "f16", "f64", "f32-gather", "f32-gather-prob"])
def test_kdim_peak_memory_is_the_gradient_plus_a_few_blocks(rng, monkeypatch, shape, dtype,
                                                            kind, options):
    """cross_entropy_with_grad on a K-dim input, two threads: the peak traced memory is the
    returned gradient plus at most three cache blocks per thread (the widened or gathered
    input, the gradient before it is stored, the probabilities) and a few numbers per row.
    The class-last copies of the input and gradient it replaced were twice the input more.
    (16, 1000, 32, 16) is computed on its blocks in place, (4, 32000, 8, 8) (short runs
    along S) as class-last rows in scratch."""
    monkeypatch.setenv("CROSSENT_NUM_THREADS", "2")
    x = rng.standard_normal(shape, dtype=np.float32).astype(dtype, copy=False)
    batch_shape = shape[:1] + shape[2:]
    if kind == "prob":
        target = rng.random(shape, dtype=np.float32).astype(dtype, copy=False)
    else:
        target = rng.integers(0, shape[1], batch_shape)
    rows = math.prod(batch_shape)
    cd_size = 8 if dtype == np.float64 else 4
    plan = _kernel_plan((shape[0], shape[1], math.prod(shape[2:])))
    assert plan.gather == (shape[1] == 32000)
    bound = 2 * 3 * plan.max_block_elements * cd_size + 96 * rows
    assert bound < x.nbytes  # so the bound has no room for an input-sized temporary
    peak, (loss, grad) = traced_peak(
        lambda: fn.cross_entropy_with_grad(x, target, **options))
    assert grad.shape == shape and grad.nbytes <= peak <= grad.nbytes + bound, peak
    peak_loss_only, _ = traced_peak(lambda: fn.cross_entropy(x, target, **options))
    assert peak_loss_only <= bound


def test_kdim_nll_loss_peak_memory(rng):
    x = rng.standard_normal((8, 1000, 32, 16), dtype=np.float32)
    y = rng.integers(0, 1000, (8, 32, 16))
    peak, (_, grad) = traced_peak(lambda: fn.nll_loss_with_grad(x, y))
    assert grad.nbytes <= peak <= grad.nbytes + 96 * y.size
    peak_loss_only, _ = traced_peak(lambda: fn.nll_loss(x, y))
    assert peak_loss_only <= 96 * y.size


def _kernel_plan(shape):
    from crossent import _kernel

    return _kernel._Blocking.plan(shape)


FLOAT32_CASES = [
    ((256, 1000), "index", "mean", "typical classifier head"),
    ((8, 32000), "index", "none", "large vocabulary: 32000-term sums in float32"),
    ((4, 7, 5), "prob", "sum", "K-dim probability target"),
]


@pytest.mark.parametrize(("shape", "kind", "reduction", "_why"), FLOAT32_CASES)
def test_float32_against_float64(rng, shape, kind, reduction, _why):
    """float32 inputs: within ~1e-6 relative of PyTorch's float64 on the same values."""
    x, target, weight, ii = make_case(rng, shape, kind, True, "none")
    x32 = x.astype(np.float32)
    t32 = target.astype(np.float32) if kind == "prob" else target
    loss, grad = fn.cross_entropy_with_grad(x32, t32, weight.astype(np.float32), ii, reduction,
                                            0.1)
    assert grad.dtype == np.float32
    assert np.asarray(loss).dtype == np.float32
    ref, ref_grad = torch_cross_entropy(x32.astype(np.float64), t32.astype(np.float64)
                                        if kind == "prob" else t32,
                                        weight.astype(np.float32).astype(np.float64), ii,
                                        reduction, 0.1)
    np.testing.assert_allclose(loss, ref, rtol=2e-6)
    # gradient entries near 0 are sums of O(1/rows) terms: compare relative to the largest
    np.testing.assert_allclose(grad, ref_grad, rtol=2e-6,
                               atol=2e-6 * np.abs(ref_grad).max())


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("shape", "kind"), [
    ((64, 50), "index"),  # many rows: a 'mean' that fp16 accumulation gets wrong
    ((8, 5000), "index"),  # a long row: fp16 sums of exp lose digits, float32 does not
    ((16, 30), "prob"),  # probability targets travel as fp16 too
    ((4, 6, 3), "index"),  # K-dim layout with the widening
])
def test_float16_is_computed_in_float32(rng, shape, kind, reduction):
    """Rule 7 of DESIGN.md: |ours - fp64| <= |torch fp16 - fp64| + one fp16 ulp.

    Ours computes in float32 and rounds once; PyTorch's CPU fp16 computes in fp16, so ours
    must be at least as close to float64 (up to the final rounding)."""
    x, target, _, ii = make_case(rng, shape, kind, False, "default")
    x16 = x.astype(np.float16)
    t16 = target.astype(np.float16) if kind == "prob" else target
    loss, grad = fn.cross_entropy_with_grad(x16, t16, ignore_index=ii, reduction=reduction,
                                            label_smoothing=0.1)
    assert np.asarray(loss).dtype == np.float16 and grad.dtype == np.float16

    def as64(a):
        return a.astype(np.float64)

    gold, gold_grad = torch_cross_entropy(as64(x16), as64(t16) if kind == "prob" else t16,
                                          ignore_index=ii, reduction=reduction,
                                          label_smoothing=0.1)
    half, half_grad = torch_cross_entropy(x16, t16, ignore_index=ii, reduction=reduction,
                                          label_smoothing=0.1, dtype=torch.float16)
    for ours, ref16, ref64 in ((loss, half, gold), (grad, half_grad, gold_grad)):
        ours, ref16 = as64(np.asarray(ours)), as64(np.asarray(ref16))
        ulp = as64(np.spacing(np.abs(ref64).astype(np.float16)))
        err = np.abs(ours - ref64)
        assert (err <= np.abs(ref16 - ref64) + ulp).all(), float(np.max(err - ulp))


@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("z_loss", "softcap"), [(1e-4, None), (0.0, 1.5), (0.05, 4.0)],
                         ids=["zloss-palm", "softcap-tight", "both"])
def test_z_loss_and_softcap_against_plain_torch(rng, kind, weighted, reduction, z_loss,
                                                softcap):
    """Compared with the plain float64 formula in :func:`torch_cross_entropy`."""
    shape = (9, 6) if kind == "index" else (3, 6, 2)
    x, target, weight, ii = make_case(rng, shape, kind, weighted,
                                      "default" if kind == "index" else "none")
    x = x * 3.0  # large logits, so the softcap bends them
    go = random_grad_output(rng, fn.cross_entropy(x, target, reduction=reduction))
    ours, grad = fn.cross_entropy_with_grad(x, target, weight, ii, reduction, 0.1,
                                            z_loss=z_loss, softcap=softcap, grad_output=go)
    plain = fn.cross_entropy(x, target, weight, ii, reduction, 0.1, z_loss=z_loss,
                             softcap=softcap)
    ref, ref_grad = torch_cross_entropy(x, target, weight, ii, reduction, 0.1, z_loss=z_loss,
                                        softcap=softcap, grad_output=go)
    close64(ours, ref)
    close64(plain, ref)
    close64(grad, ref_grad)


def test_z_loss_value_by_hand():
    """One row, z = [2, 4, 0.5], y = 0, z_loss = 0.5: CE + 0.5 * lse**2."""
    lse = 4.1531782071  # 2 + 2.153178207
    expected = 2.153178207 + 0.5 * lse**2
    assert fn.cross_entropy(Z, [0], z_loss=0.5) == pytest.approx(expected, rel=1e-9)


def test_softcap_bounds_the_logits():
    """With softcap s every logit lies in (-s, s): the loss is at most 2s + log C."""
    x = np.array([[1e6, -1e6, 0.0]])
    loss = fn.cross_entropy(x, [1], softcap=5.0)
    assert loss == pytest.approx(10.0 + np.log1p(np.exp(-5.0) + np.exp(-10.0)), rel=1e-12)


def test_non_contiguous_and_list_inputs(rng):
    """Views with strides, Fortran order and nested lists give the contiguous result."""
    base = rng.normal(size=(6, 10))
    view = base[:, ::2]  # (6, 5), strided
    y = rng.integers(0, 5, 6)
    expected_loss, expected_grad = fn.cross_entropy_with_grad(np.ascontiguousarray(view), y)
    for x in (view, np.asfortranarray(view), view.tolist()):
        loss, grad = fn.cross_entropy_with_grad(x, y.tolist())
        close64(loss, expected_loss, rtol=1e-14)
        close64(grad, expected_grad, rtol=1e-14)


def test_uint8_and_int32_targets_are_class_indices():
    loss64 = fn.cross_entropy(X, Y)
    for dtype in (np.uint8, np.int32, np.int16):
        assert fn.cross_entropy(X, Y.astype(dtype)) == loss64


def test_float_target_of_another_precision_promotes(rng):
    """A float64 probability target with float32 logits computes and returns float64."""
    x = rng.normal(size=(4, 3)).astype(np.float32)
    loss = fn.cross_entropy(x, P[[0, 1, 2, 0]])
    assert loss.dtype == np.float64
    close64(loss, torch_cross_entropy(x.astype(np.float64), P[[0, 1, 2, 0]])[0])


# --------------------------------------------------------------------------------------------
# 6. Properties (hypothesis)
# --------------------------------------------------------------------------------------------

finite = st.floats(-30.0, 30.0, allow_nan=False, allow_infinity=False)


@st.composite
def logits_and_targets(draw, min_classes=1, ignore=False):
    rows = draw(st.integers(1, 8))
    classes = draw(st.integers(min_classes, 9))
    x = draw(hnp.arrays(np.float64, (rows, classes), elements=finite))
    choices = st.integers(0, classes - 1)
    if ignore:
        choices = st.one_of(choices, st.just(-100))
    y = np.array(draw(st.lists(choices, min_size=rows, max_size=rows)), dtype=np.int64)
    return x, y


@given(logits_and_targets(), st.floats(-100.0, 100.0), st.sampled_from([0.0, 0.1, 1.0]))
def test_property_shift_invariance(xy, shift, eps):
    """Adding a constant to a row's logits changes neither the loss nor the gradient."""
    x, y = xy
    loss, grad = fn.cross_entropy_with_grad(x, y, reduction="none", label_smoothing=eps)
    loss2, grad2 = fn.cross_entropy_with_grad(x + shift, y, reduction="none",
                                              label_smoothing=eps)
    # x + shift is rounded: an error of ulp(130) ~ 3e-14 per logit
    np.testing.assert_allclose(loss2, loss, rtol=1e-12, atol=1e-11)
    np.testing.assert_allclose(grad2, grad, rtol=1e-12, atol=1e-11)


@given(logits_and_targets(ignore=True), st.sampled_from([0.0, 0.3, 1.0]),
       st.sampled_from(["none", "mean", "sum"]))
def test_property_gradient_rows_sum_to_zero(xy, eps, reduction):
    """d loss / d x_n = A (softmax - a / A) sums to A - A = 0 over the classes."""
    x, y = xy
    w = np.linspace(0.5, 2.0, x.shape[1])
    _, grad = fn.cross_entropy_with_grad(x, y, w, reduction=reduction, label_smoothing=eps)
    if reduction == "mean" and not (y != -100).any():
        return  # every target ignored: 0 / 0 scale, nothing to sum
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-12 * max(1, np.abs(grad).max()))


@given(st.integers(1, 8), st.integers(1, 3000), finite)
def test_property_uniform_logits_cost_log_c(rows, classes, value):
    """A uniform prediction over C classes costs log C, whatever the target."""
    x = np.full((rows, classes), value)
    y = np.arange(rows) % classes
    assert fn.cross_entropy(x, y) == pytest.approx(np.log(classes), rel=1e-12, abs=1e-14)
    t = np.full((rows, classes), 1.0 / classes)
    assert fn.cross_entropy(x, t, label_smoothing=0.5) == pytest.approx(np.log(classes),
                                                                       rel=1e-12, abs=1e-14)


@given(logits_and_targets(ignore=True), st.sampled_from([0.0, 0.2]))
def test_property_ignored_rows_give_zero_loss_and_gradient(xy, eps):
    x, y = xy
    loss, grad = fn.cross_entropy_with_grad(x, y, W[np.arange(x.shape[1]) % 3],
                                            reduction="none", label_smoothing=eps,
                                            z_loss=0.01)
    ignored = y == -100
    assert (loss[ignored] == 0.0).all()
    assert (grad[ignored] == 0.0).all()
    assert (loss[~ignored] >= 0.0).all()


@given(logits_and_targets(min_classes=2, ignore=True), st.sampled_from([0.0, 0.2]),
       st.sampled_from(["mean", "sum"]), st.booleans())
def test_property_masked_equals_sliced(xy, eps, reduction, weighted):
    """Ignoring elements is the same as leaving them out (loss and the kept gradient)."""
    x, y = xy
    keep = y != -100
    if not keep.any():
        return  # nothing left to slice
    w = np.linspace(0.5, 2.0, x.shape[1]) if weighted else None
    loss, grad = fn.cross_entropy_with_grad(x, y, w, reduction=reduction,
                                            label_smoothing=eps)
    loss_s, grad_s = fn.cross_entropy_with_grad(x[keep], y[keep], w, reduction=reduction,
                                                label_smoothing=eps)
    np.testing.assert_allclose(loss, loss_s, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad[keep], grad_s, rtol=1e-12, atol=1e-14)
    assert (grad[~keep] == 0.0).all()


@given(logits_and_targets(min_classes=2))
def test_property_probability_one_hot_equals_index(xy):
    """Without weights a one-hot probability target is its class index, gradient too."""
    x, y = xy
    onehot = np.eye(x.shape[1])[y]
    loss, grad = fn.cross_entropy_with_grad(x, y, label_smoothing=0.1)
    loss_p, grad_p = fn.cross_entropy_with_grad(x, onehot, label_smoothing=0.1)
    np.testing.assert_allclose(loss_p, loss, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(grad_p, grad, rtol=1e-12, atol=1e-15)


@given(logits_and_targets(min_classes=2))
def test_property_moving_the_class_axis(xy):
    """(N, C) and its (1, C, N) spatial form give the same per-element loss."""
    x, y = xy
    flat = fn.cross_entropy(x, y, reduction="none")
    spatial = fn.cross_entropy(x.T[None], y[None], reduction="none")
    np.testing.assert_allclose(spatial[0], flat, rtol=1e-14, atol=1e-15)


@st.composite
def kdim_problems(draw):
    """A K-dim input (K = 1..3, any sizes from 0), an index or probability target, options."""
    n = draw(st.integers(0, 3))
    c = draw(st.integers(1, 40))
    spatial = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))
    x = draw(hnp.arrays(np.float64, (n, c) + spatial, elements=finite))
    if draw(st.booleans()):
        t = draw(hnp.arrays(np.float64, x.shape, elements=st.floats(0.0, 1.0)))
        ignore = -100
    else:
        t = draw(hnp.arrays(np.int64, (n,) + spatial, elements=st.integers(-1, c - 1)))
        t[t == -1] = -100
        ignore = -100
    opts = draw(st.fixed_dictionaries({
        "label_smoothing": st.sampled_from([0.0, 0.3]),
        "z_loss": st.sampled_from([0.0, 1e-3]),
        "softcap": st.sampled_from([None, 5.0]),
        "reduction": st.sampled_from(["none", "sum"]),
    }))
    return x, t, ignore, opts


@given(kdim_problems(), st.sampled_from([1, 7, 1 << 19]), st.sampled_from([0, 1 << 40]))
def test_property_kdim_equals_its_class_last_rows(problem, block_elements, slab_min_run):
    """However an (N, C, d1..dK) input is cut into blocks, and whether each block is
    computed in place or as class-last rows, it gives the numbers of the same problem laid
    out as (N*d1*..*dK, C) rows (the class axis moved last), gradient moved back."""
    from crossent import _kernel

    x, t, ignore, opts = problem
    probability = t.shape == x.shape
    rows_x = np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])
    rows_t = np.moveaxis(t, 1, -1).reshape(-1, x.shape[1]) if probability else t.reshape(-1)
    loss_rows, grad_rows = fn.cross_entropy_with_grad(rows_x, rows_t, ignore_index=ignore,
                                                      **opts)
    saved = _kernel.BLOCK_ELEMENTS, _kernel.SLAB_MIN_RUN
    _kernel.BLOCK_ELEMENTS, _kernel.SLAB_MIN_RUN = block_elements, slab_min_run
    try:
        loss, grad = fn.cross_entropy_with_grad(x, t, ignore_index=ignore, **opts)
    finally:
        _kernel.BLOCK_ELEMENTS, _kernel.SLAB_MIN_RUN = saved
    moved = np.moveaxis(grad_rows.reshape((x.shape[0],) + x.shape[2:] + x.shape[1:2]), -1, 1)
    np.testing.assert_allclose(np.reshape(loss, -1), np.reshape(loss_rows, -1),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad, moved, rtol=1e-12, atol=1e-14)


def test_public_namespace_matches_functional():
    for name in fn.__all__:
        assert getattr(crossent, name) is getattr(fn, name)


@pytest.mark.parametrize("name", ["bce", "bce_logits", "kl_div", "nll", "softmax",
                                  "log_softmax", "logsumexp"])
def test_float16_elementwise_losses_round_once(rng, name):
    """float16 in, float16 out, computed in float32: within one fp16 rounding of float64."""
    x = rng.uniform(0.05, 0.95, size=(6, 4))
    t = rng.uniform(0.0, 1.0, size=(6, 4))
    calls = {
        "bce": lambda a, b: fn.binary_cross_entropy_with_grad(a, b, reduction="none"),
        "bce_logits": lambda a, b: fn.binary_cross_entropy_with_logits_with_grad(
            a, b, reduction="none", pos_weight=np.float16(2.0)),
        "kl_div": lambda a, b: fn.kl_div_with_grad(a, b, reduction="none"),
        "nll": lambda a, b: fn.nll_loss_with_grad(a, np.arange(6) % 4, reduction="none"),
        "softmax": lambda a, b: (fn.softmax(a, axis=1), None),
        "log_softmax": lambda a, b: (fn.log_softmax(a, axis=1), None),
        "logsumexp": lambda a, b: (fn.logsumexp(a, axis=1), None),
    }
    if name in ("kl_div", "nll"):
        x = np.log(x)  # these take log-probabilities
    x16, t16 = x.astype(np.float16), t.astype(np.float16)
    loss16, grad16 = calls[name](x16, t16)
    loss64, grad64 = calls[name](x16.astype(np.float64), t16.astype(np.float64))
    assert loss16.dtype == np.float16
    ulp = np.spacing(np.abs(loss64).astype(np.float16)).astype(np.float64)
    # one rounding to fp16 (half an ulp) plus float32 arithmetic (far below an ulp)
    assert (np.abs(loss16.astype(np.float64) - loss64) <= ulp).all()
    if grad16 is not None:
        assert grad16.dtype == np.float16
        ulp = np.spacing(np.abs(grad64).astype(np.float16)).astype(np.float64)
        assert (np.abs(grad16.astype(np.float64) - grad64) <= ulp).all()


def test_zero_weight_target_class_on_minus_inf_costs_nothing():
    """Index target whose class weight is 0 and whose logit is -inf: 0 * log 0 = 0 (PyTorch:
    NaN); the row still counts nothing in the 'mean' denominator (weight 0)."""
    x = np.array([[1.6, -0.5, -INF], [0.3, 2.0, 1.0]])
    w = np.array([1.0, 0.5, 0.0])
    loss, grad = fn.cross_entropy_with_grad(x, [2, 1], w, reduction="none")
    ref, ref_grad = torch_cross_entropy(x, [2, 1], w, reduction="none")
    assert np.isnan(ref[0]) and loss[0] == 0.0
    close64(loss[1], ref[1])
    np.testing.assert_array_equal(grad[0], 0.0)
    close64(grad[1], ref_grad[1])

"""The fused pass of :mod:`crossent._kernel`: threads, blocks, precisions, in-place output.

The public functions are held to PyTorch in ``test_functional.py``.  Here the same numbers
must come out however the rows are cut: into several threads (``PARALLEL_MIN_ELEMENTS``
lowered, ``CROSSENT_NUM_THREADS`` raised), into many small blocks (``BLOCK_ELEMENTS``
lowered), widened from float16 or bfloat16 bits, or written over the logits in place.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from crossent import _kernel
from crossent import functional as fn

torch = pytest.importorskip("torch")
F = torch.nn.functional


def run_kernel(x, target, *, probability=False, weight=None, ignore_index=-100,
               label_smoothing=0.0, z_loss=0.0, softcap=None, grad_scale=1.0,
               grad_out="new", bfloat16=False, compute_dtype=None):
    """Per-row losses and gradient straight from the kernel, targets built by the rules."""
    cd = np.dtype(compute_dtype or (np.float32 if bfloat16 or x.dtype == np.float16
                                    else x.dtype))
    targets, _ = _kernel.build_row_targets(
        target, probability=probability, weight=weight, ignore_index=ignore_index,
        label_smoothing=label_smoothing, z_loss=z_loss, num_classes=x.shape[1],
        compute_dtype=cd)
    if isinstance(grad_out, str):
        grad_out = np.empty_like(x) if grad_out == "new" else None
    losses = _kernel.fused_softmax_cross_entropy(x, targets, grad_scale, cd, softcap=softcap,
                                                 grad_out=grad_out, bfloat16=bfloat16)
    return losses, grad_out


# Options that touch every branch of the block loop: (name, kwargs, why)
VARIANTS = [
    ("plain", {}, "the common case: class indices, nothing else"),
    ("weight-smooth-ignore", {"weight": True, "label_smoothing": 0.1, "ignore": True},
     "weighted uniform term, masked rows"),
    ("zloss-softcap", {"z_loss": 1e-3, "softcap": 5.0}, "scratch buffer for tanh, z-loss"),
    ("probability", {"probability": True, "label_smoothing": 0.2, "weight": True},
     "the coefficient buffer"),
]


def make_inputs(rng, rows, classes, dtype, variant):
    opts = dict(variant)
    x = rng.normal(0.0, 4.0, size=(rows, classes)).astype(dtype)
    probability = opts.pop("probability", False)
    ignore = opts.pop("ignore", False)
    weighted = opts.pop("weight", False)
    if probability:
        target = rng.dirichlet(np.ones(classes), size=rows)
    else:
        target = rng.integers(0, classes, size=rows)
        if ignore:
            target[rng.random(rows) < 0.25] = -100
            x[np.flatnonzero(target == -100)[:1], 0] = -np.inf  # ignored non-finite row
    weight = rng.uniform(0.5, 2.0, size=classes) if weighted else None
    if weight is not None:
        weight = weight.astype(np.float32 if dtype == np.float16 else dtype)
    return x, target, dict(opts, probability=probability, weight=weight)


@pytest.mark.parametrize(("name", "variant", "_why"), VARIANTS, ids=[v[0] for v in VARIANTS])
@pytest.mark.parametrize("threads", [2, 3, 7])  # even, uneven and more threads than cores
def test_threaded_equals_serial(rng, monkeypatch, name, variant, _why, threads):
    """Splitting rows among threads gives the serial numbers.

    Each row's arithmetic is the same; only the BLAS matrix-vector product of the weighted
    smoothing term may group a row's sum differently for another block height (1 ulp)."""
    x, target, kwargs = make_inputs(rng, 37, 129, np.float64, variant)
    monkeypatch.setenv("CROSSENT_NUM_THREADS", str(threads))
    monkeypatch.setattr(_kernel, "PARALLEL_MIN_ELEMENTS", 1 << 40)
    serial = run_kernel(x, target, **kwargs)
    monkeypatch.setattr(_kernel, "PARALLEL_MIN_ELEMENTS", 1)
    monkeypatch.setattr(_kernel, "BLOCK_ELEMENTS", 129 * 4)  # several blocks per thread
    threaded = run_kernel(x, target, **kwargs)
    assert threads - 1 in _kernel._pools  # the caller plus threads - 1 workers
    np.testing.assert_allclose(threaded[0], serial[0], rtol=1e-15, atol=0)
    np.testing.assert_allclose(threaded[1], serial[1], rtol=1e-15, atol=1e-18)


@pytest.mark.parametrize(("name", "variant", "_why"), VARIANTS, ids=[v[0] for v in VARIANTS])
@pytest.mark.parametrize("block_elements", [1, 129 * 3, 129 * 5 + 17])
def test_block_size_does_not_change_the_result(rng, monkeypatch, name, variant, _why,
                                               block_elements):
    """One row per block, blocks that divide the rows unevenly, and a ragged last block."""
    x, target, kwargs = make_inputs(rng, 23, 129, np.float64, variant)
    reference = run_kernel(x, target, **kwargs)
    monkeypatch.setattr(_kernel, "BLOCK_ELEMENTS", block_elements)
    blocked = run_kernel(x, target, **kwargs)
    # per-row work is identical; only BLAS-backed dot products may group differently
    np.testing.assert_allclose(blocked[0], reference[0], rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(blocked[1], reference[1], rtol=1e-14, atol=1e-16)


def test_threaded_public_path_against_torch(rng, monkeypatch):
    """Above PARALLEL_MIN_ELEMENTS the public function runs threaded and stays exact."""
    monkeypatch.setenv("CROSSENT_NUM_THREADS", "2")
    rows, classes = 40, 32000  # 1.28e6 logits > 2**20: threaded without any monkeypatching
    assert rows * classes >= _kernel.PARALLEL_MIN_ELEMENTS
    x = rng.normal(0.0, 2.0, size=(rows, classes)).astype(np.float32)
    y = rng.integers(0, classes, rows)
    y[::7] = -100
    w = rng.uniform(0.5, 2.0, classes).astype(np.float32)
    ran_in = set()
    real_run = _kernel._run_row_ranges

    def spy(rows, columns, work):
        def traced(a, b):
            ran_in.add(threading.current_thread().name)
            work(a, b)
        real_run(rows, columns, traced)

    monkeypatch.setattr(_kernel, "_run_row_ranges", spy)
    loss, grad = fn.cross_entropy_with_grad(x, y, w, label_smoothing=0.1, reduction="sum")
    assert len(ran_in) == 2 and any(name.startswith("crossent") for name in ran_in)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    ref = F.cross_entropy(xt, torch.tensor(y), torch.tensor(w, dtype=torch.float64),
                          reduction="sum", label_smoothing=0.1)
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=2e-6)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=2e-5, atol=1e-9)


def test_a_worker_exception_reaches_the_caller(monkeypatch):
    """An error inside a thread is re-raised in the calling thread, not swallowed."""
    monkeypatch.setenv("CROSSENT_NUM_THREADS", "2")
    monkeypatch.setattr(_kernel, "PARALLEL_MIN_ELEMENTS", 1)
    x = np.zeros((4, 3))
    # the kernel trusts range-checked targets; an unchecked class 7 fails inside a worker
    targets = _kernel.RowTargets(index=np.array([0, 1, 2, 7]), on_target=np.ones(4),
                                 coef_sum=np.ones(4))
    with pytest.raises(IndexError):
        _kernel.fused_softmax_cross_entropy(x, targets, 1.0, np.dtype(np.float64),
                                            grad_out=np.empty_like(x))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_in_place_gradient_over_the_logits(rng, dtype, softcap):
    """``grad_out=logits``: every block is read before its gradient is written."""
    x, target, kwargs = make_inputs(rng, 50, 33, dtype, VARIANTS[1][1])
    expected_loss, expected_grad = run_kernel(x, target, softcap=softcap, **kwargs)
    buf = x.copy()
    loss, grad = run_kernel(buf, target, softcap=softcap, grad_out=buf, **kwargs)
    assert grad is buf
    np.testing.assert_array_equal(loss, expected_loss)
    np.testing.assert_array_equal(buf, expected_grad)


def test_in_place_float16(rng):
    """float16 logits are widened per block; the gradient narrows back into the same array."""
    x, target, kwargs = make_inputs(rng, 40, 17, np.float16, VARIANTS[0][1])
    expected = run_kernel(x, target, **kwargs)
    buf = x.copy()
    loss, _ = run_kernel(buf, target, grad_out=buf, **kwargs)
    np.testing.assert_array_equal(loss, expected[0])
    np.testing.assert_array_equal(buf, expected[1])
    assert expected[0].dtype == np.float32 and expected[1].dtype == np.float16


def test_loss_only_pass_matches_the_fused_one(rng):
    """``grad_out=None`` computes the same losses without writing any gradient."""
    for name, variant, _ in VARIANTS:
        x, target, kwargs = make_inputs(rng, 30, 20, np.float64, variant)
        with_grad, _ = run_kernel(x, target, **kwargs)
        loss_only, none = run_kernel(x, target, grad_out=None, **kwargs)
        assert none is None
        np.testing.assert_array_equal(loss_only, with_grad, err_msg=name)


def test_vector_grad_scale_scales_each_row(rng):
    """A per-row ``grad_scale`` (reduction 'none') multiplies each row's gradient."""
    x, target, kwargs = make_inputs(rng, 12, 9, np.float64, VARIANTS[2][1])
    scale = rng.uniform(-2.0, 2.0, 12)
    _, unit = run_kernel(x, target, **kwargs)
    _, scaled = run_kernel(x, target, grad_scale=scale, **kwargs)
    np.testing.assert_allclose(scaled, unit * scale[:, None], rtol=1e-14, atol=1e-16)


def test_empty_and_single_class_inputs():
    loss, grad = run_kernel(np.zeros((0, 5)), np.zeros(0, np.int64))
    assert loss.shape == (0,) and grad.shape == (0, 5)
    loss, grad = run_kernel(np.array([[3.0], [-1.0]]), np.array([0, 0]))
    np.testing.assert_array_equal(loss, [0.0, 0.0])  # one class: probability 1, no loss
    np.testing.assert_array_equal(grad, [[0.0], [0.0]])


# --------------------------------------------------------------------------------------------
# The (N, C, S) layout: classes on axis 1, blocks of whole slabs or of part of one
# --------------------------------------------------------------------------------------------


def make_3d(rng, n, c, s, dtype, variant):
    """(N, C, S) logits and targets, and the same problem as (N*S, C) rows (a copy)."""
    x2, target2, kwargs = make_inputs(rng, n * s, c, dtype, variant)
    x3 = np.ascontiguousarray(x2.reshape(n, s, c).transpose(0, 2, 1))
    if kwargs["probability"]:
        target3 = np.ascontiguousarray(target2.reshape(n, s, c).transpose(0, 2, 1))
    else:
        target3 = target2
    return x3, target3, x2, target2, kwargs


def as_rows(a3):
    n, c, s = a3.shape
    return a3.transpose(0, 2, 1).reshape(n * s, c)


@pytest.fixture(params=["slab", "gather"])
def block_compute(request, monkeypatch):
    """Both ways of computing an (N, C, S) block: on the block in place ("slab"), or copied
    to class-last rows in scratch and back ("gather"); SLAB_MIN_RUN picks one per shape."""
    monkeypatch.setattr(_kernel, "SLAB_MIN_RUN", 0 if request.param == "slab" else 1 << 40)
    return request.param


# (block elements, why): both ways of cutting an (N, C, S) input into blocks
BLOCKINGS_3D = [
    (1 << 19, "the default: every slab in one block"),
    (129 * 37 * 2, "two whole slabs per block (the last block ragged)"),
    (129 * 3, "part of one slab: the minimum 16 positions, the last run ragged"),
    (1, "the minimum run along S, one slab at a time"),
]


@pytest.mark.parametrize(("name", "variant", "_why"), VARIANTS, ids=[v[0] for v in VARIANTS])
@pytest.mark.parametrize(("block_elements", "_bwhy"), BLOCKINGS_3D,
                         ids=[str(b) for b, _ in BLOCKINGS_3D])
def test_3d_layout_equals_the_rows_layout(block_compute, rng, monkeypatch, name, variant, _why,
                                          block_elements, _bwhy):
    """(N, C, S) with classes on axis 1 gives the (N*S, C) rows' numbers, in (n, s) order,
    the gradient in the (N, C, S) layout.  Only the order of the class sums differs."""
    x3, t3, x2, t2, kwargs = make_3d(rng, 5, 129, 37, np.float64, variant)
    reference = run_kernel(x2, t2, **kwargs)
    monkeypatch.setattr(_kernel, "BLOCK_ELEMENTS", block_elements)
    assert _kernel._Blocking.plan(x3.shape).gather == (block_compute == "gather")
    loss, grad = run_kernel(x3, t3, **kwargs)
    assert grad.shape == x3.shape
    np.testing.assert_allclose(loss, reference[0], rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(as_rows(grad), reference[1], rtol=1e-13, atol=1e-16)


@pytest.mark.parametrize(("name", "variant", "_why"), VARIANTS, ids=[v[0] for v in VARIANTS])
@pytest.mark.parametrize("threads", [2, 3])
def test_3d_threaded_equals_serial(block_compute, rng, monkeypatch, name, variant, _why, threads):
    x3, t3, _, _, kwargs = make_3d(rng, 4, 33, 50, np.float64, variant)
    monkeypatch.setattr(_kernel, "BLOCK_ELEMENTS", 33 * 16)  # many blocks per slab
    monkeypatch.setattr(_kernel, "PARALLEL_MIN_ELEMENTS", 1 << 40)
    serial = run_kernel(x3, t3, **kwargs)
    monkeypatch.setenv("CROSSENT_NUM_THREADS", str(threads))
    monkeypatch.setattr(_kernel, "PARALLEL_MIN_ELEMENTS", 1)
    threaded = run_kernel(x3, t3, **kwargs)
    assert threads - 1 in _kernel._pools
    np.testing.assert_array_equal(threaded[0], serial[0])  # same blocks, same arithmetic
    np.testing.assert_array_equal(threaded[1], serial[1])


@pytest.mark.parametrize("shape", [(3, 4, 5), (1, 7, 1000), (6, 1, 9), (2, 300, 40)])
@pytest.mark.parametrize("block_elements", [1, 37, 1000, 1 << 19])
def test_3d_blocks_cover_every_row_once(monkeypatch, shape, block_elements):
    """The blocks are contiguous runs of the flat (n, s) rows that tile them exactly."""
    monkeypatch.setattr(_kernel, "BLOCK_ELEMENTS", block_elements)
    plan = _kernel._Blocking.plan(shape)
    n, c, s = shape
    seen = np.zeros(n * s, int)
    for where, r0, r1, rshape in plan.blocks(0, plan.units):
        block = np.arange(n * c * s).reshape(shape)[where]
        assert block.shape == (rshape[0], c, rshape[1]) and r1 - r0 == np.prod(rshape)
        assert block.size <= plan.max_block_elements
        rows = (block[:, 0, :] // (c * s)) * s + block[:, 0, :] % s  # (n, s) -> flat row
        np.testing.assert_array_equal(rows.reshape(-1), np.arange(r0, r1))
        seen[r0:r1] += 1
    np.testing.assert_array_equal(seen, 1)


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_3d_in_place_gradient_over_the_logits(block_compute, rng, softcap):
    x3, t3, _, _, kwargs = make_3d(rng, 3, 20, 30, np.float64, VARIANTS[1][1])
    expected_loss, expected_grad = run_kernel(x3, t3, softcap=softcap, **kwargs)
    buf = x3.copy()
    loss, grad = run_kernel(buf, t3, softcap=softcap, grad_out=buf, **kwargs)
    assert grad is buf
    np.testing.assert_array_equal(loss, expected_loss)
    np.testing.assert_array_equal(buf, expected_grad)


def test_3d_strided_views_are_read_in_place(block_compute, rng):
    """Any strides: a view with a step along S and a reversed class axis."""
    base, t3, _, _, kwargs = make_3d(rng, 3, 11, 40, np.float64, VARIANTS[3][1])
    x3 = base[:, ::-1, ::2]
    probs = t3[:, ::-1, ::2] / t3[:, ::-1, ::2].sum(axis=1, keepdims=True)
    grad = np.empty((3, 20, 11)).transpose(0, 2, 1)  # a non-contiguous gradient buffer
    loss, _ = run_kernel(x3, probs, grad_out=grad, **kwargs)
    expected = run_kernel(np.ascontiguousarray(x3), np.ascontiguousarray(probs), **kwargs)
    # the class sums run in another order over the reversed view: a few ulps
    np.testing.assert_allclose(loss, expected[0], rtol=1e-13)
    np.testing.assert_allclose(grad, expected[1], rtol=1e-13, atol=1e-16)


def test_3d_float16_and_vector_scale(block_compute, rng):
    x3, t3, x2, t2, kwargs = make_3d(rng, 3, 17, 25, np.float16, VARIANTS[2][1])
    scale = rng.uniform(-2.0, 2.0, 75)
    loss, grad = run_kernel(x3, t3, grad_scale=scale, **kwargs)
    loss2, grad2 = run_kernel(x2, t2, grad_scale=scale, **kwargs)
    assert loss.dtype == np.float32 and grad.dtype == np.float16
    np.testing.assert_allclose(loss, loss2, rtol=1e-6, atol=1e-6)
    # float32 sums in another order, then one fp16 rounding: within one fp16 ulp
    ulp = np.spacing(np.abs(grad2).astype(np.float16)).astype(np.float64)
    assert (np.abs(as_rows(grad).astype(np.float64) - grad2) <= ulp).all()


@pytest.mark.parametrize(("name", "variant", "_why"), VARIANTS, ids=[v[0] for v in VARIANTS])
def test_3d_bfloat16_bits(block_compute, rng, name, variant, _why):
    """bfloat16 bits in the (N, C, S) layout: the float32 pass on the widened values, the
    gradient rounded once to bfloat16 (as in the rows layout)."""
    x3, t3, _, _, kwargs = make_3d(rng, 2, 40, 30, np.float32, variant)
    if kwargs["weight"] is not None:
        kwargs["weight"] = kwargs["weight"].astype(np.float32)
    bits = bf16_bits(torch.from_numpy(x3))
    x32 = _kernel.bf16_bits_to_float32(bits, np.empty(bits.shape, np.float32))
    grad_bits = np.empty_like(bits)
    loss, _ = run_kernel(bits, t3, grad_out=grad_bits, bfloat16=True, **kwargs)
    loss32, grad32 = run_kernel(x32, t3, **kwargs)
    np.testing.assert_array_equal(loss, loss32)
    np.testing.assert_array_equal(grad_bits, bf16_bits(torch.from_numpy(grad32)))


def test_3d_empty_and_single_class(block_compute):
    loss, grad = run_kernel(np.zeros((0, 5, 3)), np.zeros(0, np.int64))
    assert loss.shape == (0,) and grad.shape == (0, 5, 3)
    loss, grad = run_kernel(np.zeros((2, 5, 0)), np.zeros(0, np.int64))
    assert loss.shape == (0,) and grad.shape == (2, 5, 0)
    loss, grad = run_kernel(np.array([[[3.0, -1.0]]]), np.array([0, 0]))
    np.testing.assert_array_equal(loss, [0.0, 0.0])
    np.testing.assert_array_equal(grad, [[[0.0, 0.0]]])


def test_shapes_that_do_not_match_the_logits_are_refused():
    targets = _kernel.RowTargets(index=np.zeros(6, np.int64), on_target=np.ones(6),
                                 coef_sum=np.ones(6))
    with pytest.raises(ValueError, match="grad_out must have the logits' shape"):
        _kernel.fused_softmax_cross_entropy(np.zeros((2, 3, 3)), targets, 1.0,
                                            np.dtype(np.float64), grad_out=np.zeros((6, 3)))
    with pytest.raises(ValueError, match=r"\(M, C\) or \(N, C, S\)"):
        _kernel.fused_softmax_cross_entropy(np.zeros((1, 2, 3, 3)), targets, 1.0,
                                            np.dtype(np.float64))


# --------------------------------------------------------------------------------------------
# Masked vocabularies: -inf logits where the target puts no weight (0 log 0 = 0), per block
# --------------------------------------------------------------------------------------------


def masked_problem(rng, rows, classes, kind):
    """Rows whose classes 1, 4, 7, ... are masked to -inf, the target giving them nothing:
    probabilities 0 there, or class weight 0 there with label smoothing."""
    x = rng.normal(0.0, 3.0, size=(rows, classes))
    masked = np.arange(classes) % 3 == 1
    x[:, masked] = -np.inf
    kept = np.flatnonzero(~masked)
    if kind == "probability":
        t = np.zeros((rows, classes))
        t[:, kept] = rng.dirichlet(np.ones(kept.size), size=rows)
        return x, t, dict(probability=True, label_smoothing=0.0), masked
    y = rng.choice(kept, size=rows)
    w = np.where(masked, 0.0, rng.uniform(0.5, 2.0, classes))
    return x, y, dict(probability=False, weight=w, label_smoothing=0.2), masked


@pytest.mark.parametrize("kind", ["probability", "index-smoothing"])
@pytest.mark.parametrize("layout", ["rows", "3d"])
def test_masked_vocabulary_equals_the_problem_without_the_masked_classes(block_compute, rng,
                                                                         monkeypatch, kind,
                                                                         layout):
    """Masked classes contribute nothing: the loss is the one written out over the kept
    classes only, the gradient 0 on masked classes and the kept problem's elsewhere.
    Several blocks, each with every row masked: the block-wise exact path throughout."""
    x, target, kwargs, masked = masked_problem(rng, 60, 31, kind)
    expected = masked_reference(x, target, kwargs, masked)
    monkeypatch.setattr(_kernel, "BLOCK_ELEMENTS", 31 * 7)
    calls = []
    exact = _kernel._dot_without_zero_terms

    def counted(shifted, *args):
        calls.append(shifted.shape)
        return exact(shifted, *args)

    monkeypatch.setattr(_kernel, "_dot_without_zero_terms", counted)
    if layout == "3d":
        x3 = np.ascontiguousarray(x.reshape(6, 10, 31).transpose(0, 2, 1))
        t3 = (np.ascontiguousarray(target.reshape(6, 10, 31).transpose(0, 2, 1))
              if kind == "probability" else target)
        loss, grad3 = run_kernel(x3, t3, **kwargs)
        grad = as_rows(grad3)
    else:
        loss, grad = run_kernel(x, target, **kwargs)
    assert np.isfinite(loss).all() and np.isfinite(grad).all()
    # once per block, on the whole block (never a loop over rows)
    plan = _kernel._Blocking.plan(x3.shape if layout == "3d" else x.shape)
    assert len(calls) == len(list(plan.blocks(0, plan.units))) > 1
    assert sum(int(np.prod(shape)) for shape in calls) == x.size
    np.testing.assert_array_equal(grad[:, masked], 0.0)
    np.testing.assert_allclose(loss, expected[0], rtol=1e-13)
    np.testing.assert_allclose(grad[:, ~masked], expected[1], rtol=1e-12, atol=1e-15)


def masked_reference(x, target, kwargs, masked):
    """The loss and gradient written out in float64 over the kept classes only:
    ``a = t`` for probabilities, ``a = (1 - eps) w[y] onehot(y) + (eps / C) w`` for class
    indices (C the full class count: the masked classes are still classes, of weight 0)."""
    keep = ~masked
    z = x[:, keep]
    if kwargs["probability"]:
        a = target[:, keep]
    else:
        eps, wk = kwargs["label_smoothing"], kwargs["weight"][keep]
        a = np.tile(eps / x.shape[1] * wk, (x.shape[0], 1))
        col = np.cumsum(keep)[target] - 1
        a[np.arange(len(target)), col] += (1 - eps) * wk[col]
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    loss = (a * (lse[:, None] - z)).sum(1)
    grad = a.sum(1, keepdims=True) * np.exp(z - lse[:, None]) - a
    return loss, grad


def test_masked_rows_keep_genuine_inf_and_nan(rng):
    """In a block on the exact path, a row whose target weighs a -inf class costs inf, a
    NaN logit row is NaN, and their neighbours keep their finite values."""
    x, t, kwargs, masked = masked_problem(rng, 6, 10, "probability")
    t[2] = 0.0
    t[2, 1] = 1.0  # all the target's mass on a masked class: inf
    x[4, 0] = np.nan
    loss, grad = run_kernel(x, t, **kwargs)
    assert loss[2] == np.inf
    assert np.isnan(loss[4]) and np.isnan(grad[4]).all()
    finite = [0, 1, 3, 5]
    assert np.isfinite(loss[finite]).all()
    clean, _ = run_kernel(x[finite], t[finite], **kwargs)
    np.testing.assert_array_equal(loss[finite], clean)


@pytest.mark.parametrize("layout", ["rows", "3d"])
def test_a_weighted_masked_class_costs_inf_like_torch(block_compute, rng, layout):
    """Label smoothing that gives a masked (-inf) class weight: every row costs inf, as in
    PyTorch; the gradient is PyTorch's (finite) one.  The other masked classes weigh 0."""
    x, y, kwargs, masked = masked_problem(rng, 12, 10, "index-smoothing")
    kwargs["weight"][1] = 0.7  # class 1 is masked in every row
    if layout == "3d":
        x_in = np.ascontiguousarray(x.reshape(3, 4, 10).transpose(0, 2, 1))
        loss, grad = run_kernel(x_in, y, **kwargs)
        grad = as_rows(grad)
    else:
        loss, grad = run_kernel(x, y, **kwargs)
    assert (loss == np.inf).all()
    xt = torch.tensor(x, requires_grad=True)
    ref = F.cross_entropy(xt, torch.tensor(y), torch.tensor(kwargs["weight"]),
                          reduction="sum", label_smoothing=0.2)
    ref.backward()
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------------------------
# bfloat16 as raw uint16 bits (how the torch executor hands bfloat16 over)
# --------------------------------------------------------------------------------------------


def bf16_bits(t):
    return t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def test_bf16_widening_is_exact(rng):
    values = torch.tensor(rng.normal(0, 100, 1000), dtype=torch.float32)
    values[:4] = torch.tensor([float("inf"), float("-inf"), 0.0, -0.0])
    bits = bf16_bits(values)
    out = _kernel.bf16_bits_to_float32(bits, np.empty(bits.shape, np.float32))
    expected = values.to(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(out, expected)
    assert np.signbit(out[3])


def test_bf16_rounding_matches_torch(rng):
    """Round to nearest, ties to even, overflow to inf, NaN stays NaN (as torch rounds)."""
    raw = rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32)
    values = raw.view(np.float32)
    finite = np.isfinite(values)
    ties = (np.arange(1, 65, dtype=np.uint32) << 16) | 0x8000  # exactly halfway
    values = np.concatenate([values[finite], ties.view(np.float32),
                             np.float32([3.4e38, -3.4e38, np.nan, 1e-45])])
    ours = _kernel.float32_to_bf16_bits(values, np.empty(values.shape, np.uint16))
    theirs = bf16_bits(torch.from_numpy(values))
    nan = np.isnan(values)
    np.testing.assert_array_equal(ours[~nan], theirs[~nan])
    widened = _kernel.bf16_bits_to_float32(ours[nan], np.empty(nan.sum(), np.float32))
    assert np.isnan(widened).all()


@pytest.mark.parametrize(("name", "variant", "_why"), VARIANTS, ids=[v[0] for v in VARIANTS])
def test_bfloat16_pass_against_torch_float32(rng, name, variant, _why):
    """bfloat16 logits computed in float32: the loss within float32 rounding of torch on the
    widened values, the gradient within one bfloat16 rounding of torch's float32 gradient."""
    x, target, kwargs = make_inputs(rng, 64, 300, np.float32, variant)
    bits = bf16_bits(torch.from_numpy(x))
    x32 = _kernel.bf16_bits_to_float32(bits, np.empty(bits.shape, np.float32))
    if kwargs["weight"] is not None:
        kwargs["weight"] = kwargs["weight"].astype(np.float32)
    grad_bits = np.empty_like(bits)
    loss, _ = run_kernel(bits, target, grad_out=grad_bits, bfloat16=True, **kwargs)
    loss32, grad32 = run_kernel(x32, target, **kwargs)
    np.testing.assert_array_equal(loss, loss32)  # same float32 computation after widening
    np.testing.assert_array_equal(grad_bits, bf16_bits(torch.from_numpy(grad32)))
    # and against torch itself (float64 on the same bfloat16 values)
    xt = torch.tensor(x32, dtype=torch.float64, requires_grad=True)
    tt = (torch.tensor(target, dtype=torch.float64) if kwargs["probability"]
          else torch.tensor(target))
    wt = None if kwargs["weight"] is None else torch.tensor(kwargs["weight"], dtype=torch.float64)
    z = xt if kwargs.get("softcap") is None else kwargs["softcap"] * torch.tanh(
        xt / kwargs["softcap"])
    ref = F.cross_entropy(z, tt, wt, reduction="none",
                          label_smoothing=kwargs.get("label_smoothing", 0.0))
    if kwargs.get("z_loss"):
        ref = ref + kwargs["z_loss"] * torch.logsumexp(z, 1) ** 2
    np.testing.assert_allclose(loss, ref.detach().numpy(), rtol=1e-5, atol=1e-6)
    ref.sum().backward()
    widened = _kernel.bf16_bits_to_float32(grad_bits, np.empty(bits.shape, np.float32))
    ref_grad = xt.grad.numpy()
    # one bfloat16 rounding: relative 2**-8, plus float32 noise on entries near zero
    np.testing.assert_allclose(widened, ref_grad, rtol=2**-8, atol=1e-7)


# --------------------------------------------------------------------------------------------
# Thread count
# --------------------------------------------------------------------------------------------


def test_num_threads_reads_the_environment(monkeypatch):
    monkeypatch.setenv("CROSSENT_NUM_THREADS", "5")
    assert _kernel.num_threads() == 5
    monkeypatch.delenv("CROSSENT_NUM_THREADS")
    assert _kernel.num_threads() >= 1


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_num_threads_rejects_bad_values(monkeypatch, value):
    monkeypatch.setenv("CROSSENT_NUM_THREADS", value)
    with pytest.raises(ValueError, match=rf"CROSSENT_NUM_THREADS must be a positive integer, "
                                         rf"got '{value}'"):
        _kernel.num_threads()


def test_concurrent_callers_share_the_pool_safely(monkeypatch):
    """Several Python threads calling at once, with row counts below and above the thread
    count, each get their own right answer (the pool is never replaced under a caller)."""
    monkeypatch.setenv("CROSSENT_NUM_THREADS", "4")
    monkeypatch.setattr(_kernel, "PARALLEL_MIN_ELEMENTS", 1)
    inputs = {rows: np.random.default_rng(rows).normal(size=(rows, 40)) for rows in (2, 3, 5, 9)}
    expected = {rows: fn.cross_entropy_with_grad(x, np.arange(rows) % 40)
                for rows, x in inputs.items()}
    failures = []

    def hammer(rows):
        for _ in range(50):
            try:
                loss, grad = fn.cross_entropy_with_grad(inputs[rows], np.arange(rows) % 40)
                assert loss == expected[rows][0]
                np.testing.assert_array_equal(grad, expected[rows][1])
            except Exception as exc:  # reported below
                failures.append(repr(exc))
                return

    threads = [threading.Thread(target=hammer, args=(rows,)) for rows in inputs for _ in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []

"""The vocabulary-blocked schedule of ``linear_cross_entropy`` (``schedule="vocab"``) and the
rule that chooses between it and the row-chunked one.

* values and all three gradients against the float64 naive op on a grid of shapes, block
  sizes and options, on the NumPy (``cpu``) and ``torch`` executors; the Triton executor is
  in ``test_linear_blocked_triton.py``;
* K-dimensional heads, whose blocks are ranges of one position's classes or several whole
  positions;
* bfloat16 with confident predictions and a large common offset (tolerance rule);
* the autograd contract (repeated backward, ``torch.func``, compile);
* the memory model and the ``"auto"`` rule, and a measurement that the schedule never holds
  a ``V x D`` float32 buffer.
"""

from __future__ import annotations

import gc
import tracemalloc

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch.func import grad, jacrev, jvp, vmap  # noqa: E402

import crossent.torch as ct  # noqa: E402
from crossent.torch import _linear_blocked as blocked  # noqa: E402
from crossent.torch.linear import linear_cross_entropy_memory  # noqa: E402

F64 = torch.float64
IMPLS = ["cpu", "torch"]
REDUCTIONS = ["mean", "sum", "none"]


def _problem(lead, features, vocab, *, probability=False, ignore=False, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(*lead, features, dtype=dtype, generator=g)
    w = torch.randn(vocab, features, dtype=dtype, generator=g) / features**0.5
    b = torch.randn(vocab, dtype=dtype, generator=g)
    if probability:
        y = torch.softmax(torch.randn(*lead, vocab, dtype=F64, generator=g), -1).to(dtype)
        y.view(-1, vocab)[:, 0] = 0.0  # a class the target does not weigh
    else:
        y = torch.randint(0, vocab, lead, generator=g)
        if ignore:
            y.view(-1)[::3] = -100
    return h, w, b, y


def _grads(fn, h, w, b, y, go=None, **kw):
    hh, ww, bb = (t.detach().clone().requires_grad_() for t in (h, w, b))
    loss = fn(hh, ww, y, linear_bias=bb, **kw)
    if go is None:
        go = torch.randn_like(loss)
    return (loss.detach(), *torch.autograd.grad(loss, (hh, ww, bb), go)), go


def _assert_matches_reference(problem, tol=1e-10, **kw):
    h, w, b, y = problem
    ref_kw = {k: v for k, v in kw.items() if k not in ("schedule", "vocab_block_size",
                                                       "chunk_size", "impl")}
    ref, go = _grads(ct.linear_cross_entropy_ref, h, w, b, y, **ref_kw)
    ours, _ = _grads(ct.linear_cross_entropy, h, w, b, y, go=go, **kw)
    for name, a, r in zip(("loss", "d input", "d weight", "d bias"), ours, ref):
        assert a.shape == r.shape and a.dtype == r.dtype, name
        torch.testing.assert_close(a, r, rtol=tol, atol=tol, equal_nan=True, msg=name)


# (lead dims, D, V, chunk_size, vocab_block_size): each with its reason
SHAPES = [
    ((1,), 3, 2, None, None),  # tiny: one row, two classes, one block
    ((423,), 16, 507, 100, 64),  # unaligned N and V; 8 blocks of 64 (63), 5 tiles of rows
    ((50,), 8, 33, 7, 8),  # 5 equal blocks of 7 columns (not 4 of 8 and a sliver of 1)
    ((20,), 4, 9, None, 100),  # one block wider than the vocabulary
    ((2, 5), 4, 9, 3, 4),  # leading (B, T) dimensions: rows flattened, classes last
    ((), 6, 5, None, 2),  # unbatched (D,) input, 0-d target
]

OPTIONS = [
    dict(),
    dict(reduction="sum", label_smoothing=0.1),
    dict(reduction="none", ignore=True),
    dict(weight=True, ignore=True, label_smoothing=0.2),
    dict(z_loss=0.01, softcap=3.0),
    dict(probability=True, label_smoothing=0.1, weight=True),
    dict(probability=True, reduction="none", z_loss=0.05, softcap=2.0),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[0])) +
                         f"x{s[1]}x{s[2]}/{s[3]}/{s[4]}")
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "plain")
def test_vocab_schedule_matches_naive_float64(impl, shape, options):
    lead, features, vocab, chunk, block = shape
    options = dict(options)
    problem = _problem(lead, features, vocab, probability=options.pop("probability", False),
                       ignore=options.pop("ignore", False))
    if options.pop("weight", False):
        options["weight"] = torch.rand(vocab, dtype=F64) + 0.1
    _assert_matches_reference(problem, schedule="vocab", impl=impl, chunk_size=chunk,
                              vocab_block_size=block, **options)


@given(rows=st.integers(1, 12), features=st.integers(1, 5), vocab=st.integers(2, 40),
       block=st.integers(1, 45), chunk=st.integers(1, 13), smoothing=st.sampled_from([0, 0.3]))
def test_any_blocking_gives_the_same_numbers(rows, features, vocab, block, chunk, smoothing):
    # the online merge is exact: the block and tile sizes change nothing but rounding
    problem = _problem((rows,), features, vocab, ignore=rows > 1, seed=rows * 100 + vocab)
    _assert_matches_reference(problem, schedule="vocab", impl="torch", chunk_size=chunk,
                              vocab_block_size=block, label_smoothing=smoothing, z_loss=0.01)


def test_all_rows_ignored():
    h, w, b, _ = _problem((6,), 4, 5)
    y = torch.full((6,), -100)
    for reduction in ("mean", "sum"):
        (loss, *grads), _ = _grads(ct.linear_cross_entropy, h, w, b, y, go=torch.tensor(1.0),
                                   reduction=reduction, schedule="vocab", vocab_block_size=2)
        torch.testing.assert_close(loss, F.cross_entropy(F.linear(h, w, b), y,
                                                         reduction=reduction), equal_nan=True)
        for g in grads:
            assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("schedule", ["rows", "vocab"])
@pytest.mark.parametrize("dtype", [F64, torch.bfloat16])
def test_no_rows(schedule, dtype):
    h, w, b, _ = _problem((0,), 4, 9, dtype=dtype)
    y = torch.zeros((0,), dtype=torch.int64)
    for reduction in ("sum", "none"):
        (loss, *grads), _ = _grads(ct.linear_cross_entropy, h, w, b, y,
                                   go=torch.ones(() if reduction == "sum" else (0,),
                                                 dtype=dtype),
                                   reduction=reduction, schedule=schedule, vocab_block_size=4)
        assert loss.shape == (() if reduction == "sum" else (0,))
        for g, t in zip(grads, (h, w, b)):
            assert g.shape == t.shape and torch.equal(g, torch.zeros_like(t))


def test_minus_inf_logits_in_whole_blocks():
    # a block whose every logit is -inf (a bias of -inf) adds nothing and is no NaN
    h, w, b, y = _problem((8,), 4, 12)
    b[4:8] = float("-inf")
    y = y % 4
    _assert_matches_reference((h, w, b, y), schedule="vocab", vocab_block_size=4,
                              label_smoothing=0.0, tol=1e-10)


# ---------------------------------------------------------------------------------------------
# K-dimensional heads
# ---------------------------------------------------------------------------------------------


def _k_dim_reference(h, W, b, y, **kw):
    """(N, C, d1, d2) logits in float64, then the plain per-element formula."""
    logits = torch.einsum("nd,cijd->ncij", h.double(), W.double()) + b.double()[None]
    return ct.cross_entropy_ref(logits, y, **kw)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("classes", "block"), [
    (7, 3),  # blocks are ranges of one position's classes (3 + 2 + 2 per position)
    (3, 7),  # blocks are two whole positions (6 columns), the last one position
])
@pytest.mark.parametrize("options", [
    dict(reduction="none", label_smoothing=0.1, ignore=True),
    dict(weight=True, z_loss=0.01, softcap=2.5),
    dict(probability=True, reduction="sum", label_smoothing=0.2),
])
def test_k_dimensional_head(impl, classes, block, options):
    options = dict(options)
    g = torch.Generator().manual_seed(3)
    n, d1, d2, features = 5, 3, 2, 4
    h = torch.randn(n, features, dtype=F64, generator=g)
    W = torch.randn(classes, d1, d2, features, dtype=F64, generator=g)
    b = torch.randn(classes, d1, d2, dtype=F64, generator=g)
    if options.pop("probability", False):
        y = torch.softmax(torch.randn(n, classes, d1, d2, dtype=F64, generator=g), 1)
    else:
        y = torch.randint(0, classes, (n, d1, d2), generator=g)
        if options.pop("ignore", False):
            y[0, 1, 0] = y[3, 2, 1] = -100
    if options.pop("weight", False):
        options["weight"] = torch.rand(classes, dtype=F64, generator=g) + 0.2
    leaves = [t.clone().requires_grad_() for t in (h, W, b)]
    ref = _k_dim_reference(*leaves, y, **options)
    go = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, leaves, go)
    leaves = [t.clone().requires_grad_() for t in (h, W, b)]
    loss = ct.linear_cross_entropy(leaves[0], leaves[1], y, linear_bias=leaves[2],
                                   schedule="vocab", vocab_block_size=block, chunk_size=2,
                                   impl=impl, **options)
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    for ours, theirs in zip(torch.autograd.grad(loss, leaves, go), ref_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


def test_block_plan():
    plan = blocked.plan_blocks(10, 1, 4)  # 3 blocks of 4, 4, 2 would leave a sliver
    assert [(p.first, p.width) for p in plan] == [(0, 4), (4, 4), (8, 2)]
    plan = blocked.plan_blocks(9, 1, 4)
    assert [p.width for p in plan] == [3, 3, 3]
    plan = blocked.plan_blocks(3, 5, 7)  # whole positions, two per block
    assert [(p.first, p.width, p.position, p.positions) for p in plan] == [
        (0, 6, 0, 2), (6, 6, 2, 2), (12, 3, 4, 1)]
    plan = blocked.plan_blocks(7, 2, 3)  # per position: 3 equal-ish blocks
    assert [(p.first, p.col_start, p.columns) for p in plan] == [
        (0, 0, 3), (3, 3, 3), (6, 6, 1), (7, 0, 3), (10, 3, 3), (13, 6, 1)]
    assert sum(p.width for p in blocked.plan_blocks(128256, 1, 8192)) == 128256


# ---------------------------------------------------------------------------------------------
# Low precision: the tolerance rule of DESIGN.md
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("schedule", "tile"), [("rows", 20), ("vocab", 20),
                                                ("vocab", None)])
@pytest.mark.parametrize("impl", IMPLS)
def test_bfloat16_confident_and_offset(schedule, tile, impl, within_torch_error):
    # p -> 1 for the target (a margin of ~20 over the rest) on logits near 300 (a common
    # offset, through the bias), where bfloat16's spacing is 2: the gradient's 1 - p must
    # not be lost to rounding, nor the offset leak into the loss
    g = torch.Generator().manual_seed(5)
    n, features, vocab = 48, 16, 300
    h = torch.randn(n, features, dtype=F64, generator=g)
    w = torch.randn(vocab, features, dtype=F64, generator=g) * 1.5
    b = torch.full((vocab,), 300.0, dtype=F64) + torch.randn(vocab, dtype=F64, generator=g)
    y = (h @ w.T + b).argmax(1)
    y[::4] = torch.randint(0, vocab, (n // 4,), generator=g)  # and some unconfident rows
    low = [t.to(torch.bfloat16) for t in (h, w, b)]
    ref, go = _grads(ct.linear_cross_entropy_ref, *(t.double() for t in low), y,
                     label_smoothing=0.05)
    naive = lambda a, c, t, linear_bias, **kw: F.cross_entropy(  # noqa: E731
        F.linear(a, c, linear_bias), t, **kw)
    same, _ = _grads(naive, *low, y, go=go.to(torch.bfloat16), label_smoothing=0.05)
    ours, _ = _grads(ct.linear_cross_entropy, *low, y, go=go.to(torch.bfloat16),
                     label_smoothing=0.05, schedule=schedule, impl=impl, vocab_block_size=64,
                     chunk_size=tile)
    assert all(t.dtype == torch.bfloat16 for t in ours)
    for name, o, s, r in zip(("loss", "d input", "d weight", "d bias"), ours, same, ref):
        within_torch_error(o, s, r, eps=1e-3, what=name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("tile", [16, None], ids=["tiles", "one-tile"])
def test_half_precision_matches_the_rows_schedule_closely(dtype, tile):
    # both schedules round the logits and their gradient to the input dtype and accumulate
    # the products in float32 (with one tile of every row, each block's dW is one product),
    # so they agree to a few units in the last place
    h, w, b, y = _problem((64,), 32, 200, dtype=dtype, ignore=True)
    rows, go = _grads(ct.linear_cross_entropy, h, w, b, y, schedule="rows", chunk_size=16)
    vocab, _ = _grads(ct.linear_cross_entropy, h, w, b, y, go=go, schedule="vocab",
                      chunk_size=tile, vocab_block_size=32)
    for name, a, r in zip(("loss", "d input", "d weight", "d bias"), vocab, rows):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), r.float(), rtol=2e-2, atol=2e-3, msg=name)


# ---------------------------------------------------------------------------------------------
# The autograd contract
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_repeated_backward(reduction):
    h, w, b, y = (t.requires_grad_() if t.is_floating_point() else t
                  for t in _problem((6,), 4, 9, ignore=True))
    kw = dict(linear_bias=b, reduction=reduction, label_smoothing=0.1)
    loss = ct.linear_cross_entropy(h, w, y, schedule="vocab", vocab_block_size=4,
                                   chunk_size=4, **kw)
    ref = F.linear_cross_entropy(h, w, y, ignore_index=-100, **kw)
    handed_out = []
    for upstream in (0.5, 0.5, 1.0, -3.0):
        go = torch.full_like(ref, upstream)
        expected = torch.autograd.grad(ref, (h, w, b), go, retain_graph=True)
        got = torch.autograd.grad(loss, (h, w, b), go, retain_graph=True)
        for a, e in zip(got, expected):
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)
        handed_out.append((got, [t.clone() for t in got]))
    for got, copies in handed_out:  # a gradient once handed out never changes
        for a, c in zip(got, copies):
            assert torch.equal(a, c)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_under_torch_func(reduction):
    h, w, b, y = _problem((6,), 4, 7, ignore=True, seed=1)

    def ours(h, w, b):
        return ct.linear_cross_entropy(h, w, y, linear_bias=b, reduction=reduction,
                                       label_smoothing=0.1, schedule="vocab",
                                       vocab_block_size=3, chunk_size=4)

    def theirs(h, w, b):
        return F.linear_cross_entropy(h, w, y, linear_bias=b, reduction=reduction,
                                      label_smoothing=0.1, ignore_index=-100)

    args = (h, w, b)
    tangents = tuple(torch.randn_like(a) for a in args)
    torch.testing.assert_close(jvp(ours, args, tangents)[1], jvp(theirs, args, tangents)[1])
    for a, c in zip(jacrev(ours, argnums=(0, 1, 2))(*args),
                    jacrev(theirs, argnums=(0, 1, 2))(*args)):
        torch.testing.assert_close(a, c)
    if reduction != "none":
        torch.testing.assert_close(grad(ours, argnums=1)(*args), grad(theirs, argnums=1)(*args))
        batch = torch.randn(3, *h.shape, dtype=F64)
        torch.testing.assert_close(vmap(grad(ours), (0, None, None))(batch, w, b),
                                   vmap(grad(theirs), (0, None, None))(batch, w, b))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_compile_fullgraph(reduction):
    h, w, b, y = _problem((20,), 6, 11, ignore=True)
    compiled = torch.compile(
        lambda a, c, t, linear_bias: ct.linear_cross_entropy(
            a, c, t, linear_bias=linear_bias, chunk_size=8, schedule="vocab",
            vocab_block_size=4, reduction=reduction),
        fullgraph=True, backend="aot_eager")
    ref, go = _grads(ct.linear_cross_entropy_ref, h, w, b, y, reduction=reduction)
    ours, _ = _grads(compiled, h, w, b, y, go=go)
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)


def test_frozen_head_and_input():
    h, w, b, y = _problem((12,), 4, 7)
    hh = h.clone().requires_grad_()
    ct.linear_cross_entropy(hh, w, y, schedule="vocab", vocab_block_size=3).backward()
    hr = h.clone().requires_grad_()
    F.cross_entropy(hr @ w.T, y).backward()
    torch.testing.assert_close(hh.grad, hr.grad, rtol=1e-10, atol=1e-12)
    ww = w.clone().requires_grad_()
    ct.linear_cross_entropy(h, ww, y, schedule="vocab", vocab_block_size=3).backward()
    wr = w.clone().requires_grad_()
    F.cross_entropy(h @ wr.T, y).backward()
    torch.testing.assert_close(ww.grad, wr.grad, rtol=1e-10, atol=1e-12)


def test_autocast_bfloat16():
    h, w, _, y = _problem((16,), 8, 40, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = ct.linear_cross_entropy(h, w, y, schedule="vocab", vocab_block_size=16)
        rows = ct.linear_cross_entropy(h, w, y, schedule="rows")
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, rows, rtol=1e-2, atol=1e-2)


# ---------------------------------------------------------------------------------------------
# The schedule: memory model, the "auto" rule, the API
# ---------------------------------------------------------------------------------------------


def test_memory_model_at_language_model_scale():
    # Llama 3's head in bfloat16 on a GPU: the rows schedule's float32 dW alone is 1.96 GiB
    m = linear_cross_entropy_memory(8192, 4096, 128256, dtype=torch.bfloat16, device="cuda")
    assert m.rows >= 128256 * 4096 * 4
    assert m.vocab < 0.6 * 2**30 and m.chosen == "vocab"
    assert (m.block, m.block_rows) == (4096, 8192)  # one tile of every row per block
    # float32 on a CPU: both accumulate into the returned gradients; rows is within budget
    m = linear_cross_entropy_memory(2048, 2048, 128256)
    assert m.rows < blocked.SCHEDULE_BUDGET_BYTES and m.chosen == "rows"
    # a frozen head needs no dW at all: rows again
    m = linear_cross_entropy_memory(8192, 4096, 128256, dtype=torch.bfloat16, device="cuda",
                                    weight_grad=False)
    assert m.chosen == "rows"
    # a vocabulary so large that even one row chunk of logits exceeds the budget
    m = linear_cross_entropy_memory(4096, 1024, 1 << 20)
    assert m.rows > blocked.SCHEDULE_BUDGET_BYTES > m.vocab and m.chosen == "vocab"


def test_choose_schedule_rule():
    budget = blocked.SCHEDULE_BUDGET_BYTES
    assert blocked.choose_schedule(budget, 1) == "rows"  # within budget: the faster one
    assert blocked.choose_schedule(budget + 1, 10) == "vocab"
    assert blocked.choose_schedule(budget + 1, budget + 1) == "rows"  # no gain: rows
    assert blocked.choose_schedule(5, 4, budget_bytes=0) == "vocab"


@pytest.mark.parametrize(("forced", "budget", "expected"), [
    ("auto", None, "rows"), ("auto", 0, "vocab"), ("vocab", None, "vocab"),
    ("rows", 0, "rows"),
])
def test_auto_runs_the_schedule_it_chose(monkeypatch, forced, budget, expected):
    ran = []
    real = blocked._blocked
    monkeypatch.setattr(blocked, "_blocked", lambda *a: ran.append("vocab") or real(*a))
    if budget is not None:
        monkeypatch.setattr(blocked, "SCHEDULE_BUDGET_BYTES", budget)
    # bfloat16, V >> N: the vocab schedule needs less (no float32 V x D)
    h, w, b, y = _problem((8,), 16, 600, dtype=torch.bfloat16)
    h.requires_grad_()
    w.requires_grad_()
    ct.linear_cross_entropy(h, w, y, schedule=forced, vocab_block_size=64).backward()
    assert ran == (["vocab"] if expected == "vocab" else [])  # gradients in the forward


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(schedule="blocks"), "schedule must be one of 'auto', 'rows', 'vocab'"),
    (dict(schedule=None), "schedule must be one of"),
    (dict(vocab_block_size=0), "vocab_block_size must be a positive int or None, got 0"),
    (dict(vocab_block_size=2.0), "vocab_block_size must be a positive int"),
    (dict(vocab_block_size=True), "vocab_block_size must be a positive int"),
])
def test_bad_schedule_arguments(kwargs, message):
    h, w, _, y = _problem((3,), 4, 5)
    with pytest.raises(ValueError, match=message):
        ct.linear_cross_entropy(h, w, y, **kwargs)


def test_module_passes_the_schedule():
    h, w, b, y = _problem((10,), 4, 6)
    module = ct.LinearCrossEntropyLoss(reduction="sum", label_smoothing=0.1,
                                       schedule="vocab", vocab_block_size=4)
    torch.testing.assert_close(
        module(h, w, y, b),
        F.cross_entropy(F.linear(h, w, b), y, reduction="sum", label_smoothing=0.1),
        rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="schedule must be one of"):
        ct.LinearCrossEntropyLoss(schedule="cols")


# ---------------------------------------------------------------------------------------------
# Memory: measured, never a V x D float32 buffer
# ---------------------------------------------------------------------------------------------


def _peak_torch_bytes(step) -> tuple[int, int]:
    """``(peak, end)`` bytes of torch's CPU allocations during ``step()`` beyond those alive
    before it, from the profiler's allocation events (every alloc and free, in order)."""
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        kept = step()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    del kept
    return peak, live


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_vocab_schedule_never_holds_a_vocab_by_hidden_float32_buffer(reduction):
    # bfloat16, all gradients, the torch executor (whose temporaries are torch's too).  What
    # stays allocated after the step is what it returns (dh, dW, db in bfloat16, the loss);
    # the peak beyond that must stay under the float32 V x D buffer the rows schedule needs,
    # and within the memory model.  The same measurement of the rows schedule sees its
    # buffer, so the test can fail.
    n, features, vocab = 64, 64, 16384
    h, w, b, y = _problem((n,), features, vocab, dtype=torch.bfloat16)
    vd32 = vocab * features * 4
    extra = {}
    for schedule in ("rows", "vocab"):
        leaves = [t.clone().requires_grad_() for t in (h, w, b)]

        def step(leaves=leaves, schedule=schedule):
            loss = ct.linear_cross_entropy(*leaves[:2], y, linear_bias=leaves[2], impl="torch",
                                           reduction=reduction, schedule=schedule,
                                           vocab_block_size=512)
            return torch.autograd.grad(loss.sum(), leaves)

        step()  # warm-up: lazy initialisations are not the schedule's
        peak, end = _peak_torch_bytes(step)
        extra[schedule] = peak - end
    model = linear_cross_entropy_memory(n, features, vocab, dtype=torch.bfloat16, impl="torch",
                                        bias_grad=True, vocab_block_size=512)
    assert extra["rows"] >= vd32, extra  # the measurement sees the rows schedule's buffer
    assert extra["vocab"] < vd32 / 2, extra
    assert extra["vocab"] <= model.vocab, (extra, model)
    assert extra["rows"] <= model.rows, (extra, model)


def test_numpy_executor_scratch_is_per_block():
    # the cpu executor's own buffers come from NumPy (tracemalloc sees them): bounded by the
    # tile, far below V x D
    n, features, vocab = 32, 64, 8192
    h, w, b, y = _problem((n,), features, vocab, dtype=torch.float32)
    leaves = [t.clone().requires_grad_() for t in (h, w, b)]

    def step():
        loss = ct.linear_cross_entropy(*leaves[:2], y, linear_bias=leaves[2], impl="cpu",
                                       schedule="vocab", vocab_block_size=256,
                                       label_smoothing=0.1)
        return torch.autograd.grad(loss, leaves)

    step()
    tracemalloc.start()
    try:
        step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < vocab * features * 4 / 8, peak


@pytest.mark.parametrize("tile", [7, None], ids=["tiles", "one-tile"])
def test_the_cuda_products_accumulate_like_the_cpu_ones(monkeypatch, tile):
    # pass 2's CUDA path (a half-precision product with a float32 result, the first into the
    # accumulator, later ones through a scratch buffer) run on CPU with an emulated product
    def emulated(a, b, out):
        assert a.dtype == b.dtype == torch.bfloat16 and out.dtype == torch.float32
        torch.mm(a.float(), b.float(), out=out)

    h, w, b, y = _problem((30,), 8, 50, dtype=torch.bfloat16, ignore=True)
    kw = dict(schedule="vocab", vocab_block_size=16, chunk_size=tile, label_smoothing=0.1)
    expected, go = _grads(ct.linear_cross_entropy, h, w, b, y, **kw)
    monkeypatch.setattr(blocked, "_product_mode", lambda device, dtype, acc: "cuda")
    monkeypatch.setattr(blocked, "_mm_float32", emulated)
    got, _ = _grads(ct.linear_cross_entropy, h, w, b, y, go=go, **kw)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, rtol=0, atol=0)

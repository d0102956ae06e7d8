"""crossent.torch inside real training code: the autograd contract around both ops.

A loss that is exact alone but wrong inside a training loop is wrong.  Each test holds one
promise of :mod:`crossent.torch._contract` to PyTorch's own ops (``F.cross_entropy``,
``F.linear_cross_entropy``) in float64: ``torch.func`` transforms and forward-mode AD, more
than one backward over one graph, what ``inplace_backward`` refuses, autocast, gradients of
class weights and probability targets, integer target dtypes, ``torch.compile`` with
dynamic shapes and symbolic floats, unsupported dtypes, and calls from several threads.
"""

from __future__ import annotations

import threading

import pytest

torch = pytest.importorskip("torch")
import torch.autograd.forward_ad as fwAD  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vmap  # noqa: E402

import crossent.torch as ct  # noqa: E402

F64 = torch.float64
REDUCTIONS = ["mean", "sum", "none"]


def _problem(kind="index", rows=5, classes=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, classes, dtype=F64, generator=g) * 2
    if kind == "index":
        y = torch.randint(0, classes, (rows,), generator=g)
        y[1] = -100
    else:
        y = torch.softmax(torch.randn(rows, classes, dtype=F64, generator=g), 1)
    return x, y


def _close(a, b, tol=1e-10):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol, equal_nan=True)


# ---------------------------------------------------------------------------------------------
# 1. torch.func and forward-mode AD
# ---------------------------------------------------------------------------------------------

OPTIONS = [dict(), dict(label_smoothing=0.2, weight=True)]


def _ce_pair(kind, reduction, options):
    x, y = _problem(kind)
    kw = dict(reduction=reduction, label_smoothing=options.get("label_smoothing", 0.0))
    if options.get("weight"):
        kw["weight"] = torch.rand(x.shape[1], dtype=F64) + 0.5
    return x, (lambda v: ct.cross_entropy(v, y, **kw)), (lambda v: F.cross_entropy(v, y, **kw))


@pytest.mark.parametrize("kind", ["index", "probability"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", OPTIONS)
def test_cross_entropy_under_torch_func(kind, reduction, options):
    x, ours, theirs = _ce_pair(kind, reduction, options)
    t = torch.randn_like(x)
    _close(jvp(ours, (x,), (t,))[1], jvp(theirs, (x,), (t,))[1])
    _close(jacrev(ours)(x), jacrev(theirs)(x))
    _close(jacfwd(ours)(x), jacfwd(theirs)(x))
    if reduction != "none":
        _close(grad(ours)(x), grad(theirs)(x))
        batch = torch.randn(3, *x.shape, dtype=F64)
        _close(vmap(grad(ours))(batch), vmap(grad(theirs))(batch))
    with fwAD.dual_level():
        ours_t = fwAD.unpack_dual(ours(fwAD.make_dual(x, t))).tangent
        theirs_t = fwAD.unpack_dual(theirs(fwAD.make_dual(x, t))).tangent
    _close(ours_t, theirs_t)


def test_cross_entropy_extras_under_torch_func():
    # z-loss and softcap against the plain reference, which torch.func differentiates itself
    x, y = _problem()
    kw = dict(z_loss=1e-2, softcap=3.0, label_smoothing=0.1)
    ours = lambda v: ct.cross_entropy(v, y, **kw)  # noqa: E731
    ref = lambda v: ct.cross_entropy_ref(v, y, **kw)  # noqa: E731
    t = torch.randn_like(x)
    _close(grad(ours)(x), grad(ref)(x))
    _close(jvp(ours, (x,), (t,))[1], jvp(ref, (x,), (t,))[1])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("bias", [False, True])
def test_linear_cross_entropy_under_torch_func(reduction, bias):
    g = torch.Generator().manual_seed(1)
    h = torch.randn(6, 4, dtype=F64, generator=g)
    w = torch.randn(7, 4, dtype=F64, generator=g)
    b = torch.randn(7, dtype=F64, generator=g) if bias else None
    y = torch.tensor([0, 6, -100, 3, 2, 1])

    def ours(h, w, *b):
        return ct.linear_cross_entropy(h, w, y, linear_bias=b[0] if b else None,
                                       reduction=reduction, label_smoothing=0.1, chunk_size=4)

    def theirs(h, w, *b):
        return F.linear_cross_entropy(h, w, y, linear_bias=b[0] if b else None,
                                      reduction=reduction, label_smoothing=0.1,
                                      ignore_index=-100)

    args = (h, w) + ((b,) if bias else ())
    tangents = tuple(torch.randn_like(a) for a in args)
    _close(jvp(ours, args, tangents)[1], jvp(theirs, args, tangents)[1])
    _close(jacfwd(ours, argnums=1)(*args), jacfwd(theirs, argnums=1)(*args))
    for a, c in zip(jacrev(ours, argnums=(0, 1))(*args), jacrev(theirs, argnums=(0, 1))(*args)):
        _close(a, c)
    if reduction != "none":
        _close(grad(ours)(*args), grad(theirs)(*args))
        batch = torch.randn(3, *h.shape, dtype=F64)
        in_dims = (0,) + (None,) * (len(args) - 1)
        _close(vmap(grad(ours), in_dims)(batch, *args[1:]),
               vmap(grad(theirs), in_dims)(batch, *args[1:]))


@pytest.mark.parametrize("transform", [
    lambda f: hessian(f), lambda f: jacfwd(jacrev(f)), lambda f: grad(grad(f)),
])
def test_second_derivatives_are_refused_not_zero(transform):
    x, y = _problem()
    w = torch.randn(3, 7, dtype=F64)
    for f in (lambda v: ct.cross_entropy(v, y),
              lambda v: ct.linear_cross_entropy(v, w, torch.tensor([0, 1, 2, 0, 1]))):
        with pytest.raises(RuntimeError, match="first derivatives only"):
            transform(f)(x)


def test_double_backward_is_refused():
    x, y = _problem()
    x.requires_grad_()
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(ct.cross_entropy(x, y), x, create_graph=True)
    w = torch.randn(3, 7, dtype=F64, requires_grad=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(ct.linear_cross_entropy(x, w, torch.tensor([0, 1, 2, 0, 1])), w,
                            create_graph=True)


# ---------------------------------------------------------------------------------------------
# 2. More than one backward over one graph
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["cpu", "torch"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_repeated_backward(impl, reduction):
    x, y = _problem()
    leaf = x.clone().requires_grad_()
    loss = ct.cross_entropy(leaf, y, reduction=reduction, impl=impl)
    ref_leaf = x.clone().requires_grad_()
    ref = F.cross_entropy(ref_leaf, y, reduction=reduction)
    for upstream in (1.0, 0.5, 1.0, -2.0):
        go = torch.full_like(ref, upstream)
        expected = torch.autograd.grad(ref, ref_leaf, go, retain_graph=True)[0]
        first = torch.autograd.grad(loss, leaf, go, retain_graph=True)[0]
        kept = first.clone()
        second = torch.autograd.grad(loss, leaf, go, retain_graph=True)[0]
        _close(first, expected)
        _close(second, expected)
        _close(first, kept)  # a gradient handed out never changes afterwards
        first.mul_(7)  # and what its owner does with it changes nothing for the graph
        _close(torch.autograd.grad(loss, leaf, go, retain_graph=True)[0], expected)


@pytest.mark.parametrize("zero", ["zero_", "data.zero_"])
def test_zeroing_grad_between_backwards(zero):
    x, y = _problem()
    leaf = x.clone().requires_grad_()
    loss = ct.cross_entropy(leaf, y)
    loss.backward(retain_graph=True)
    ref_leaf = x.clone().requires_grad_()
    (expected_grad,) = torch.autograd.grad(F.cross_entropy(ref_leaf, y), ref_leaf)
    if zero == "zero_":
        leaf.grad.zero_()
    else:
        leaf.grad.data.zero_()
    loss.backward()
    _close(leaf.grad, expected_grad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_linear_cross_entropy_repeated_backward(reduction):
    g = torch.Generator().manual_seed(2)
    h = torch.randn(6, 4, dtype=F64, generator=g, requires_grad=True)
    w = torch.randn(9, 4, dtype=F64, generator=g, requires_grad=True)
    b = torch.randn(9, dtype=F64, generator=g, requires_grad=True)
    y = torch.randint(0, 9, (6,), generator=g)
    loss = ct.linear_cross_entropy(h, w, y, linear_bias=b, reduction=reduction, chunk_size=4)
    ref = F.linear_cross_entropy(h, w, y, linear_bias=b, reduction=reduction, ignore_index=-100)
    handed_out = []
    for upstream in (0.5, 0.5, 1.0, 3.0):
        go = torch.full_like(ref, upstream)
        expected = torch.autograd.grad(ref, (h, w, b), go, retain_graph=True)
        got = torch.autograd.grad(loss, (h, w, b), go, retain_graph=True)
        for a, e in zip(got, expected):
            _close(a, e)
        handed_out.append((got, [t.clone() for t in got]))
    for got, copies in handed_out:
        for a, c in zip(got, copies):
            _close(a, c)
    h.grad = None
    loss.backward(torch.full_like(ref, 0.5), retain_graph=True)
    h.grad.data.zero_()
    loss.backward(torch.full_like(ref, 0.5))
    _close(h.grad, torch.autograd.grad(ref, h, torch.full_like(ref, 0.5))[0])


# ---------------------------------------------------------------------------------------------
# 3. inplace_backward refuses memory that anything else needs
# ---------------------------------------------------------------------------------------------

def _refused(logits, fragment, y=None):
    y = torch.tensor([0, 1, 2]) if y is None else y
    with pytest.raises(ValueError, match=fragment) as info:
        ct.cross_entropy(logits, y, inplace_backward=True)
    assert "inplace_backward" in str(info.value)


def test_inplace_refuses_a_leaf_that_requires_grad_and_its_views():
    parameter = torch.nn.Parameter(torch.randn(3, 5))
    before = parameter.detach().clone()
    _refused(parameter, "leaf tensor that requires grad")
    _refused(parameter.view(3, 5), "view of a leaf")
    torch.testing.assert_close(parameter.detach(), before)  # nothing was overwritten


def test_inplace_refuses_overlapping_and_broadcast_rows():
    base = torch.randn(5) * 1.0
    _refused(base.requires_grad_().clone().expand(3, 5), "overlap")
    wide = (torch.randn(20, requires_grad=True) * 1.0)
    _refused(wide.as_strided((3, 5), (2, 1)), "overlap")


def test_inplace_refuses_logits_saved_for_another_backward():
    z = torch.randn(3, 5, requires_grad=True)
    _refused(z.exp(), "saved for its own backward")  # exp saves its result
    logits = z * 2.0
    aux = logits.pow(2).sum()  # pow saved the logits for its backward
    _refused(logits, "another tensor still uses")
    aux.backward()  # the refusal left them intact
    torch.testing.assert_close(z.grad, 8 * z.detach())


def test_inplace_accepts_a_models_output_and_matches():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 6).double()
    x = torch.randn(5, 4, dtype=F64)
    y = torch.tensor([0, 5, 2, 3, 1])
    ct.cross_entropy(layer(x), y, inplace_backward=True).backward()
    ours = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    F.cross_entropy(layer(x), y).backward()
    for a, b in zip(ours, layer.parameters()):
        _close(a, b.grad)
    # a language model's habit: a flat view of (B, T, V) logits that the caller still holds
    logits = layer(x.reshape(5, 1, 4).expand(5, 2, 4).contiguous())
    loss = ct.cross_entropy(logits.view(-1, 6), y.repeat_interleave(2), inplace_backward=True)
    _close(loss, F.cross_entropy(layer(x).repeat_interleave(2, 0), y.repeat_interleave(2)))


# ---------------------------------------------------------------------------------------------
# 4. autocast, 5. class weights and probability targets that require grad
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_autocast_gives_pytorchs_dtype_and_value(dtype):
    torch.manual_seed(0)
    x = torch.randn(6, 9, dtype=dtype)
    y = torch.randint(0, 9, (6,))
    weight = torch.rand(9) + 0.5  # float32 weight: accepted under autocast, as by PyTorch
    h, w = torch.randn(6, 8, dtype=dtype), torch.randn(9, 8, dtype=dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = ct.cross_entropy(x, y, weight=weight)
        theirs = F.cross_entropy(x, y, weight=weight)
        ours_linear = ct.linear_cross_entropy(h, w, y)
        theirs_linear = F.linear_cross_entropy(h, w, y)
    assert ours.dtype == theirs.dtype == torch.float32
    assert ours_linear.dtype == theirs_linear.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours_linear, theirs_linear, rtol=1e-6, atol=1e-6)


def test_autocast_gradients_have_the_inputs_dtype():
    h = torch.randn(6, 8, requires_grad=True)
    w = torch.randn(9, 8, requires_grad=True)
    y = torch.randint(0, 9, (6,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ct.linear_cross_entropy(h, w, y).backward()
    ours = (h.grad.clone(), w.grad.clone())
    h.grad = w.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        F.linear_cross_entropy(h, w, y).backward()
    for a, b in zip(ours, (h.grad, w.grad)):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)


def test_float64_under_autocast_keeps_pytorchs_weight_rule():
    x = torch.randn(3, 4, dtype=F64)
    y = torch.tensor([0, 1, 2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ct.cross_entropy(x, y).dtype == F64
        with pytest.raises(RuntimeError):
            F.cross_entropy(x, y, weight=torch.ones(4))
        with pytest.raises(RuntimeError, match="weight must have the input's dtype"):
            ct.cross_entropy(x, y, weight=torch.ones(4))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_probability_target_and_weight_gradients(reduction):
    x, p = _problem("probability")
    kw = dict(reduction=reduction, label_smoothing=0.1)
    grads = []
    for fn in (ct.cross_entropy, F.cross_entropy):
        xx, pp = x.clone().requires_grad_(), p.clone().requires_grad_()
        w = (torch.linspace(0.5, 2.0, x.shape[1], dtype=F64)).requires_grad_()
        loss = fn(xx, pp, weight=w, **kw)
        go = torch.linspace(-1, 2, loss.numel(), dtype=F64).reshape(loss.shape)
        grads.append(torch.autograd.grad(loss, (xx, pp, w), go))
    for a, b in zip(*grads):
        _close(a, b)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_linear_probability_target_and_weight_gradients(reduction):
    g = torch.Generator().manual_seed(3)
    h = torch.randn(5, 4, dtype=F64, generator=g, requires_grad=True)
    w = torch.randn(6, 4, dtype=F64, generator=g, requires_grad=True)
    p = torch.softmax(torch.randn(5, 6, dtype=F64, generator=g), 1).requires_grad_()
    cw = torch.linspace(0.5, 2.0, 6, dtype=F64).requires_grad_()
    kw = dict(reduction=reduction, label_smoothing=0.2, weight=cw)
    ours = ct.linear_cross_entropy(h, w, p, chunk_size=2, **kw)
    theirs = F.cross_entropy(F.linear(h, w), p, **kw)
    go = torch.linspace(-1, 2, ours.numel(), dtype=F64).reshape(ours.shape)
    for a, b in zip(torch.autograd.grad(ours, (h, w, p, cw), go),
                    torch.autograd.grad(theirs, (h, w, p, cw), go)):
        _close(a, b)


def test_weight_requiring_grad_with_index_targets_behaves_as_pytorch():
    x, y = _problem()
    x.requires_grad_()
    w = torch.rand(7, dtype=F64, requires_grad=True)
    with pytest.raises(RuntimeError, match="not differentiable with respect to weight"):
        ct.cross_entropy(x, y, weight=w)
    with pytest.raises(RuntimeError, match="not differentiable"):
        F.cross_entropy(x, y, weight=w)
    with torch.no_grad():  # nothing to differentiate: PyTorch and crossent both compute
        _close(ct.cross_entropy(x, y, weight=w), F.cross_entropy(x, y, weight=w))


# ---------------------------------------------------------------------------------------------
# 6. integer target dtypes, 10. unsupported logits dtypes, 14. weight dtype
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["cpu", "torch"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32,
                                   torch.uint16, torch.uint32, torch.uint64])
def test_every_integer_target_dtype(impl, dtype):
    x, y = _problem()
    y = y.clamp(min=0)
    expected = F.cross_entropy(x, y, reduction="none")
    _close(ct.cross_entropy(x, y.to(dtype), reduction="none", impl=impl), expected)
    h, w = x[:, :4].contiguous(), torch.randn(7, 4, dtype=F64)
    _close(ct.linear_cross_entropy(h, w, y.to(dtype), impl=impl),
           F.linear_cross_entropy(h, w, y))


def test_uint64_targets_beyond_int64_are_out_of_range():
    x, _ = _problem(rows=3)
    y = torch.tensor([0, 2**64 - 100, 1], dtype=torch.uint64)  # would wrap to -100
    with pytest.raises(IndexError, match=r"target\[1\] = 18446744073709551516 is out of range"):
        ct.cross_entropy(x, y)
    with pytest.raises(IndexError, match="18446744073709551516"):
        ct.linear_cross_entropy(x[:, :4].contiguous(), torch.randn(7, 4, dtype=F64), y)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_unsupported_float_dtypes_name_input_and_the_supported_dtypes(dtype):
    x = torch.randn(3, 4).to(dtype)
    for call in (lambda: ct.cross_entropy(x, torch.tensor([0, 1, 2])),
                 lambda: ct.linear_cross_entropy(x, x[:2], torch.tensor([0, 1, 1]))):
        with pytest.raises(TypeError, match=r"input must be .*float16, bfloat16, float32, "
                                            r"float64, got dtype float8"):
            call()
    with pytest.raises(NotImplementedError):  # the type PyTorch raises, too
        ct.cross_entropy(x, torch.tensor([0, 1, 2]))


@pytest.mark.parametrize(("x_dtype", "w_dtype"), [(F64, torch.float32),
                                                  (torch.float32, F64),
                                                  (torch.bfloat16, torch.float32)])
def test_weight_must_have_the_inputs_dtype(x_dtype, w_dtype):
    x = torch.randn(3, 4, dtype=x_dtype)
    y = torch.tensor([0, 1, 2])
    with pytest.raises(RuntimeError):
        F.cross_entropy(x, y, weight=torch.ones(4, dtype=w_dtype))
    with pytest.raises(TypeError, match="weight must have the input's dtype"):
        ct.cross_entropy(x, y, weight=torch.ones(4, dtype=w_dtype))
    with pytest.raises(RuntimeError, match="weight must have the input's dtype"):
        ct.linear_cross_entropy(x, x, y, weight=torch.ones(3, dtype=w_dtype))
    # probability targets take any floating weight, which promotes the loss (PyTorch's rule)
    p = torch.softmax(torch.randn(3, 4), 1).to(x_dtype)
    w = torch.linspace(0.5, 2, 4, dtype=w_dtype)
    theirs = F.cross_entropy(x, p, weight=w)
    ours = ct.cross_entropy(x, p, weight=w)
    assert ours.dtype == theirs.dtype
    torch.testing.assert_close(ours, theirs, rtol=1e-2 if x_dtype == torch.bfloat16 else 1e-6,
                               atol=1e-6)


# ---------------------------------------------------------------------------------------------
# 9. torch.compile with dynamic shapes and symbolic floats
# ---------------------------------------------------------------------------------------------

def test_compile_dynamic_shapes_and_symbolic_floats():
    import torch._dynamo

    def loss_fn(x, y, h, w, eps, z):
        a = ct.cross_entropy(x, y, label_smoothing=eps, z_loss=z, softcap=4.0)
        b = ct.linear_cross_entropy(h, w, y, label_smoothing=eps, z_loss=z)
        return a + b

    torch._dynamo.reset()
    with torch._dynamo.config.patch(specialize_float=False):
        compiled = torch.compile(loss_fn, fullgraph=True, dynamic=True, backend="aot_eager")
        for rows, eps, z in ((6, 0.1, 1e-3), (9, 0.25, 1e-4)):
            g = torch.Generator().manual_seed(rows)
            x = torch.randn(rows, 11, dtype=F64, generator=g, requires_grad=True)
            h = torch.randn(rows, 5, dtype=F64, generator=g, requires_grad=True)
            w = torch.randn(11, 5, dtype=F64, generator=g, requires_grad=True)
            y = torch.randint(0, 11, (rows,), generator=g)
            torch._dynamo.mark_dynamic(x, 0)
            got = compiled(x, y, h, w, eps, z)
            got_grads = torch.autograd.grad(got, (x, h, w))
            want = loss_fn(x, y, h, w, eps, z)
            want_grads = torch.autograd.grad(want, (x, h, w))
            _close(got, want)
            for a, b in zip(got_grads, want_grads):
                _close(a, b)


# ---------------------------------------------------------------------------------------------
# Several threads
# ---------------------------------------------------------------------------------------------

def test_several_threads_at_once(monkeypatch):
    monkeypatch.setenv("CROSSENT_NUM_THREADS", "2")
    problems = [(torch.randn(300, 4000), torch.randint(0, 4000, (300,))) for _ in range(4)]
    expected = []
    for x, y in problems:
        leaf = x.clone().requires_grad_()
        F.cross_entropy(leaf, y).backward()
        expected.append(leaf.grad)
    results = [None] * len(problems)

    def work(i):
        x, y = problems[i]
        leaf = x.clone().requires_grad_()
        for _ in range(3):
            leaf.grad = None
            ct.cross_entropy(leaf, y).backward()
        results[i] = leaf.grad

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(problems))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for got, want in zip(results, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# 14. The exception types PyTorch raises for the same mistake
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda m: m.linear_cross_entropy(torch.randn(2, 3), torch.randn(4, 3), torch.rand(3, 4)),
    lambda m: m.linear_cross_entropy(torch.randn(2, 3), torch.randn(4, 3), torch.tensor([0, 1, 2])),
    lambda m: m.linear_cross_entropy(torch.randn(2, 3), torch.randn(4, 3), torch.rand(2, 5)),
    lambda m: m.linear_cross_entropy(torch.randn(3), torch.randn(4, 3), torch.tensor([1, 2])),
    lambda m: m.cross_entropy(torch.randn(2, 4), torch.rand(3, 4)),
    lambda m: m.cross_entropy(torch.randn(2, 4), torch.tensor([0, 1, 2])),
    lambda m: m.cross_entropy(torch.randn(2, 4, 3), torch.zeros(2, 4, dtype=torch.long)),
], ids=["linear-prob-batch", "linear-index-batch", "linear-prob-classes", "linear-1d",
        "prob-batch", "index-batch", "kdim-shape"])
def test_shape_mistakes_raise_pytorchs_type(call):
    with pytest.raises(Exception) as theirs:
        call(F)
    with pytest.raises(type(theirs.value)):
        call(ct)


# ---------------------------------------------------------------------------------------------
# What a backward costs: it hands out the gradients made in the forward pass
# ---------------------------------------------------------------------------------------------

def _bytes_allocated_by(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return sum(e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0)


@pytest.mark.parametrize("inplace", [False, True])
def test_backward_allocates_no_logits_sized_tensor(inplace):
    rows, classes = 64, 2000
    leaf = torch.randn(rows, classes, requires_grad=True)
    logits = leaf.clone() if inplace else leaf
    loss = ct.cross_entropy(logits, torch.randint(0, classes, (rows,)),
                            inplace_backward=inplace)
    assert _bytes_allocated_by(loss.backward) < rows * classes * 4 // 8
    h = torch.randn(rows, 32, requires_grad=True)
    w = torch.randn(classes, 32, requires_grad=True)
    loss = ct.linear_cross_entropy(h, w, torch.randint(0, classes, (rows,)))
    assert _bytes_allocated_by(loss.backward) < 32 * classes * 4 // 8


def test_linear_loss_dtype_gives_the_float32_loss_of_upcast_logits():
    g = torch.Generator().manual_seed(4)
    h = torch.randn(16, 8, generator=g).bfloat16()
    w = torch.randn(50, 8, generator=g).bfloat16()
    y = torch.randint(0, 50, (16,), generator=g)
    ours = ct.linear_cross_entropy(h, w, y, loss_dtype=torch.float32)
    theirs = F.cross_entropy(F.linear(h, w).float(), y)  # Hugging Face's upcast
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert ct.linear_cross_entropy(h, w, y).dtype == torch.bfloat16  # PyTorch's rule otherwise
    with pytest.raises(TypeError, match="loss_dtype"):
        ct.linear_cross_entropy(h, w, y, loss_dtype=torch.int64)


# ---------------------------------------------------------------------------------------------
# 11. K-dimensional heads, 13. K-dimensional inputs without class-last copies
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rows", [0, 1, 5])
@pytest.mark.parametrize("kind", ["index", "probability"])
def test_linear_k_dimensional_head_matches_pytorch(rows, kind):
    g = torch.Generator().manual_seed(5)
    h = torch.randn(rows, 4, dtype=F64, generator=g, requires_grad=True)
    w = torch.randn(3, 2, 5, 4, dtype=F64, generator=g, requires_grad=True)  # (C, d1, d2, D)
    b = torch.randn(3, 2, 5, dtype=F64, generator=g, requires_grad=True)
    if kind == "index":
        y = torch.randint(0, 3, (rows, 2, 5), generator=g)
    else:
        y = torch.softmax(torch.randn(rows, 3, 2, 5, dtype=F64, generator=g), 1)
    for reduction in REDUCTIONS:
        kw = dict(linear_bias=b, reduction=reduction, label_smoothing=0.1)
        ours = ct.linear_cross_entropy(h, w, y, chunk_size=2, **kw)
        theirs = F.linear_cross_entropy(h, w, y, **kw)
        assert ours.shape == theirs.shape
        _close(ours, theirs)
        go = torch.ones_like(theirs)
        got = torch.autograd.grad(ours, (h, w, b), go, allow_unused=True)
        want = torch.autograd.grad(theirs, (h, w, b), go, allow_unused=True)
        assert got[0].shape == (rows, 4)
        for a, c in zip(got, want):
            _close(a, c if c is not None else torch.zeros_like(a))


@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_k_dimensional_input_needs_no_class_last_copy(impl, monkeypatch):
    import crossent.torch.functional as ctf

    x = torch.randn(4, 21, 8, 8, requires_grad=True)  # a segmentation map, classes on axis 1
    y = torch.randint(0, 21, (4, 8, 8))
    seen = []
    run = ctf._run

    def spy(logits, target, weight, call, want_grad):
        out = run(logits, target, weight, call, want_grad)
        seen.append((logits.data_ptr(), tuple(logits.shape), out[2].data_ptr()))
        return out

    monkeypatch.setattr(ctf, "_run", spy)
    ct.cross_entropy(x, y, impl=impl).backward()
    (logits_at, shape, grad_at), = seen
    assert logits_at == x.data_ptr() and shape == (4, 21, 64)  # the input itself, (N, C, S)
    assert x.grad.data_ptr() == grad_at  # the gradient handed out is the one computed
    x2 = x.detach().clone().requires_grad_()
    F.cross_entropy(x2, y).backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("impl", ["cpu", "torch"])
@pytest.mark.parametrize(("shape", "target_shape"), [((0, 0), (0,)), ((0, 0, 3), (0, 3)),
                                                     ((0, 5), (0,))])
def test_an_empty_batch_may_have_no_classes(impl, shape, target_shape):
    """PyTorch accepts (0, 0): an empty loss, 'mean' NaN, 'sum' 0 (the NumPy API too)."""
    for reduction in REDUCTIONS:
        x = torch.empty(shape, requires_grad=True)
        y = torch.empty(target_shape, dtype=torch.long)
        ours = ct.cross_entropy(x, y, reduction=reduction, impl=impl)
        theirs = F.cross_entropy(x, y, reduction=reduction)
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs, equal_nan=True)
        ours.sum().backward()
        assert x.grad.shape == shape

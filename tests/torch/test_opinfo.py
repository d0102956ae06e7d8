"""PyTorch's own OpInfo samples, fed through crossent.

``torch.testing._internal.common_methods_invocations.op_db`` holds, for every PyTorch op,
the sample inputs PyTorch tests itself with (shapes, dtypes, options, empty and 0-d edge
cases) and, for some ops, inputs that must raise.  Each sample of the ops crossent
re-implements is computed by PyTorch and by crossent, in float32 and float64, and the
values and the gradients (with a random upstream gradient) must agree:

* ``nn.functional.cross_entropy`` and every variant of ``nn.functional.linear_cross_entropy``
  through :mod:`crossent.torch` (autograd gradients of every input that requires grad:
  logits, hidden states, head weight and bias, probability targets);
* ``nn.functional.cross_entropy``, ``nll_loss``, ``binary_cross_entropy``,
  ``binary_cross_entropy_with_logits`` and ``kl_div`` through the NumPy API and its
  ``*_with_grad`` twins (the gradient of ``input``, the one they return);
* ``softmax``, ``log_softmax`` and ``logsumexp`` through the NumPy API (values: the NumPy API
  has no gradient functions for them).

``error_inputs`` must raise an exception of the type PyTorch raises.
"""

from __future__ import annotations

import warnings
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("expecttest")  # torch.testing._internal imports it

from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402

import crossent  # noqa: E402
import crossent.torch as ct  # noqa: E402

DTYPES = [torch.float32, torch.float64]
TOLERANCE = {torch.float32: dict(rtol=2e-5, atol=2e-6), torch.float64: dict(rtol=1e-10,
                                                                             atol=1e-12)}


def _np(value):
    return value.detach().numpy() if isinstance(value, torch.Tensor) else value


def _upstream(out: torch.Tensor, key: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    return torch.randn(out.shape, dtype=out.dtype, generator=g)


def _torch_grads(fn, inputs, upstream):
    """The value of ``fn()`` and the gradients of ``inputs`` (those that require grad)."""
    out = fn()
    wanted = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    if not wanted or not out.requires_grad:
        return out.detach(), [None] * len(wanted)
    grads = torch.autograd.grad(out, wanted, upstream(out), allow_unused=True)
    return out.detach(), list(grads)


def _fresh(sample):
    """A deep copy of a sample's tensors (autograd leaves again), so both sides start equal."""
    def copy(value):
        if isinstance(value, torch.Tensor):
            return value.detach().clone().requires_grad_(value.requires_grad)
        return value
    return (copy(sample.input), [copy(a) for a in sample.args],
            {k: copy(v) for k, v in sample.kwargs.items()})


# --------------------------------------------------------------------------------------------
# Adapters: the crossent call for one sample, as (value, gradients of the inputs that require
# grad, in the same order as PyTorch's) or (value, gradient of input only).
# --------------------------------------------------------------------------------------------

def _crossent_torch(fn):
    def run(op, sample, upstream):
        x, args, kwargs = _fresh(sample)
        inputs = [x, *args, *kwargs.values()]
        return _torch_grads(lambda: fn(x, *args, **kwargs), inputs, upstream)
    return run


def _numpy_with_grad(fn_with_grad):
    """NumPy loss twins: compare the value and the gradient of ``input``."""
    def run(op, sample, upstream):
        x, args, kwargs = _fresh(sample)
        expected = op.op(x, *args, **kwargs)
        go = upstream(expected)
        value, grad = fn_with_grad(_np(x), *map(_np, args),
                                   **{k: _np(v) for k, v in kwargs.items()},
                                   grad_output=_np(go))
        return torch.as_tensor(np.asarray(value)), [torch.as_tensor(grad)]
    return run


def _numpy_values(fn, translate):
    def run(op, sample, upstream):
        x, args, kwargs = _fresh(sample)
        call_args, call_kwargs = translate(_np(x), args, kwargs)
        return torch.as_tensor(np.asarray(fn(*call_args, **call_kwargs))), []
    return run


def _softmax_args(x, args, kwargs):
    dtype = kwargs.get("dtype")
    if dtype is not None:
        x = x.astype(torch.empty((), dtype=dtype).numpy().dtype)
    return (x,), {"axis": args[0]}


def _logsumexp_args(x, args, kwargs):
    dim, keepdim = (list(args) + [False])[:2] if len(args) > 1 else (args[0], False)
    return (x,), {"axis": tuple(dim) if isinstance(dim, (list, tuple)) else dim,
                  "keepdims": kwargs.get("keepdim", keepdim)}


ADAPTERS = {
    ("nn.functional.cross_entropy", "", "torch"): _crossent_torch(ct.cross_entropy),
    ("nn.functional.cross_entropy", "", "numpy"): _numpy_with_grad(
        crossent.cross_entropy_with_grad),
    ("nn.functional.nll_loss", "", "numpy"): _numpy_with_grad(crossent.nll_loss_with_grad),
    ("nn.functional.binary_cross_entropy", "", "numpy"): _numpy_with_grad(
        crossent.binary_cross_entropy_with_grad),
    ("nn.functional.binary_cross_entropy_with_logits", "", "numpy"): _numpy_with_grad(
        crossent.binary_cross_entropy_with_logits_with_grad),
    ("nn.functional.kl_div", "", "numpy"): _numpy_with_grad(crossent.kl_div_with_grad),
    ("softmax", "", "numpy"): _numpy_values(crossent.softmax, _softmax_args),
    ("softmax", "with_dtype", "numpy"): _numpy_values(crossent.softmax, _softmax_args),
    ("log_softmax", "", "numpy"): _numpy_values(crossent.log_softmax, _softmax_args),
    ("log_softmax", "with_dtype", "numpy"): _numpy_values(crossent.log_softmax, _softmax_args),
    ("logsumexp", "", "numpy"): _numpy_values(crossent.logsumexp, _logsumexp_args),
}
for _variant in ("", "chunked", "chunked_none"):
    ADAPTERS[("nn.functional.linear_cross_entropy", _variant, "torch")] = _crossent_torch(
        ct.linear_cross_entropy)

OPS = {(op.name, op.variant_test_name): op for op in op_db
       if any(key[:2] == (op.name, op.variant_test_name) for key in ADAPTERS)}


def test_every_op_is_in_torchs_op_db():
    assert set(OPS) == {key[:2] for key in ADAPTERS}


def _cases():
    for (name, variant, api) in ADAPTERS:
        for dtype in DTYPES:
            yield pytest.param(name, variant, api, dtype,
                               id=f"{name}[{variant or 'default'}]-{api}-{str(dtype)[6:]}")


@pytest.mark.parametrize(("name", "variant", "api", "dtype"), list(_cases()))
def test_samples_match_pytorch(name, variant, api, dtype):
    op = OPS[(name, variant)]
    samples = list(op.sample_inputs("cpu", dtype, requires_grad=True))
    assert samples
    for index, sample in enumerate(samples):
        _check_sample(op, ADAPTERS[(name, variant, api)], api, sample,
                      f"{name}-{variant}-{index}", TOLERANCE[dtype])


def _check_sample(op, adapter, api, sample, key, tolerance):
    def upstream(out):
        return _upstream(out, key)

    x, args, kwargs = _fresh(sample)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # kl_div 'mean' warns on both sides
        expected, expected_grads = _torch_grads(lambda: op.op(x, *args, **kwargs),
                                                [x, *args, *kwargs.values()], upstream)
        got, got_grads = adapter(op, sample, upstream)
    where = f"{key}: {sample.summary() if hasattr(sample, 'summary') else sample}"
    assert tuple(got.shape) == tuple(expected.shape), where
    torch.testing.assert_close(got.to(expected.dtype), expected, equal_nan=True,
                               msg=lambda m: f"{where}\n{m}", **tolerance)
    if api == "numpy":  # the NumPy twins return the gradient of input only
        expected_grads = expected_grads[:1] if got_grads else []
    assert len(got_grads) == len(expected_grads), where
    for ours, theirs in zip(got_grads, expected_grads):
        if theirs is not None:
            torch.testing.assert_close(ours.to(theirs.dtype), theirs, equal_nan=True,
                                       msg=lambda m: f"{where} (gradient)\n{m}", **tolerance)


@pytest.mark.parametrize("variant", ["", "chunked", "chunked_none"])
def test_linear_cross_entropy_error_inputs_raise_pytorchs_types(variant):
    op = OPS[("nn.functional.linear_cross_entropy", variant)]
    errors = list(op.error_inputs("cpu"))
    assert errors
    for error in errors:
        sample = error.sample_input
        with pytest.raises(error.error_type):
            op.op(sample.input, *sample.args, **sample.kwargs)
        with pytest.raises(error.error_type):
            ct.linear_cross_entropy(sample.input, *sample.args, **sample.kwargs)

"""The Triton cross-entropy kernels against the float64 plain-torch reference.

Without a GPU the kernels run in Triton's interpreter on CPU tensors: ``TRITON_INTERPRET=1``
is set by ``tests/conftest.py``, before triton is first imported (Triton fixes the mode at
import; ``tests/support/triton_support.py`` picks the device).  With a GPU
the same tests run the compiled kernels on CUDA tensors.  The interpreter runs each program
in Python, so the shapes are small; the code paths are forced instead of reached by size:

* ``single``: one block holds the whole row (read once);
* ``stream``: the row variant streaming blocks of 16 over 37 classes (3 blocks, the last
  partial), so the online rescaling between blocks is exercised;
* ``split``: 3 programs per row over chunks of 16 (2 blocks of 8 each, the last chunk
  partial), so the merge of partial statistics is exercised.

Accuracy follows DESIGN.md: float32 against fixed tolerances; float16/bfloat16 by the rule
``|ours - fp64| <= k |torch_same_dtype - fp64| + rtol |fp64| + atol`` where ``rtol`` is one
unit of rounding of the *output* dtype (our gradient is the float32 value rounded once).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
from hypothesis import given
from hypothesis import strategies as st
from triton_support import triton_device  # noqa: E402

DEVICE = triton_device()
ON_GPU = DEVICE.type == "cuda"

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import crossent.torch.triton.cross_entropy as ce  # noqa: E402
from crossent.torch._params import CrossEntropyParams as P  # noqa: E402
from crossent.torch.triton import is_available, require_triton  # noqa: E402
from crossent.torch.triton._kernels import _tanh_and_slope  # noqa: E402
from crossent.torch.triton.cross_entropy import cross_entropy_fwd, plan_launch  # noqa: E402
from crossent.torch.triton.reference import cross_entropy_rows_ref  # noqa: E402

# numpy warns about the 0 * inf and inf - inf the kernels compute and then discard (masked
# lanes, -inf logits) when the interpreter runs them; on a GPU nothing warns.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

VARIANTS = {
    "single": dict(variant="row"),
    "stream": dict(variant="row", block_size=16),
    "split": dict(variant="split", block_size=8, chunk_size=16),
}
M, C = 7, 37  # 7 rows: odd; 37 classes: prime, so no block or chunk divides it

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def run(x, target, params, weight=None, grad_scale=None, *, inplace=False, **kw):
    """Our losses and gradient (None without grad_scale), on DEVICE."""
    x = x.to(DEVICE)
    target = target.to(DEVICE)
    weight = weight.to(DEVICE) if weight is not None else None
    grad = None
    if grad_scale is not None:
        grad_scale = grad_scale.to(DEVICE)
        grad = x if inplace else torch.empty_like(x)
    loss = cross_entropy_fwd(x, target, params, weight, grad_scale, grad, **kw)
    return loss.cpu(), (grad.cpu() if grad is not None else None)


def reference(x, target, params, weight=None, grad_scale=None, dtype=torch.float64):
    """The plain-torch reference, float64 by default, or in ``dtype`` ("torch same dtype",
    computed on DEVICE so it is what a user of that device would compare against)."""
    dev = DEVICE if dtype != torch.float64 else torch.device("cpu")
    loss, grad = cross_entropy_rows_ref(
        x.to(dev), target.to(dev), params, weight.to(dev) if weight is not None else None,
        grad_scale.to(dev) if grad_scale is not None else None, dtype=dtype)
    return loss.cpu(), (grad.cpu() if grad is not None else None)


def assert_close(ours, ref, *, what, rtol, atol, same=None, k=2.0):
    """Same non-finite pattern; finite entries within ``k |same - ref| + rtol |ref| + atol``."""
    ours = ours.double()
    ref = ref.double()
    for name, fn in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        if not torch.equal(fn(ours), fn(ref)):
            raise AssertionError(
                f"{what}: {name} at {fn(ours).nonzero().tolist()}, reference has it at "
                f"{fn(ref).nonzero().tolist()}"
            )
    fin = torch.isfinite(ref)
    err = (ours - ref).abs().where(fin, 0.0)
    bound = rtol * ref.abs() + atol
    if same is not None:
        bound = bound + k * (same.double() - ref).abs().where(fin, 0.0)
    bad = err > bound
    if bad.any():
        i = int(((err - bound).where(fin, -1.0)).flatten().argmax())
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {int(fin.sum())} entries beyond the bound; worst at "
            f"flat index {i}: ours {ours.flatten()[i].item()!r}, reference "
            f"{ref.flatten()[i].item()!r}, error {err.flatten()[i].item():.3g} > bound "
            f"{bound.flatten()[i].item():.3g}"
        )


def index_target(rows, classes, gen, ignore_index=-100, ignored=(1,)):
    y = torch.randint(0, classes, (rows,), generator=gen)
    for r in ignored:
        if r < rows:
            y[r] = ignore_index
    return y


def prob_target(rows, classes, gen, dtype=torch.float32):
    t = torch.rand(rows, classes, generator=gen) ** 4  # peaked, with near-zero classes
    t[0, : classes // 2] = 0.0  # exact zeros: the 0 log 0 case with -inf logits later
    return (t / t.sum(1, keepdim=True)).to(dtype)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------
# every option, every code path (float32, fixed tolerances)
# --------------------------------------------------------------------------------------------

# (id, params, use weight, ignore_index, grad_scale kind) - why each is here:
OPTION_GRID = [
    # baseline: plain F.cross_entropy per row, random upstream gradient ('none' reduction)
    ("index", P(), False, -100, "rows"),
    # class weights scale the on-target term and w_n; a 0-d scale (the 'mean' reduction)
    ("index-weight", P(), True, -100, "scalar"),
    # smoothing with weights: the uniform part is (eps/C) w_c, all classes enter the dot
    ("index-smooth-weight", P(label_smoothing=0.1), True, -100, "rows"),
    # eps = 1: the on-target coefficient is exactly 0, only the uniform part is left
    ("index-smooth-1", P(label_smoothing=1.0), False, -100, "rows"),
    # z-loss weighted by w[y]; the lse^2 term and its 2 z w lse softmax gradient
    ("index-zloss-weight", P(z_loss=1e-2), True, -100, "rows"),
    # softcap: z = s tanh(x/s) in loss and target logit, chain rule in the gradient
    ("index-softcap", P(softcap=2.5), False, -100, "rows"),
    # everything at once, with ignore_index = 3, a real class (pytorch#63004): only rows
    # whose target is 3 are skipped, class 3 still sits in every softmax
    ("index-all", P(ignore_index=3, label_smoothing=0.1, z_loss=1e-3, softcap=4.0), True, 3,
     "strided"),
    # probability targets: a = t, the dot runs over every class
    ("prob", P(probability=True), False, -100, "rows"),
    # probability with weights and smoothing: a = w ((1-eps) t + eps/C)
    ("prob-smooth-weight", P(probability=True, label_smoothing=0.1), True, -100, "scalar"),
    # probability with z-loss (w_n = 1) and softcap
    ("prob-zloss-softcap", P(probability=True, z_loss=1e-2, softcap=3.0), False, -100, "rows"),
    # probability, eps = 1: the target is ignored, uniform over classes
    ("prob-smooth-1", P(probability=True, label_smoothing=1.0), True, -100, "rows"),
]


def _grad_scale(kind, rows, g):
    if kind == "scalar":
        return torch.tensor(0.37)
    scale = torch.randn(rows * 2 if kind == "strided" else rows, generator=g)
    return scale[::2] if kind == "strided" else scale  # strided: stride 2, not contiguous


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize(
    "params,use_weight,ignore_index,scale_kind",
    [pytest.param(*case[1:], id=case[0]) for case in OPTION_GRID],
)
def test_options_match_reference(variant, params, use_weight, ignore_index, scale_kind):
    g = gen(1)
    x = torch.randn(M, C, generator=g) * 3
    if params.probability:
        target = prob_target(M, C, g)
    else:
        target = index_target(M, C, g, ignore_index, ignored=(1, 4))
        target[5] = 3  # so the ignore_index=3 case has a third ignored row (and others a 3)
    weight = torch.rand(C, generator=g) * 2 if use_weight else None
    scale = _grad_scale(scale_kind, M, g)
    loss, grad = run(x, target, params, weight, scale, **VARIANTS[variant])
    ref_loss, ref_grad = reference(x, target, params, weight, scale)
    assert loss.dtype == torch.float32 and loss.shape == (M,)
    assert_close(loss, ref_loss, what="loss", rtol=1e-5, atol=2e-6)
    assert_close(grad, ref_grad, what="grad", rtol=1e-5, atol=1e-6)
    if not params.probability:  # ignored rows: exactly zero
        ignored = target == ignore_index
        assert torch.all(loss[ignored] == 0) and torch.all(grad[ignored] == 0)


def test_reference_is_pytorch():
    """The reference itself equals F.cross_entropy(reduction='none') and its autograd
    gradient, in float64, for index and probability targets with weights, smoothing and
    ignore_index (where PyTorch's numbers are finite)."""
    import torch.nn.functional as F

    g = gen(2)
    x = torch.randn(6, 9, generator=g, dtype=torch.float64) * 2
    w = torch.rand(9, generator=g, dtype=torch.float64)
    y = index_target(6, 9, g, ignored=(2,))
    t = prob_target(6, 9, g, torch.float64)
    for target, params in ((y, P(label_smoothing=0.2)), (t, P(probability=True,
                                                               label_smoothing=0.2))):
        scale = torch.randn(6, generator=g, dtype=torch.float64)
        loss, grad = cross_entropy_rows_ref(x, target, params, w, scale)
        xr = x.clone().requires_grad_()
        torch_loss = F.cross_entropy(xr, target, w, reduction="none", label_smoothing=0.2)
        (torch_grad,) = torch.autograd.grad((torch_loss * scale).sum(), xr)
        torch.testing.assert_close(loss, torch_loss.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, torch_grad, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------
# dtypes: the tolerance rule against torch in the same dtype
# --------------------------------------------------------------------------------------------

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def dtype_rtol(dtype):
    # one unit of rounding of a gradient stored in `dtype` (float32: the fp32 compute itself)
    return 1e-5 if dtype == torch.float32 else torch.finfo(dtype).eps


@pytest.mark.parametrize("variant", ["single", "split"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["index", "prob"])
def test_dtypes_tolerance_rule(kind, dtype, variant):
    g = gen(3)
    rows, classes = 16, 150
    x = (torch.randn(rows, classes, generator=g) * 4).to(dtype)
    if kind == "index":
        params = P(label_smoothing=0.1, z_loss=1e-3)
        target = index_target(rows, classes, g, ignored=(3,))
        weight = torch.rand(classes, generator=g) + 0.5
    else:
        params = P(probability=True, softcap=10.0)
        target = prob_target(rows, classes, g, dtype)  # targets in the logits' dtype
        weight = None
    scale = torch.randn(rows, generator=g)
    kw = dict(variant="row") if variant == "single" else dict(variant="split", chunk_size=64)
    loss, grad = run(x, target, params, weight, scale, **kw)
    ref_loss, ref_grad = reference(x, target, params, weight, scale)
    same_loss, same_grad = reference(x, target, params, weight, scale, dtype=dtype)
    assert grad.dtype == dtype
    assert_close(loss, ref_loss, what=f"{dtype} loss", rtol=1e-5, atol=2e-6,
                 same=same_loss if dtype != torch.float32 else None)
    assert_close(grad, ref_grad, what=f"{dtype} grad", rtol=dtype_rtol(dtype), atol=1e-7,
                 same=same_grad if dtype != torch.float32 else None)


@pytest.mark.parametrize("variant", ["single", "stream"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_confident_prediction(dtype, variant):
    """p -> 1: the target's gradient p_y - 1 is formed in float32 and rounded once.

    Row 0 has p_y = 0.999 (Liger-Kernel #1329: bf16 rounding of p_y first gave 100% error in
    dx_y); row 1 has p_y = 1 - 1e-6, below bf16/fp16 resolution of p_y itself.
    """
    classes = 40
    x = torch.zeros(2, classes)
    x[0, 5] = torch.log(torch.tensor(0.999 * (classes - 1) / 0.001))
    x[1, 7] = torch.log(torch.tensor((1 - 1e-6) * (classes - 1) / 1e-6))
    x = x.to(dtype)
    y = torch.tensor([5, 7])
    scale = torch.ones(2)
    loss, grad = run(x, y, P(), None, scale, **VARIANTS[variant])
    ref_loss, ref_grad = reference(x, y, P(), None, scale)
    same_loss, same_grad = reference(x, y, P(), None, scale, dtype=dtype)
    # the rule for float32 too: 1 - 1e-6 is at float32's resolution (torch: -8.3e-7 for
    # -1.0e-6, as ours); bfloat16 torch gives 0 for both targets, float16 0 for row 1
    assert_close(grad, ref_grad, what="grad", rtol=dtype_rtol(dtype), atol=1e-7,
                 same=same_grad)
    # the target's gradient -0.001 to its dtype's precision (2 units of rounding), plus what
    # float32 itself loses in 1/S - 1 near 1 (2 ulp of 1 = 2.4e-7, relative to 1e-3)
    rel0 = abs(grad[0, 5].double() - ref_grad[0, 5]) / abs(ref_grad[0, 5])
    assert rel0 <= 2 * dtype_rtol(dtype) + 2.4e-4, rel0
    # 1 - 1e-6 in float32 has ~6% error (float32's 1 + 1e-6 has 3 digits); the sign and
    # order of magnitude survive, where a rounded p_y would give exactly 0
    assert -2e-6 < float(grad[1, 7]) < -0.5e-6
    assert_close(loss, ref_loss, what="loss", rtol=1e-4, atol=2e-7,
                 same=same_loss if dtype != torch.float32 else None)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_large_common_offset(dtype, variant):
    """x + 1e4 on every logit: softmax and the loss are unchanged.  Computing A lse - a.z
    from lse ~ 1e4 would cost ~1e4 * 6e-8 = 6e-4 in float32; the shifted sums keep the
    error at the size of the logits' spread.  z-loss then sees lse^2 ~ 1e8 (relative)."""
    g = gen(4)
    x = torch.randn(M, C, generator=g) * 2
    y = index_target(M, C, g)
    shifted = (x + 1e4).to(dtype)
    plain = shifted.double() - 1e4  # the same logits the dtype kept, without the offset
    params = P(label_smoothing=0.1)
    scale = torch.randn(M, generator=g)
    loss, grad = run(shifted, y, params, None, scale, **VARIANTS[variant])
    ref_loss, ref_grad = reference(plain, y, params, None, scale)
    assert_close(loss, ref_loss, what="loss", rtol=1e-6, atol=2e-6)
    assert_close(grad, ref_grad, what="grad", rtol=dtype_rtol(dtype), atol=1e-6)
    zparams = P(label_smoothing=0.1, z_loss=1e-4)
    zloss, _ = run(shifted, y, zparams, None, None, **VARIANTS[variant])
    zref, _ = reference(shifted, y, zparams)
    assert_close(zloss, zref, what="z-loss", rtol=2e-6, atol=2e-6)


# --------------------------------------------------------------------------------------------
# non-finite logits, ignored rows, in place, no gradient, tiny shapes
# --------------------------------------------------------------------------------------------


def nonfinite_batch():
    inf, nan = float("inf"), float("nan")
    x = torch.randn(9, 20, generator=gen(5))
    y = torch.tensor([0, 1, 2, 3, 4, -100, -100, 5, 18])
    x[0, 7] = -inf  # -inf on a non-target class: finite loss, 0 gradient there
    x[0, 15] = -inf
    x[1, 1] = -inf  # -inf on the target: loss +inf, gradient finite (softmax - onehot)
    x[2, :] = -inf  # all -inf: NaN (PyTorch too)
    x[3, 9] = inf  # +inf in the row: NaN
    x[4, 2] = nan  # NaN in the row: NaN
    x[5, 3] = nan  # ignored rows with NaN / inf: loss 0, gradient exactly 0
    x[6, :] = inf
    x[7, 8:] = -inf  # a row whose second half is -inf (a whole streamed block of -inf)
    # a first block / chunk of -inf, then logits near -200: the running sum's rescaling factor
    # exp(0 - (-200)) overflows, so it must be skipped while the max is still -inf
    x[8, :16] = -inf
    x[8, 16:] -= 200.0
    return x, y


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("smoothing", [0.0, 0.1], ids=["eps0", "eps0.1"])
def test_nonfinite_index(variant, smoothing):
    """With smoothing, -inf on any class gives loss +inf (every class has a_c > 0), as in
    PyTorch; without, only on the target.  The gradient stays finite in both."""
    x, y = nonfinite_batch()
    params = P(label_smoothing=smoothing)
    scale = torch.randn(9, generator=gen(6))
    loss, grad = run(x, y, params, None, scale, **VARIANTS[variant])
    ref_loss, ref_grad = reference(x, y, params, None, scale)
    assert_close(loss, ref_loss, what="loss", rtol=1e-5, atol=2e-6)
    assert_close(grad, ref_grad, what="grad", rtol=1e-5, atol=1e-6)
    assert torch.isfinite(loss[0]) == (smoothing == 0.0)
    assert loss[1] == float("inf") and torch.isfinite(grad[1]).all()
    assert torch.isnan(loss[2:5]).all()
    assert torch.all(loss[5:7] == 0) and torch.all(grad[5:7] == 0)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_nonfinite_probability(variant):
    """0 log 0 = 0: a zero-probability class at -inf adds nothing (PyTorch: NaN); positive
    probability at -inf gives +inf."""
    x = torch.randn(3, 20, generator=gen(7))
    t = prob_target(3, 20, gen(8))  # row 0 has zeros on classes 0..9
    x[0, 2] = float("-inf")
    x[0, 4] = float("-inf")
    x[1, 3] = float("-inf")  # row 1 gives class 3 positive probability
    scale = torch.ones(3)
    loss, grad = run(x, t, P(probability=True), None, scale, **VARIANTS[variant])
    ref_loss, ref_grad = reference(x, t, P(probability=True), None, scale)
    assert_close(loss, ref_loss, what="loss", rtol=1e-5, atol=2e-6)
    assert_close(grad, ref_grad, what="grad", rtol=1e-5, atol=1e-6)
    assert torch.isfinite(loss[0]) and loss[1] == float("inf")


def test_softcap_makes_inf_finite():
    """softcap(+-inf) = +-s: a row with infinite logits is finite under softcap, and the
    slope 1 - tanh^2 is exactly 0 there."""
    x = torch.randn(2, 12, generator=gen(9))
    x[0, 3] = float("inf")
    x[1, 4] = float("-inf")
    y = torch.tensor([3, 4])
    params = P(softcap=5.0)
    scale = torch.ones(2)
    loss, grad = run(x, y, params, None, scale)
    ref_loss, ref_grad = reference(x, y, params, None, scale)
    assert torch.isfinite(loss).all() and grad[0, 3] == 0 and grad[1, 4] == 0
    assert_close(loss, ref_loss, what="loss", rtol=1e-5, atol=2e-6)
    assert_close(grad, ref_grad, what="grad", rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_zero_weight_target_at_minus_inf(variant):
    """A target class of weight 0 whose logit is -inf: its term is 0 log 0 = 0, so the loss
    is 0 and the gradient 0 (PyTorch: 0 * -inf = NaN)."""
    x = torch.randn(2, 20, generator=gen(14))
    x[0, 6] = float("-inf")
    y = torch.tensor([6, 2])
    w = torch.rand(20, generator=gen(15)) + 0.5
    w[6] = 0.0
    scale = torch.ones(2)
    loss, grad = run(x, y, P(), w, scale, **VARIANTS[variant])
    ref_loss, ref_grad = reference(x, y, P(), w, scale)
    assert loss[0] == 0 and torch.all(grad[0] == 0)
    assert_close(loss, ref_loss, what="loss", rtol=1e-5, atol=2e-6)
    assert_close(grad, ref_grad, what="grad", rtol=1e-5, atol=1e-6)


@triton.jit
def tanh_kernel(u_ptr, th_ptr, slope_ptr, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    u = tl.load(u_ptr + i, mask=i < n, other=0.0)
    th, slope = _tanh_and_slope(u)
    tl.store(th_ptr + i, th, mask=i < n)
    tl.store(slope_ptr + i, slope, mask=i < n)


def test_tanh_and_slope_relative_accuracy():
    """The kernels' own tanh and 1 - tanh^2 (Triton has no portable tanh), to a few float32
    ulp *relative* over |u| from 1e-8 to 100: near 0 (where (1 - e^-2u) / (1 + e^-2u)
    would cancel) and for large |u| (where 1 - tanh^2 from a rounded tanh is 0)."""
    mags = torch.logspace(-8, 2, 200, dtype=torch.float64)
    u64 = torch.cat([mags, -mags, torch.tensor([0.0, 0.2499, 0.25, 0.2501, float("inf"),
                                                float("-inf")], dtype=torch.float64)])
    u = u64.float().to(DEVICE)
    th = torch.empty_like(u)
    slope = torch.empty_like(u)
    tanh_kernel[(1,)](u, th, slope, u.numel(), BLOCK=512)
    u64 = u.double().cpu()  # the float32 inputs, exactly
    ref_th = torch.tanh(u64)
    ref_slope = torch.cosh(u64.clamp(-300, 300)) ** -2
    rel_th = ((th.cpu().double() - ref_th).abs() / ref_th.abs().clamp_min(1e-300))
    rel_slope = (slope.cpu().double() - ref_slope).abs() / ref_slope.clamp_min(1e-300)
    finite = torch.isfinite(u64) & (u64 != 0)
    print("worst relative error: tanh", rel_th[finite].max().item(), "slope",
          rel_slope[ref_slope > 1e-37].max().item())
    assert rel_th[finite].max() < 1e-6, rel_th[finite].max()
    # slope: relative wherever it is a normal float32 (below that, absolute 1e-38).  On a GPU
    # Triton's float32 exp is ex2.approx(u * log2 e): the rounded product costs |2u| * 2^-24
    # relative, hence the |u| term (the interpreter's exp is exact to 1 ulp).
    normal = ref_slope > 1e-37
    bound = 8e-7 + 2.4e-7 * u64.abs()
    assert (rel_slope[normal] <= bound[normal]).all(), rel_slope[normal].max()
    assert torch.equal(th.cpu()[-2:], torch.tensor([1.0, -1.0]))
    assert torch.equal(slope.cpu()[-2:], torch.zeros(2))
    assert th.cpu()[-6] == 0 and slope.cpu()[-6] == 1


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_all_rows_ignored(variant):
    """Every target ignored, logits NaN: losses 0 and gradient 0, nothing NaN leaks."""
    x = torch.full((4, C), float("nan"))
    y = torch.full((4,), -100)
    loss, grad = run(x, y, P(label_smoothing=0.1, z_loss=1e-3), torch.rand(C),
                     torch.ones(4), **VARIANTS[variant])
    assert torch.equal(loss, torch.zeros(4)) and torch.equal(grad, torch.zeros(4, C))


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_in_place_equals_out_of_place(dtype, variant):
    """grad_out = logits: every block is read before it is overwritten, bit for bit."""
    g = gen(10)
    x = (torch.randn(M, C, generator=g) * 3).to(dtype)
    y = index_target(M, C, g)
    params = P(label_smoothing=0.1, z_loss=1e-3, softcap=6.0)
    scale = torch.randn(M, generator=g)
    loss, grad = run(x, y, params, None, scale, **VARIANTS[variant])
    buf = x.clone()
    loss2, grad2 = run(buf, y, params, None, scale, inplace=True, **VARIANTS[variant])
    assert torch.equal(loss, loss2) and torch.equal(grad, grad2)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_without_gradient(variant):
    """grad_scale = grad_out = None: only the losses, the same numbers bit for bit."""
    g = gen(11)
    x = torch.randn(M, C, generator=g)
    t = prob_target(M, C, g)
    params = P(probability=True, z_loss=1e-3)
    loss, grad = run(x, t, params, None, None, **VARIANTS[variant])
    loss2, _ = run(x, t, params, None, torch.ones(M), **VARIANTS[variant])
    assert grad is None and torch.equal(loss, loss2)


@pytest.mark.parametrize("variant", ["single", "split"])
@pytest.mark.parametrize("kind", ["index", "prob"])
def test_strided_inputs(kind, variant):
    """Views, not copies: logits and gradient rows padded (row stride 50 > C = 37), an
    index target / weight taken every other element, probability rows padded too.  The
    wide tensors are moved to the device first and sliced there, so the views survive."""
    g = gen(16)
    x_wide = torch.randn(M, 50, generator=g) * 3
    if kind == "index":
        t_wide = index_target(2 * M, C, g, ignored=(2, 9))  # rows 1 and 4 of the view
        params = P(label_smoothing=0.1)
    else:
        t_wide = torch.cat([prob_target(M, C, g), torch.zeros(M, 13)], 1)
        params = P(probability=True, label_smoothing=0.1)
    w_wide = torch.rand(2 * C, generator=g) + 0.5
    scale = torch.randn(M, generator=g)

    def views(x_wide, t_wide, w_wide):
        return x_wide[:, :C], (t_wide[::2] if kind == "index" else t_wide[:, :C]), w_wide[::2]

    x, target, weight = views(x_wide, t_wide, w_wide)
    x_dev, t_dev, w_dev = views(x_wide.to(DEVICE), t_wide.to(DEVICE), w_wide.to(DEVICE))
    assert x_dev.stride(0) == 50 and w_dev.stride(0) == 2
    grad_wide = torch.zeros(M, 60, device=DEVICE)
    loss = cross_entropy_fwd(x_dev, t_dev, params, w_dev, scale.to(DEVICE),
                             grad_wide[:, 3:3 + C], **VARIANTS[variant])
    ref_loss, ref_grad = reference(x, target, params, weight, scale)
    assert_close(loss.cpu(), ref_loss, what="loss", rtol=1e-5, atol=2e-6)
    assert_close(grad_wide[:, 3:3 + C].cpu(), ref_grad, what="grad", rtol=1e-5, atol=1e-6)
    untouched = torch.cat([grad_wide[:, :3], grad_wide[:, 3 + C:]], 1)
    assert torch.all(untouched == 0)  # nothing written outside the view


@pytest.mark.parametrize("rows,classes", [(1, 1), (1, 2), (3, 1), (2, 3)])
def test_tiny_shapes(rows, classes):
    """C = 1: log softmax is 0, the loss is the z-loss alone; N = 1: one program."""
    g = gen(12)
    x = torch.randn(rows, classes, generator=g)
    y = torch.randint(0, classes, (rows,), generator=g)
    params = P(z_loss=0.1)
    scale = torch.ones(rows)
    loss, grad = run(x, y, params, None, scale)
    ref_loss, ref_grad = reference(x, y, params, None, scale)
    assert_close(loss, ref_loss, what="loss", rtol=1e-5, atol=2e-6)
    assert_close(grad, ref_grad, what="grad", rtol=1e-5, atol=1e-6)


def test_empty_batch():
    loss = cross_entropy_fwd(torch.empty(0, 5, device=DEVICE),
                             torch.empty(0, dtype=torch.int64, device=DEVICE), P(), None,
                             torch.ones((), device=DEVICE), torch.empty(0, 5, device=DEVICE))
    assert loss.shape == (0,) and loss.dtype == torch.float32


def test_auto_plan_on_a_larger_row():
    """The default plan on a row longer than one block (streaming, 2 blocks of 4096)."""
    g = gen(13)
    x = torch.randn(2, 5000, generator=g)
    y = torch.tensor([17, 4999])
    scale = torch.ones(2)
    loss, grad = run(x, y, P(label_smoothing=0.05), None, scale)
    ref_loss, ref_grad = reference(x, y, P(label_smoothing=0.05), None, scale)
    assert_close(loss, ref_loss, what="loss", rtol=1e-5, atol=2e-6)
    assert_close(grad, ref_grad, what="grad", rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------------------
# invariants (hypothesis): shift invariance, gradient rows sum to zero
# --------------------------------------------------------------------------------------------

@given(
    rows=st.integers(1, 4), classes=st.integers(2, 40), shift=st.floats(-50, 50),
    seed=st.integers(0, 2**16), eps=st.sampled_from([0.0, 0.3]),
)
def test_invariants(rows, classes, shift, seed, eps):
    g = gen(seed)
    x = torch.randn(rows, classes, generator=g) * 3
    y = torch.randint(0, classes, (rows,), generator=g)
    scale = torch.ones(rows)
    params = P(label_smoothing=eps)
    loss, grad = run(x, y, params, None, scale, block_size=16)
    loss_s, grad_s = run(x + shift, y, params, None, scale, block_size=16)
    torch.testing.assert_close(loss_s, loss, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(grad_s, grad, rtol=1e-5, atol=2e-6)
    # sum_c grad = A sum(softmax) - sum(a) = 0 (no z-loss, no softcap)
    torch.testing.assert_close(grad.sum(1), torch.zeros(rows), rtol=0, atol=1e-6)
    assert (loss >= 0).all()


# --------------------------------------------------------------------------------------------
# the launch plan, argument errors, availability
# --------------------------------------------------------------------------------------------


def test_plan_rule():
    h100 = 132
    # rows that fit one block: read once, whatever the row count
    assert plan_launch(8, 8192, sm_count=h100) == ce.LaunchPlan("row", 8192, True, 8192, 1, 16)
    # V = 131072 with 16384 rows: enough rows, not a "very long" row -> streaming row
    p = plan_launch(16384, 131072, sm_count=h100)
    assert (p.variant, p.single, p.block) == ("row", False, ce.STREAM_BLOCK)
    # V = 256000: split into 4 chunks of 65536 even with 8192 rows
    p = plan_launch(8192, 256000, sm_count=h100)
    assert (p.variant, p.n_split, p.chunk) == ("split", 4, 65536)
    # 16 rows of 32000 on 132 SMs: too few rows, split to ceil(32000 / 16384) = 2 pieces
    p = plan_launch(16, 32000, sm_count=h100)
    assert (p.variant, p.n_split) == ("split", 2)
    # forced split on a tiny row: whole blocks per chunk, enough chunks to cover the row
    p = plan_launch(3, 37, variant="split", block_size=8, chunk_size=16)
    assert (p.chunk, p.n_split, p.block) == (16, 3, 8)
    with pytest.raises(ValueError, match="variant must be"):
        plan_launch(3, 37, variant="fast")
    with pytest.raises(ValueError, match="power of two"):
        plan_launch(3, 37, block_size=12)


def test_argument_errors():
    x = torch.randn(3, 5, device=DEVICE)
    y = torch.zeros(3, dtype=torch.int64, device=DEVICE)
    with pytest.raises(ValueError, match="grad_scale and grad_out go together"):
        cross_entropy_fwd(x, y, P(), None, torch.ones((), device=DEVICE), None)
    with pytest.raises(TypeError, match="class-index target must be int64"):
        cross_entropy_fwd(x, y.int(), P(), None, None, None)
    with pytest.raises(ValueError, match=r"probability target must have the logits' shape"):
        cross_entropy_fwd(x, y, P(probability=True), None, None, None)
    with pytest.raises(TypeError, match="logits must be float32, float16 or bfloat16"):
        cross_entropy_fwd(x.double(), y, P(), None, None, None)
    with pytest.raises(ValueError, match=r"contiguous columns"):
        cross_entropy_fwd(torch.randn(5, 3, device=DEVICE).t(), y, P(), None, None, None)
    with pytest.raises(ValueError, match=r"weight must have shape \(5,\)"):
        cross_entropy_fwd(x, y, P(), torch.ones(4, device=DEVICE), None, None)
    with pytest.raises(ValueError, match=r"grad_scale must be 0-d or have shape \(3,\)"):
        cross_entropy_fwd(x, y, P(), None, torch.ones(2, device=DEVICE), torch.empty_like(x))
    with pytest.raises(TypeError, match="params must be a CrossEntropyParams"):
        cross_entropy_fwd(x, y, {}, None, None, None)


def test_availability():
    assert is_available(DEVICE)
    require_triton(DEVICE)  # no error
    assert not is_available("meta")
    with pytest.raises(RuntimeError, match="impl='triton' cannot run for tensors on meta"):
        require_triton("meta")
    if not ON_GPU:
        assert not is_available("cpu", allow_interpreter=False)
        with pytest.raises(RuntimeError, match="torch.cuda.is_available"):
            require_triton("cuda")


def test_missing_interpreter_message():
    """In a fresh process without TRITON_INTERPRET, CPU tensors get a message that names it."""
    code = textwrap.dedent("""
        import torch
        from crossent.torch._params import CrossEntropyParams
        from crossent.torch.triton import is_available, require_triton
        assert not is_available("cpu")
        try:
            require_triton("cpu")
        except RuntimeError as exc:
            print(exc)
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "TRITON_INTERPRET=1" in out.stdout and "impl='triton' cannot run" in out.stdout


# --------------------------------------------------------------------------------------------
# the compiled kernels (no GPU needed): Triton's own compiler down to sm_90 machine code
# --------------------------------------------------------------------------------------------

_PTXAS = os.path.join(os.path.dirname(importlib.util.find_spec("triton").origin),
                      "backends", "nvidia", "bin", "ptxas")


@pytest.mark.skipif(not os.path.exists(_PTXAS), reason="Triton's bundled ptxas is not available")
def test_kernels_compile_for_sm90():
    """The interpreter accepts code the compiler would reject (types of loop-carried values,
    constexpr branches), so compile a representative set of specializations for an H100 in
    a process without the interpreter.  Checks they build, without spills."""
    code = textwrap.dedent("""
        import os, subprocess, tempfile, warnings
        warnings.simplefilter("ignore")
        import triton
        from triton.compiler import ASTSource
        from triton.backends.compiler import GPUTarget
        from crossent.torch.triton import _kernels as K
        cuobjdump = os.path.join(os.path.dirname(triton.__file__),
                                 "backends", "nvidia", "bin", "cuobjdump")
        target = GPUTarget("cuda", 90, 32)
        base = dict(x_ptr="*bf16", x_stride="i32", t_ptr="*i64", t_stride="i32",
                    w_ptr="*fp32", gs_ptr="*fp32", gs_stride="i32", g_ptr="*bf16",
                    g_stride="i32", loss_ptr="*fp32", C="i32", ignore_index="i32",
                    keep="fp32", uniform="fp32", z_loss="fp32", softcap="fp32",
                    inv_softcap="fp32")
        def build(fn, sig, consts, warps):
            sig = dict(sig, **{k: "constexpr" for k in consts})
            cc = triton.compile(ASTSource(fn, sig, consts), target=target,
                                options=dict(num_warps=warps))
            with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
                f.write(cc.asm["cubin"])
            out = subprocess.run([cuobjdump, "--dump-resource-usage", f.name],
                                 capture_output=True, text=True).stdout
            os.unlink(f.name)
            usage = [l for l in out.splitlines() if "REG:" in l][0]
            print(fn.__name__, usage.strip())
            assert "STACK:0" in usage or "STACK:8 " in usage, usage
        opts = dict(IS_PROB=False, HAS_WEIGHT=True, SMOOTH=True, HAS_ZLOSS=True,
                    HAS_SOFTCAP=True, HAS_GRAD=True)
        build(K.ce_row_kernel, base, dict(BLOCK=8192, SINGLE=True, **opts), 16)
        prob = dict(base, t_ptr="*fp32", x_ptr="*fp32", g_ptr="*fp32")
        build(K.ce_row_kernel, prob, dict(BLOCK=4096, SINGLE=False,
                                          **dict(opts, IS_PROB=True)), 8)
        split = dict(base, part_ptr="*fp32", plane="i32", CHUNK="i32", n_split="i32")
        del split["gs_ptr"], split["gs_stride"], split["g_ptr"], split["g_stride"]
        del split["loss_ptr"], split["z_loss"]
        build(K.ce_split_stats_kernel, split, dict(BLOCK=4096, IS_PROB=False, HAS_WEIGHT=True,
                                                   SMOOTH=True, HAS_SOFTCAP=True), 8)
        fin = dict(base, part_ptr="*fp32", plane="i32", CHUNK="i32", n_split="i32")
        build(K.ce_split_finish_kernel, fin, dict(BLOCK=4096, SPLIT_POW2=4, **opts), 8)
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("REG:") == 4, out.stdout


def test_no_warnings_leak_from_host_code():
    """The host function itself warns about nothing (numpy warnings come only from the
    interpreter's emulation of the kernels)."""
    x = torch.randn(2, 5, device=DEVICE)
    y = torch.tensor([0, 1], device=DEVICE)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("error", DeprecationWarning)
        cross_entropy_fwd(x, y, P(), None, None, None)

"""Argument checking and the shared rules of :mod:`crossent._semantics`.

Every bad argument raises ``TypeError``, ``ValueError`` or ``IndexError`` whose message names
the argument, what was expected and what arrived.  Each case below lists regular expressions
for those three parts; all must appear in the message.  Where PyTorch raises another type for
the same mistake (``RuntimeError``), the exception is that type too, so drop-in code that
catches PyTorch's exceptions keeps working.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from crossent import _semantics as sem
from crossent import functional as fn

X = np.zeros((2, 3))
Y = np.array([0, 1])

# (id, call, exception type, [regex: argument, regex: expected, regex: received])
ERRORS = [
    # -- class-index targets ---------------------------------------------------------------
    ("index-too-large", lambda: fn.cross_entropy(X, [0, 3]), IndexError,
     [r"target\[1\]", r"class index in \[0, 2\] or ignore_index \(-100\)", r"= 3\b"]),
    ("index-negative", lambda: fn.cross_entropy(X, [-1, 0]), IndexError,
     [r"target\[0\]", r"\[0, 2\]", r"= -1\b"]),
    ("index-position-kdim",
     lambda: fn.cross_entropy(np.zeros((2, 3, 4)), [[0, 1, 2, 0], [0, 0, 7, 0]]), IndexError,
     [r"target\[1, 2\]", r"\[0, 2\]", r"= 7\b"]),
    ("index-unbatched", lambda: fn.cross_entropy(np.zeros(3), np.array(3)), IndexError,
     [r"^target = 3 ", r"\[0, 2\]", r"= 3\b"]),
    ("index-ignore-index-shown", lambda: fn.cross_entropy(X, [0, -100], ignore_index=-1),
     IndexError, [r"target\[1\]", r"ignore_index \(-1\)", r"= -100\b"]),
    # uint64 indices of 2**63 or more are out of range, not wrapped onto -100 (ignored)
    ("index-uint64-wraps-to-ignore-index",
     lambda: fn.cross_entropy(X, np.array([0, 2**64 - 100], np.uint64)), IndexError,
     [r"target\[1\]", r"\[0, 2\] or ignore_index \(-100\)", r"= 18446744073709551516\b"]),
    ("index-uint64-2-63-kdim",
     lambda: fn.cross_entropy_with_grad(np.zeros((2, 3, 2)),
                                        np.array([[0, 1], [2**63, 0]], np.uint64)),
     IndexError, [r"target\[1, 0\]", r"\[0, 2\]", r"= 9223372036854775808\b"]),
    ("nll-index-uint64", lambda: fn.nll_loss(X, np.array([2**64 - 1, 0], np.uint64)),
     IndexError, [r"target\[0\]", r"\[0, 2\]", r"= 18446744073709551615\b"]),
    ("ignore-index-beyond-int64", lambda: fn.cross_entropy(X, Y, ignore_index=2**63),
     ValueError, [r"^ignore_index", r"64-bit signed integer", r"got 9223372036854775808"]),
    ("nll-index-too-large", lambda: fn.nll_loss(X, [5, 0]), IndexError,
     [r"target\[0\]", r"\[0, 2\]", r"= 5\b"]),
    # -- float where indices are expected, and the reverse ---------------------------------
    ("float-index-target", lambda: fn.cross_entropy(X, [0.0, 1.0]), TypeError,
     [r"^target", r"integer class indices", r"float64 array of shape \(2,\)"]),
    ("bool-index-target", lambda: fn.cross_entropy(X, [True, False]), TypeError,
     [r"^target", r"integer class indices", r"bool"]),
    ("nll-float-target", lambda: fn.nll_loss(X, [0.5, 1.0]), TypeError,
     [r"^target", r"integer class indices", r"float"]),
    ("integer-probability-target", lambda: fn.cross_entropy(X, np.zeros((2, 3), int)),
     TypeError, [r"^target", r"class probabilities as floats", r"int64 array of shape \(2, 3\)"]),
    ("integer-logits", lambda: fn.cross_entropy(np.zeros((2, 3), int), Y), TypeError,
     [r"^input", r"floating-point array of logits", r"int64 array of shape \(2, 3\)"]),
    ("complex-logits", lambda: fn.cross_entropy(np.zeros((2, 3), complex), Y), TypeError,
     [r"^input", r"float16, float32 or float64", r"complex128"]),
    ("ragged-logits", lambda: fn.cross_entropy([[1.0, 2.0], [3.0]], Y), TypeError,
     [r"^input", r"floating-point array", r"list \[\[1\.0, 2\.0\], \[3\.0\]\]"]),
    ("integer-weight", lambda: fn.cross_entropy(X, Y, weight=[1, 2, 3]), TypeError,
     [r"^weight", r"floating-point", r"int64"]),
    ("bce-integer-target", lambda: fn.binary_cross_entropy([0.5, 0.1], [0, 1]), TypeError,
     [r"^target", r"floating-point", r"int64"]),
    ("bce-logits-integer-target",
     lambda: fn.binary_cross_entropy_with_logits([0.5, 0.1], [0, 1]), TypeError,
     [r"^target", r"floating-point", r"int64"]),
    ("logsumexp-integer", lambda: fn.logsumexp([1, 2, 3]), TypeError,
     [r"^x", r"floating-point", r"int64"]),
    # -- shapes ----------------------------------------------------------------------------
    ("batch-mismatch", lambda: fn.cross_entropy(X, [0, 1, 2]), ValueError,
     [r"target batch size 3", r"must have shape \(2,\)", r"got \(3,\)"]),
    ("target-rank", lambda: fn.cross_entropy(X, np.zeros((2, 4), int)), ValueError,
     [r"^target", r"\(2,\) \(class indices\) or \(2, 3\) \(class probabilities\)",
      r"got \(2, 4\)"]),
    ("kdim-mismatch-3d", lambda: fn.cross_entropy(np.zeros((2, 3, 4)), np.zeros((2, 5), int)),
     ValueError, [r"^target", r"\(2, 4\)", r"got \(2, 5\)"]),
    ("kdim-mismatch-4d",
     lambda: fn.cross_entropy(np.zeros((2, 3, 4, 5)), np.zeros((2, 4, 6), int)), ValueError,
     [r"^target", r"\(2, 4, 5\)", r"got \(2, 4, 6\)"]),
    ("unbatched-target-shape", lambda: fn.cross_entropy(np.zeros(3), np.zeros(1, int)),
     ValueError, [r"^target", r"shape \(\)", r"got \(1,\)"]),
    ("zero-d-input", lambda: fn.cross_entropy(np.array(1.0), np.array(0)), ValueError,
     [r"^input", r"\(C,\), \(N, C\) or \(N, C, d1, \.\.\., dK\)", r"0-d"]),
    ("nll-batch-mismatch", lambda: fn.nll_loss(X, [0, 1, 2]), ValueError,
     [r"target batch size 3", r"\(2,\)", r"got \(3,\)"]),
    ("bce-shape", lambda: fn.binary_cross_entropy([0.5, 0.1], [[0.0], [1.0]]), ValueError,
     [r"^target", r"input's shape \(2,\)", r"got shape \(2, 1\)"]),
    ("bce-logits-shape", lambda: fn.binary_cross_entropy_with_logits([0.5], [[0.0], [1.0]]),
     ValueError, [r"^target", r"input's shape \(1,\)", r"got shape \(2, 1\)"]),
    ("kl-shape", lambda: fn.kl_div(X, np.zeros((3, 2))), ValueError,
     [r"^target", r"broadcast against the input's shape \(2, 3\)", r"got shape \(3, 2\)"]),
    ("grad-output-shape",
     lambda: fn.cross_entropy_with_grad(X, Y, reduction="none", grad_output=[1.0, 2.0, 3.0]),
     ValueError, [r"^grad_output", r"loss's shape \(2,\)", r"got shape \(3,\)"]),
    ("grad-output-type", lambda: fn.cross_entropy_with_grad(X, Y, grad_output="a"), TypeError,
     [r"^grad_output", r"real array or number", r"str 'a'"]),
    # -- weights ---------------------------------------------------------------------------
    ("weight-dtype", lambda: fn.cross_entropy(X, Y, weight=np.ones(3, np.float32)),
     TypeError, [r"^weight", r"input's dtype float64 for class-index targets",
                 r"got float32"]),
    ("nll-weight-dtype",
     lambda: fn.nll_loss(X.astype(np.float32), Y, weight=np.ones(3, np.float16)),
     TypeError, [r"^weight", r"input's dtype float32", r"got float16"]),
    ("weight-length", lambda: fn.cross_entropy(X, Y, weight=[1.0, 2.0, 3.0, 4.0]), ValueError,
     [r"^weight", r"shape \(3,\), one weight per class", r"got shape \(4,\)"]),
    ("weight-2d", lambda: fn.cross_entropy(X, Y, weight=np.ones((1, 3))), ValueError,
     [r"^weight", r"\(3,\)", r"got shape \(1, 3\)"]),
    ("nll-weight-length", lambda: fn.nll_loss(X, Y, weight=[1.0, 2.0]), ValueError,
     [r"^weight", r"\(3,\)", r"got shape \(2,\)"]),
    ("prob-weight-length", lambda: fn.cross_entropy(X, np.ones((2, 3)) / 3, weight=[1.0]),
     ValueError, [r"^weight", r"\(3,\)", r"got shape \(1,\)"]),
    ("bce-weight", lambda: fn.binary_cross_entropy([0.5, 0.1], [0.0, 1.0], [1.0, 2.0, 3.0]),
     ValueError, [r"^weight", r"broadcast to the input's shape \(2,\)", r"got shape \(3,\)"]),
    ("bce-pos-weight",
     lambda: fn.binary_cross_entropy_with_logits([0.5, 0.1], [0.0, 1.0],
                                                 pos_weight=[1.0, 2.0, 3.0]),
     ValueError, [r"^pos_weight", r"broadcast to the input's shape \(2,\)",
                  r"got shape \(3,\)"]),
    # -- reduction -------------------------------------------------------------------------
    ("reduction-unknown", lambda: fn.cross_entropy(X, Y, reduction="avg"), ValueError,
     [r"^reduction", r"'none', 'mean', 'sum'", r"got 'avg'"]),
    ("reduction-none-object", lambda: fn.cross_entropy(X, Y, reduction=None), ValueError,
     [r"^reduction", r"'none', 'mean', 'sum'", r"got None"]),
    ("reduction-batchmean-for-ce", lambda: fn.cross_entropy(X, Y, reduction="batchmean"),
     ValueError, [r"^reduction", r"'none', 'mean', 'sum'", r"got 'batchmean'"]),
    ("nll-reduction", lambda: fn.nll_loss(X, Y, reduction="mean "), ValueError,
     [r"^reduction", r"'mean'", r"got 'mean '"]),
    ("bce-reduction", lambda: fn.binary_cross_entropy([0.5], [0.0], reduction="Sum"),
     ValueError, [r"^reduction", r"'sum'", r"got 'Sum'"]),
    ("bce-logits-reduction",
     lambda: fn.binary_cross_entropy_with_logits([0.5], [0.0], reduction="max"), ValueError,
     [r"^reduction", r"'sum'", r"got 'max'"]),
    ("kl-reduction", lambda: fn.kl_div(X, X, reduction="avg"), ValueError,
     [r"^reduction", r"'none', 'batchmean', 'mean', 'sum'", r"got 'avg'"]),
    # -- label smoothing (negative too: PyTorch silently ignores it, pytorch#134767) ---------
    ("smoothing-negative", lambda: fn.cross_entropy(X, Y, label_smoothing=-0.1), ValueError,
     [r"^label_smoothing", r"\[0, 1\]", r"got -0\.1"]),
    ("smoothing-above-one", lambda: fn.cross_entropy(X, Y, label_smoothing=1.5), ValueError,
     [r"^label_smoothing", r"\[0, 1\]", r"got 1\.5"]),
    ("smoothing-nan", lambda: fn.cross_entropy(X, Y, label_smoothing=float("nan")), ValueError,
     [r"^label_smoothing", r"\[0, 1\]", r"got nan"]),
    ("smoothing-prob-target",
     lambda: fn.cross_entropy(X, np.ones((2, 3)) / 3, label_smoothing=2.0), ValueError,
     [r"^label_smoothing", r"\[0, 1\]", r"got 2\.0"]),
    ("smoothing-string", lambda: fn.cross_entropy(X, Y, label_smoothing="0.1"), TypeError,
     [r"^label_smoothing", r"float in \[0, 1\]", r"str '0\.1'"]),
    # -- probability inputs out of range ---------------------------------------------------
    ("bce-input-above-one", lambda: fn.binary_cross_entropy([0.5, 1.5], [0.0, 1.0]),
     ValueError, [r"^input", r"probabilities in \[0, 1\]", r"input\[1\] = 1\.5"]),
    ("bce-input-negative", lambda: fn.binary_cross_entropy([[0.5, -0.1]], [[0.0, 1.0]]),
     ValueError, [r"^input", r"\[0, 1\]", r"input\[0, 1\] = -0\.1"]),
    ("bce-input-nan", lambda: fn.binary_cross_entropy([np.nan, 0.5], [0.0, 1.0]), ValueError,
     [r"^input", r"\[0, 1\]", r"input\[0\] = nan"]),
    ("bce-target-out-of-range", lambda: fn.binary_cross_entropy([0.5, 0.1], [0.0, 2.0]),
     ValueError, [r"^target", r"\[0, 1\]", r"target\[1\] = 2\.0"]),
    # -- the class dimension ---------------------------------------------------------------
    ("empty-class-dim", lambda: fn.cross_entropy(np.zeros((2, 0)), [0, 0]), ValueError,
     [r"^input", r"at least one class", r"axis 1 of shape \(2, 0\)"]),
    ("empty-class-dim-unbatched", lambda: fn.cross_entropy(np.zeros(0), np.array(0)),
     ValueError, [r"^input", r"at least one class", r"axis 0 of shape \(0,\)"]),
    ("empty-class-dim-nll", lambda: fn.nll_loss(np.zeros((2, 0)), [0, 0]), ValueError,
     [r"^input", r"at least one class", r"\(2, 0\)"]),
    # -- other arguments -------------------------------------------------------------------
    ("ignore-index-with-probabilities",
     lambda: fn.cross_entropy(X, np.ones((2, 3)) / 3, ignore_index=1), ValueError,
     [r"^ignore_index", r"negative ignore_index", r"got 1"]),
    ("ignore-index-float", lambda: fn.cross_entropy(X, Y, ignore_index=1.0), TypeError,
     [r"^ignore_index", r"an int", r"float 1\.0"]),
    ("z-loss-negative", lambda: fn.cross_entropy(X, Y, z_loss=-1e-4), ValueError,
     [r"^z_loss", r"finite float >= 0", r"got -0\.0001"]),
    ("z-loss-infinite", lambda: fn.cross_entropy(X, Y, z_loss=float("inf")), ValueError,
     [r"^z_loss", r"finite float >= 0", r"got inf"]),
    ("z-loss-type", lambda: fn.cross_entropy(X, Y, z_loss=None), TypeError,
     [r"^z_loss", r"float >= 0", r"NoneType None"]),
    ("softcap-zero", lambda: fn.cross_entropy(X, Y, softcap=0.0), ValueError,
     [r"^softcap", r"None or a finite float > 0", r"got 0\.0"]),
    ("softcap-type", lambda: fn.cross_entropy(X, Y, softcap="30"), TypeError,
     [r"^softcap", r"None or a float > 0", r"str '30'"]),
    ("kl-log-target", lambda: fn.kl_div(X, X, log_target="yes"), TypeError,
     [r"^log_target", r"a bool", r"str 'yes'"]),
    ("softmax-axis-range", lambda: fn.softmax(X, axis=2), ValueError,
     [r"^axis 2", r"out of range", r"shape \(2, 3\)"]),
    ("softmax-axis-type", lambda: fn.log_softmax(X, axis=1.0), TypeError,
     [r"^axis", r"an int", r"float 1\.0"]),
]


@pytest.mark.parametrize(("call", "exc", "patterns"), [c[1:] for c in ERRORS],
                         ids=[c[0] for c in ERRORS])
def test_error_names_argument_expected_and_received(call, exc, patterns):
    with pytest.raises(exc) as info:
        call()
    message = str(info.value)
    assert "\n" not in message  # one line: it is printed as is by the command line
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not in {message!r}"


@pytest.mark.parametrize(("call", "also"), [
    (lambda: fn.cross_entropy(X, Y, label_smoothing=1.5), RuntimeError),
    (lambda: fn.cross_entropy(X, [0.0, 1.0]), RuntimeError),
    (lambda: fn.cross_entropy(X, Y, weight=[1.0, 2.0]), RuntimeError),
    (lambda: fn.cross_entropy(np.zeros((2, 0)), [0, 0]), IndexError),
    (lambda: fn.cross_entropy(X, Y, weight=np.ones(3, np.float32)), RuntimeError),
    (lambda: fn.kl_div(X, np.zeros((3, 2))), RuntimeError),
    (lambda: fn.binary_cross_entropy([0.5, 0.1], [0.0, 1.0], [1.0, 2.0, 3.0]), RuntimeError),
], ids=["smoothing", "float-target", "weight", "no-classes", "weight-dtype", "kl-broadcast",
        "bce-weight-broadcast"])
def test_errors_are_also_pytorchs_exception_type(call, also):
    """PyTorch raises RuntimeError (IndexError for C = 0) for these same mistakes."""
    with pytest.raises(also):
        call()


def test_errors_come_before_any_work():
    """A bad target index is reported even when other rows are fine, and nothing is
    computed for a bad call (the error names the first bad position in C order)."""
    y = np.zeros((4, 5), dtype=np.int64)
    y[3, 1] = 9
    y[2, 4] = -7
    with pytest.raises(IndexError, match=r"target\[2, 4\] = -7"):
        fn.cross_entropy(np.zeros((4, 3, 5)), y)


def test_negative_targets_other_than_ignore_index_are_refused():
    """-100 is ignored by default, -1 is not (PyTorch: 'Target -1 is out of bounds')."""
    assert fn.cross_entropy(X, [-100, 0]) == pytest.approx(np.log(3.0), rel=1e-15)
    with pytest.raises(IndexError):
        fn.cross_entropy(X, [-1, 0])


# --------------------------------------------------------------------------------------------
# The shared rules, on NumPy arrays and on torch tensors alike
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "axis", "classes", "batch"), [
    ((5,), 0, 5, ()),
    ((4, 5), 1, 5, (4,)),
    ((4, 5, 6, 7), 1, 5, (4, 6, 7)),
    ((0, 5), 1, 5, (0,)),
])
def test_class_layout(shape, axis, classes, batch):
    layout = sem.class_layout(shape)
    assert (layout.class_axis, layout.num_classes, layout.batch_shape) == (axis, classes, batch)
    assert layout.rows == int(np.prod(batch))
    assert layout.spatial == (len(shape) > 2)


def test_probability_target_rule():
    assert sem.is_probability_target((2, 3), (2, 3))
    assert not sem.is_probability_target((2, 3), (2,))
    assert sem.is_probability_target((3,), (3,))  # unbatched probabilities


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_index_rules_work_on_numpy_and_torch(lib):
    """The rules the torch executor shares: masked weights, mean denominator, coefficients."""
    if lib == "torch":
        torch = pytest.importorskip("torch")

        def arr(a):
            return torch.tensor(a, dtype=torch.float64 if isinstance(a[0], float) else None)
    else:
        arr = np.asarray
    y = arr([2, -100, 0, 1])
    w = arr([1.0, 2.0, 0.5])
    valid, w_y = sem.index_row_weights(y, -100, w)
    np.testing.assert_array_equal(np.asarray(valid), [True, False, True, True])
    np.testing.assert_array_equal(np.asarray(w_y), [0.5, 0.0, 1.0, 2.0])
    assert float(sem.mean_denominator_index(w_y)) == 3.5
    valid_f = valid * arr([1.0])  # valid in the compute dtype, float64
    a_sum = sem.index_coefficient_sum(w_y, valid_f, 0.3, 3, 3.5)
    # (1 - eps) w[y] + (eps / C) sum(w), 0 for the ignored element
    np.testing.assert_allclose(np.asarray(a_sum),
                               [0.7 * 0.5 + 0.1 * 3.5, 0.0, 0.7 + 0.35, 1.4 + 0.35], rtol=1e-15)
    per = arr([1.0, 0.0, 2.0, 3.0])
    assert float(sem.reduce_loss(per, "sum", None)) == 6.0
    assert float(sem.reduce_loss(per, "mean", sem.mean_denominator_index(w_y))) == 6.0 / 3.5
    assert sem.reduce_loss(per, "none", None) is per


def test_smoothing_rules():
    assert sem.smoothing_terms(0.1, 4) == (0.9, 0.025)
    t = np.array([0.0, 1.0])
    np.testing.assert_allclose(sem.smoothed_probabilities(t, 0.2, 2), [0.1, 0.9], rtol=1e-15)
    assert sem.smoothed_probabilities(t, 0.0, 2) is t
    assert sem.mean_denominator_probability(12) == 12


@pytest.mark.parametrize(("shape", "reduction", "expected"), [
    ((4, 3), "batchmean", 4),
    ((3,), "batchmean", 3),  # a 1-D input divides by C, as in PyTorch
    ((2, 3, 4), "mean", 24),
    ((2, 3), "sum", None),
    ((2, 3), "none", None),
])
def test_kl_div_denominator(shape, reduction, expected):
    assert sem.kl_div_denominator(shape, reduction) == expected


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0, 1, np.float32(0.25)])
def test_label_smoothing_accepts_numbers_in_range(value):
    assert sem.check_label_smoothing(value) == float(value)


def test_boolean_arguments_are_not_numbers():
    """True is an int in Python, but never a meaningful smoothing, index or coefficient."""
    for check in (sem.check_label_smoothing, sem.check_ignore_index, sem.check_z_loss,
                  sem.check_softcap):
        with pytest.raises(TypeError, match="got bool True"):
            check(True)


# --------------------------------------------------------------------------------------------
# Class indices: range-checked in their own dtype before the one cast to int64
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.uint16, np.int32,
                                   np.uint32, np.int64, np.uint64])
def test_every_integer_dtype_gives_the_int64_result(dtype):
    y = np.array([2, 0, 1, 2])
    x = np.arange(12.0).reshape(4, 3) % 5
    expected = fn.cross_entropy_with_grad(x, y, reduction="none")
    got = fn.cross_entropy_with_grad(x, y.astype(dtype), reduction="none")
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    assert fn.nll_loss(x, y.astype(dtype)) == fn.nll_loss(x, y)


def test_ignore_index_outside_the_dtype_is_no_index():
    """-100 cannot be a uint8 value: nothing is ignored, and nothing wraps onto it."""
    y = np.array([255, 0], np.uint8)
    with pytest.raises(IndexError, match=r"target\[0\] = 255 "):
        fn.cross_entropy(X, y)
    # int8 targets with 1000 classes: every int8 value below 1000, negatives refused
    x = np.zeros((2, 1000))
    assert fn.cross_entropy(x, np.array([127, 5], np.int8)) == pytest.approx(np.log(1000))
    with pytest.raises(IndexError, match=r"target\[1\] = -5 "):
        fn.cross_entropy(x, np.array([127, -5], np.int8))


def test_uint64_ignore_index_within_range_is_honoured():
    x = np.array([[0.0, 1.0, 2.0], [3.0, 0.0, -1.0]])
    y = np.array([7, 1], np.uint64)
    loss = fn.cross_entropy(x, y, ignore_index=7)
    assert loss == fn.cross_entropy(x[1:], [1])
    assert loss == pytest.approx(3.0 + np.log1p(np.exp(-3.0) + np.exp(-4.0)), rel=1e-14)


def test_the_kernel_takes_only_checked_int64_indices():
    """build_row_targets refuses to cast: the cast happens once, after the range check."""
    from crossent import _kernel

    with pytest.raises(TypeError, match="int64"):
        _kernel.build_row_targets(np.array([0, 1], np.uint64), probability=False, weight=None,
                                  ignore_index=-100, label_smoothing=0.0, z_loss=0.0,
                                  num_classes=3, compute_dtype=np.float64)


def test_class_weight_dtype_rule():
    """One rule for NumPy and torch dtypes alike: index targets need the input's dtype,
    probability targets promote."""
    sem.check_class_weight_dtype(np.dtype(np.float32), np.dtype(np.float32), False)
    sem.check_class_weight_dtype(np.dtype(np.float64), np.dtype(np.float16), True)
    with pytest.raises(sem.ArgumentTypeError, match="input's dtype float16.*got float32"):
        sem.check_class_weight_dtype(np.dtype(np.float32), np.dtype(np.float16), False)
    torch = pytest.importorskip("torch")
    with pytest.raises(RuntimeError, match="input's dtype float64.*got float32"):
        sem.check_class_weight_dtype(torch.float32, torch.float64, False)


def test_class_layout_an_empty_batch_may_have_no_classes():
    assert sem.class_layout((0, 0)).num_classes == 0
    assert sem.class_layout((0, 0, 3)).rows == 0
    with pytest.raises(IndexError):
        sem.class_layout((2, 0))
    with pytest.raises(IndexError):
        sem.class_layout((0,))  # one element, no class

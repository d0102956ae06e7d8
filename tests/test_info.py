"""crossent.info against SciPy, against the losses, and on its own edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from crossent import functional as fn
from crossent import info

scipy_stats = pytest.importorskip("scipy.stats")
scipy_special = pytest.importorskip("scipy.special")


def test_conformance_39():
    """semantics.md case 39: scipy's entropy, entropy in bits, and KL."""
    assert info.entropy([0.6, 0.2, 0.2]) == pytest.approx(0.9502705392332347, rel=1e-15)
    assert info.entropy([0.6, 0.2, 0.2], base=2) == pytest.approx(1.370950594454669, rel=1e-15)
    assert info.kl_divergence([0.6, 0.2, 0.2], [0.2, 0.3, 0.5]) == pytest.approx(
        0.3948162052044018, rel=1e-15)


def test_cross_entropy_of_one_hot_is_ln_5():
    """Case 4: H(onehot(2), [.6, .2, .2]) = -ln 0.2 = ln 5 (and log2 5 bits)."""
    assert info.cross_entropy([0.0, 0.0, 1.0], [0.6, 0.2, 0.2]) == pytest.approx(
        1.609437912434100, rel=1e-15)
    assert info.cross_entropy([0.0, 0.0, 1.0], [0.6, 0.2, 0.2], base=2) == pytest.approx(
        np.log2(5.0), rel=1e-15)


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("base", [None, 2, 10])
def test_against_scipy(rng, axis, base):
    shape = (4, 6, 5)
    p = rng.dirichlet(np.ones(shape[axis]), size=np.delete(shape, axis % 3))
    q = rng.dirichlet(np.ones(shape[axis]), size=np.delete(shape, axis % 3))
    p, q = np.moveaxis(p, -1, axis), np.moveaxis(q, -1, axis)
    p[(0,) * 3] = 0.0  # a zero entry (no longer normalised: fix that below)
    p = p / p.sum(axis=axis, keepdims=True)
    expected_h = scipy_stats.entropy(p, base=base, axis=axis)
    expected_kl = scipy_stats.entropy(p, q, base=base, axis=axis)
    np.testing.assert_allclose(info.entropy(p, axis=axis, base=base), expected_h, rtol=1e-13)
    np.testing.assert_allclose(info.kl_divergence(p, q, axis=axis, base=base), expected_kl,
                               rtol=1e-13)
    rel = scipy_special.rel_entr(p, q).sum(axis=axis) / (np.log(base) if base else 1.0)
    np.testing.assert_allclose(info.kl_divergence(p, q, axis=axis, base=base), rel, rtol=1e-13)
    # H(p, q) = H(p) + KL(p || q)
    np.testing.assert_allclose(info.cross_entropy(p, q, axis=axis, base=base),
                               expected_h + expected_kl, rtol=1e-13)


def test_zero_log_zero_is_zero():
    """An impossible outcome adds nothing: 0 log 0 = 0, also where q is 0."""
    assert info.entropy([1.0, 0.0]) == 0.0
    assert info.kl_divergence([1.0, 0.0], [1.0, 0.0]) == 0.0
    assert info.cross_entropy([0.5, 0.5, 0.0], [0.5, 0.5, 0.0]) == pytest.approx(np.log(2.0),
                                                                                rel=1e-15)
    assert scipy_special.rel_entr(0.0, 0.0) == 0.0  # the same convention as SciPy


def test_impossible_predictions_cost_infinity():
    """q = 0 where p > 0: KL and cross-entropy are inf (SciPy: inf too)."""
    assert info.kl_divergence([0.5, 0.5], [1.0, 0.0]) == np.inf
    assert info.cross_entropy([0.5, 0.5], [1.0, 0.0]) == np.inf
    assert scipy_stats.entropy([0.5, 0.5], [1.0, 0.0]) == np.inf


def test_surprisal():
    np.testing.assert_allclose(info.surprisal([1.0, 0.5, 0.25], base=2), [0.0, 1.0, 2.0],
                               rtol=0, atol=1e-15)
    assert info.surprisal(0.0) == np.inf
    assert info.surprisal(np.exp(-3.0)) == pytest.approx(3.0, rel=1e-15)


def test_entropy_of_uniform_is_log_c():
    for c in (1, 2, 7, 1000):
        assert info.entropy(np.full(c, 1.0 / c), base=2) == pytest.approx(np.log2(c), abs=1e-12)


def test_float32_distributions_within_rounding():
    """float32 rows that sum to 1 only to float32 precision are accepted."""
    p = np.array([0.1, 0.2, 0.7], np.float32)
    assert abs(float(p.sum(dtype=np.float64)) - 1.0) > 0  # not exactly 1 in float32
    assert info.entropy(p) == pytest.approx(scipy_stats.entropy(p.astype(np.float64)),
                                            rel=1e-6)


def test_agrees_with_the_losses(rng):
    """info.cross_entropy(t, softmax(z)) is crossent.cross_entropy(z, t) per row, and
    info.kl_divergence(t, q) is kl_div(log q, t) summed per row."""
    z = rng.normal(0, 2, size=(6, 5))
    t = rng.dirichlet(np.ones(5), size=6)
    q = fn.softmax(z, axis=1)
    np.testing.assert_allclose(info.cross_entropy(t, q),
                               fn.cross_entropy(z, t, reduction="none"), rtol=1e-12)
    y = rng.integers(0, 5, 6)
    np.testing.assert_allclose(info.cross_entropy(np.eye(5)[y], q),
                               fn.cross_entropy(z, y, reduction="none"), rtol=1e-12)
    np.testing.assert_allclose(info.kl_divergence(t, q),
                               fn.kl_div(np.log(q), t, reduction="none").sum(axis=1),
                               rtol=1e-12)


@given(hnp.arrays(np.float64, st.integers(1, 12), elements=st.floats(0.0, 1.0)).filter(
    lambda a: a.sum() > 1e-3))
def test_property_bounds(raw):
    """0 <= H(p) <= log C, KL(p || p) = 0 and KL(p || uniform) = log C - H(p)."""
    p = raw / raw.sum()
    h = info.entropy(p)
    assert -1e-12 <= h <= np.log(p.size) + 1e-12
    assert info.kl_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    uniform = np.full(p.size, 1.0 / p.size)
    assert info.kl_divergence(p, uniform) == pytest.approx(np.log(p.size) - h, abs=1e-12)


@pytest.mark.parametrize(("call", "exc", "pattern"), [
    (lambda: info.entropy([0.5, -0.1, 0.6]), ValueError,
     r"p must hold probabilities in \[0, 1\], got p\[1\] = -0\.1"),
    (lambda: info.entropy([[0.5, 0.5], [0.5, 0.6]]), ValueError,
     r"p must sum to 1 along axis -1, but the distribution at \[1\] sums to 1\.1"),
    (lambda: info.entropy([0.5, 0.1, 0.6]), ValueError, r"p must sum to 1 .* sums to 1\.2"),
    (lambda: info.kl_divergence([0.5, 0.5], [0.2, 0.3, 0.5]), ValueError,
     r"q must have the shape of p \(2,\), got shape \(3,\)"),
    (lambda: info.cross_entropy([0.5, 0.5], [0.5, 1.5]), ValueError,
     r"q must hold probabilities in \[0, 1\], got q\[1\] = 1\.5"),
    (lambda: info.entropy([0.5, 0.5], base=1), ValueError,
     r"base must be None or a number > 0 other than 1, got 1"),
    (lambda: info.entropy([0.5, 0.5], base=-2.0), ValueError, r"base .* got -2\.0"),
    (lambda: info.entropy([0.5, 0.5], base="2"), TypeError, r"base .* got '2'"),
    (lambda: info.entropy([0.5, 0.5], axis=3), ValueError,
     r"axis 3 is out of range for p of shape \(2,\)"),
    (lambda: info.entropy([0.5, 0.5], axis=None), TypeError, r"axis must be an int, got "
                                                            r"NoneType None"),
    (lambda: info.surprisal(1.5), ValueError, r"p must hold probabilities in \[0, 1\], "
                                              r"got p = 1\.5"),
    (lambda: info.entropy([1, 0]), TypeError, r"p must be an array of probabilities .* int64"),
], ids=["negative", "row-sum", "sum-1d", "shape", "q-range", "base-1", "base-negative",
        "base-type", "axis-range", "axis-none", "surprisal-range", "integers"])
def test_errors(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()

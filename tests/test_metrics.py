"""crossent.metrics against scikit-learn's metrics and hand-computed values."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

from crossent import metrics

sk = pytest.importorskip("sklearn.metrics")


def random_proba(rng, n, k, dtype=np.float64):
    p = rng.dirichlet(np.ones(k) * 0.5, size=n)
    return p.astype(dtype), rng.integers(0, k, n)


# --------------------------------------------------------------------------------------------
# log loss: scikit-learn's number, including its clipping
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "k"), [(1, 2), (50, 3), (400, 10)])
def test_log_loss_matches_sklearn(rng, n, k):
    p, y = random_proba(rng, n, k)
    assert metrics.log_loss(y, p) == pytest.approx(
        sk.log_loss(y, p, labels=range(k)), rel=1e-12)


def test_log_loss_clips_zero_and_one_like_sklearn():
    """p = 0 on the true class costs -ln(eps) = 36.04365 in float64, 15.94238 in float32."""
    p = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])
    y = np.array([0, 0, 1])
    ours = metrics.log_loss(y, p)
    assert ours == pytest.approx(sk.log_loss(y, p), rel=1e-12)
    assert metrics.log_loss([0], [[0.0, 1.0]]) == pytest.approx(36.04365338911715, rel=1e-12)
    p32 = np.array([[0.0, 1.0]], dtype=np.float32)
    assert metrics.log_loss([0], p32) == pytest.approx(15.942385, rel=1e-6)
    assert metrics.log_loss([0], p32) == pytest.approx(
        sk.log_loss([0], p32, labels=[0, 1]), rel=1e-6)


def test_log_loss_does_not_renormalise_and_warns():
    p = np.array([[0.2, 0.2, 0.2], [0.5, 0.3, 0.2]])  # the first row sums to 0.6
    y = np.array([0, 1])
    with pytest.warns(UserWarning, match="do not sum to 1"):
        ours = metrics.log_loss(y, p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ours == pytest.approx(sk.log_loss(y, p, labels=[0, 1, 2]), rel=1e-12)
    assert ours == pytest.approx(-(np.log(0.2) + np.log(0.3)) / 2, rel=1e-12)


def test_log_loss_binary_one_column_and_weights(rng):
    p1 = rng.uniform(size=30)
    y = rng.integers(0, 2, 30)
    assert metrics.log_loss(y, p1) == pytest.approx(sk.log_loss(y, p1), rel=1e-12)
    w = rng.uniform(0.1, 2, 30)
    assert metrics.log_loss(y, p1, sample_weight=w) == pytest.approx(
        sk.log_loss(y, p1, sample_weight=w), rel=1e-12)


def test_log_loss_is_the_core_nll_loss(rng):
    """One definition: the metric is crossent.nll_loss on the clipped log-probabilities."""
    import crossent

    p, y = random_proba(rng, 20, 4)
    eps = np.finfo(np.float64).eps
    assert metrics.log_loss(y, p) == float(crossent.nll_loss(np.log(np.clip(p, eps, 1 - eps)),
                                                             y))


@pytest.mark.parametrize(("proba", "labels", "error", "message"), [
    ([[0.5, 1.2]], [0], ValueError, r"probabilities in \[0, 1\], got 1.2 \(above 1\) in row 0"),
    ([[-0.1, 1.1]], [0], ValueError, r"got -0.1 \(below 0\)"),
    ([[np.nan, 1.0]], [0], ValueError, "must be finite, got nan in row 0, column 0"),
    ([[0.5, 0.5]], [2], ValueError, r"class indices in \[0, 1\], got 2 in row 0"),
    ([[0.5, 0.5]], [0, 1], ValueError, r"labels must have shape \(1,\)"),
    ([[0.5, 0.5]], [0.0], TypeError, "labels must be integer class indices"),
    (np.zeros((0, 3)), np.zeros(0, int), ValueError, "is empty"),
    ([[1.0]], [0], ValueError, "at least 2 classes"),
])
def test_bad_input_names_what_is_wrong(proba, labels, error, message):
    with pytest.raises(error, match=message):
        metrics.log_loss(labels, proba)


# --------------------------------------------------------------------------------------------
# The other scores
# --------------------------------------------------------------------------------------------


def test_accuracy_confusion_precision_recall_match_sklearn(rng):
    p, y = random_proba(rng, 200, 5)
    pred = p.argmax(axis=1)
    assert metrics.accuracy(y, p) == pytest.approx(sk.accuracy_score(y, pred))
    cm = metrics.confusion_matrix(y, pred, 5)
    np.testing.assert_array_equal(cm, sk.confusion_matrix(y, pred, labels=range(5)))
    precision, recall = metrics.precision_recall(cm)
    np.testing.assert_allclose(precision, sk.precision_score(y, pred, average=None))
    np.testing.assert_allclose(recall, sk.recall_score(y, pred, average=None))


def test_precision_of_a_never_predicted_class_is_nan():
    cm = metrics.confusion_matrix([0, 1, 1], [1, 1, 1], 3)
    precision, recall = metrics.precision_recall(cm)
    assert np.isnan(precision[0]) and precision[1] == pytest.approx(2 / 3)
    assert recall[0] == 0 and recall[1] == 1 and np.isnan(recall[2])


@pytest.mark.parametrize("k", [2, 3, 7])
def test_brier_score_matches_sklearn(rng, k):
    """sklearn halves the two-class score (mean (p1 - y)^2); so do we."""
    p, y = random_proba(rng, 100, k)
    assert metrics.brier_score(y, p) == pytest.approx(
        sk.brier_score_loss(y, p, labels=range(k)), rel=1e-12)


def test_expected_calibration_error_by_hand():
    # confidences 0.9, 0.9 (one right) -> bin 14: |0.5 - 0.9| = 0.4, weight 2/4;
    # confidences 0.6, 0.6 (both right) -> bin 9: |1 - 0.6| = 0.4, weight 2/4
    p = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]])
    y = np.array([0, 0, 0, 1])
    assert metrics.expected_calibration_error(y, p) == pytest.approx(0.4)
    # a perfectly calibrated, always-sure model has ECE 0
    assert metrics.expected_calibration_error([0, 1], np.eye(2)) == 0.0
    with pytest.raises(ValueError, match="n_bins must be a positive integer, got 0"):
        metrics.expected_calibration_error(y, p, n_bins=0)


def test_uniform_prediction_scores():
    k = 4
    p = np.full((8, k), 1 / k)
    y = np.arange(8) % k
    assert metrics.log_loss(y, p) == pytest.approx(np.log(k))
    assert metrics.brier_score(y, p) == pytest.approx(1 - 1 / k)


def test_metrics_module_needs_only_numpy():
    code = ("import sys, crossent.metrics as m; m.log_loss([0], [[0.5, 0.5]]); "
            "print(sorted(x for x in ('scipy', 'sklearn', 'matplotlib', 'torch') "
            "if x in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

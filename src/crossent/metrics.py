r"""Scores for predicted class probabilities: log loss, accuracy, Brier score, calibration.

Labels here are class indices ``0 .. C-1`` (columns of the probability matrix); turning
other labels into indices is the caller's job.  Only NumPy is needed.

The log loss is the NumPy core's :func:`~crossent.nll_loss` on clipped log-probabilities, so
that the number ``crossent score`` prints and the number training minimises come from the
same function.  Its clipping rule is scikit-learn's (``sklearn.metrics.log_loss`` since 1.5):

* every probability is clipped to ``[eps, 1 - eps]`` with ``eps = np.finfo(dtype).eps``
  (2.22e-16 for float64, so a probability of exactly 0 on the true class costs
  ``-ln(eps) = 36.04`` nats instead of infinity);
* rows are **not** renormalised after clipping, and rows that do not sum to 1 (within
  ``sqrt(eps)``) only draw a warning.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from ._arrays import describe
from .functional import nll_loss

__all__ = [
    "check_probabilities",
    "clip_probabilities",
    "log_loss",
    "accuracy",
    "brier_score",
    "expected_calibration_error",
    "confusion_matrix",
    "precision_recall",
]


def check_probabilities(proba: Any, labels: Any = None, name: str = "proba"
                        ) -> tuple[np.ndarray, np.ndarray | None]:
    """``proba`` as a float ``(N, C)`` array in [0, 1] (a 1-D array is ``P(class 1)``) and
    ``labels`` as int64 indices in ``[0, C)``, with errors that name what is wrong."""
    p = np.asarray(proba)
    if p.dtype.kind not in "fiu" or p.dtype.kind == "b":
        raise TypeError(f"{name} must be an array of probabilities, got {describe(p)}")
    if p.dtype.kind != "f":
        p = p.astype(np.float64)
    if p.ndim == 1:  # P(positive class), as sklearn.metrics.log_loss
        p = np.stack([1.0 - p, p], axis=1)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"{name} must have shape (n_samples, n_classes) with at least 2 "
                         f"classes, got shape {p.shape}")
    if p.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows)")
    bad = ~np.isfinite(p)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(f"{name} must be finite, got {p[row, col]} in row {row}, column {col}")
    for test, word in ((p < 0, "below 0"), (p > 1, "above 1")):
        if test.any():
            row, col = np.argwhere(test)[0]
            value = float(p[row, col])
            raise ValueError(f"{name} must hold probabilities in [0, 1], got {value!r} "
                             f"({word}) in row {row}, column {col}")
    if labels is None:
        return p, None
    y = np.asarray(labels)
    if y.dtype.kind not in "iu":
        raise TypeError(f"labels must be integer class indices, got {describe(y)}")
    if y.shape != (p.shape[0],):
        raise ValueError(f"labels must have shape ({p.shape[0]},) (one per row of {name}), "
                         f"got shape {y.shape}")
    out = (y < 0) | (y >= p.shape[1])
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise ValueError(f"labels must be class indices in [0, {p.shape[1] - 1}], got {y[i]} "
                         f"in row {i}")
    return p, y.astype(np.int64, copy=False)


def clip_probabilities(proba: np.ndarray) -> np.ndarray:
    """Clip to ``[eps, 1 - eps]``, ``eps`` the machine epsilon of ``proba``'s dtype; no
    renormalisation (scikit-learn's rule)."""
    eps = np.finfo(proba.dtype).eps
    return np.clip(proba, eps, 1 - eps)


def log_loss(labels: Any, proba: Any, sample_weight: Any = None) -> float:
    r"""Mean negative log-likelihood of ``labels`` under ``proba`` (natural log, nats).

    .. math:: \mathrm{LL} = -\frac{1}{\sum_n s_n} \sum_n s_n
        \log \operatorname{clip}(p_{n, y_n}, \epsilon, 1 - \epsilon)

    Same number as ``sklearn.metrics.log_loss(labels, proba, labels=range(C))``.

    >>> round(log_loss([2], [[0.6, 0.2, 0.2]]), 6)
    1.609438
    """
    p, y = check_probabilities(proba, labels)
    p_sum = p.sum(axis=1)
    if not np.allclose(p_sum, 1.0, rtol=math.sqrt(np.finfo(p.dtype).eps), atol=0):
        warnings.warn("the probabilities in some rows do not sum to 1; they are scored as "
                      "given (not renormalised)", UserWarning, stacklevel=2)
    with np.errstate(divide="ignore"):
        log_p = np.log(clip_probabilities(p))
    if sample_weight is None:
        return float(nll_loss(log_p, y))
    per_row = nll_loss(log_p, y, reduction="none")
    return float(np.average(per_row, weights=np.asarray(sample_weight, dtype=np.float64)))


def accuracy(labels: Any, proba: Any) -> float:
    """Fraction of rows whose most probable class (first on ties) is the label."""
    p, y = check_probabilities(proba, labels)
    return float(np.mean(np.argmax(p, axis=1) == y))


def brier_score(labels: Any, proba: Any) -> float:
    r"""Mean squared distance between ``proba`` and the one-hot label.

    .. math:: \mathrm{BS} = \frac{1}{N} \sum_n \sum_c (p_{n,c} - [y_n = c])^2

    halved for two classes, so that it is the familiar ``mean (p_1 - y)^2`` there (as
    ``sklearn.metrics.brier_score_loss``, whose default does the same).  0 is perfect; the
    uniform guess scores ``1 - 1/C`` (0.25 for two classes).
    """
    p, y = check_probabilities(proba, labels)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    score = float(np.mean(np.sum((p - onehot) ** 2, axis=1)))
    return 0.5 * score if p.shape[1] == 2 else score


def expected_calibration_error(labels: Any, proba: Any, n_bins: int = 15) -> float:
    r"""Expected calibration error of the top-label confidence (Guo et al., 2017).

    Rows are put in ``n_bins`` equal-width bins of confidence ``max_c p_{n,c}`` (bin ``b``
    holds confidences in ``((b-1)/B, b/B]``); the error is the row-weighted mean over bins of
    ``|accuracy(bin) - mean confidence(bin)|``.  0 means the model is right exactly as often
    as it says.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    p, y = check_probabilities(proba, labels)
    confidence = p.max(axis=1)
    correct = (np.argmax(p, axis=1) == y).astype(np.float64)
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, weights=correct, minlength=n_bins)
                 - np.bincount(bins, weights=confidence, minlength=n_bins))
    return float(gap.sum() / count.sum())


def confusion_matrix(labels: Any, predicted: Any, n_classes: int) -> np.ndarray:
    """``(C, C)`` counts: row = true class, column = predicted class."""
    y = np.asarray(labels, dtype=np.int64)
    pred = np.asarray(predicted, dtype=np.int64)
    if y.shape != pred.shape:
        raise ValueError(f"labels and predicted must have the same shape, got {y.shape} and "
                         f"{pred.shape}")
    return np.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes)


def precision_recall(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class precision (of the rows predicted as the class, the share that are it) and
    recall (of the rows that are the class, the share found); NaN where undefined (a class
    never predicted, or absent from the labels)."""
    cm = np.asarray(confusion, dtype=np.float64)
    hits = np.diag(cm)
    with np.errstate(divide="ignore", invalid="ignore"):
        return hits / cm.sum(axis=0), hits / cm.sum(axis=1)

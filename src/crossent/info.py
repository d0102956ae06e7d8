r"""Information quantities of discrete distributions, in nats (or bits with ``base=2``).

The vocabulary behind the loss: the *surprisal* of an event of probability ``p`` is
``-log p``; the *entropy* ``H(p)`` is the expected surprisal under ``p``; the *cross-entropy*
``H(p, q)`` is the expected surprisal of outcomes drawn from ``p`` when we predicted ``q``; the
*KL divergence* is the difference, ``H(p, q) - H(p) >= 0``.  Training a classifier with
cross-entropy loss minimises ``H(onehot(y), q)``, which for a one-hot ``p`` equals
``KL(p || q)`` because ``H(onehot) = 0``.

All use ``0 log 0 = 0`` (an impossible outcome adds nothing) and agree with
``scipy.stats.entropy`` and ``scipy.special.rel_entr``.  Unlike ``scipy.stats.entropy`` they do
not renormalise: distributions must be non-negative and sum to 1 along ``axis`` (to within
rounding), and anything else is refused rather than silently rescaled.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from ._arrays import as_float_array, entry, first_position

__all__ = ["surprisal", "entropy", "cross_entropy", "kl_divergence"]


def _log_base(base: Any) -> float:
    if base is None:
        return 1.0
    if isinstance(base, bool) or not isinstance(base, numbers.Real):
        raise TypeError(f"base must be None or a number > 0 other than 1, got {base!r}")
    if not (base > 0 and base != 1 and math.isfinite(base)):
        raise ValueError(f"base must be None or a number > 0 other than 1, got {base!r}")
    return math.log(base)


def _probabilities(value: Any, name: str, axis: Any, *, distribution: bool = True) -> np.ndarray:
    """Probabilities in [0, 1]; with ``distribution``, summing to 1 along ``axis``."""
    p = as_float_array(value, name, "an array of probabilities")
    bad = ~((p >= 0) & (p <= 1))
    if bad.any():
        raise ValueError(f"{name} must hold probabilities in [0, 1], got "
                         f"{entry(name, p, first_position(bad))}")
    if not distribution:  # single events (surprisal): nothing to sum
        return p
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis must be an int, got {type(axis).__name__} {axis!r}")
    if p.ndim == 0 or not -p.ndim <= axis < p.ndim:
        raise ValueError(f"axis {axis} is out of range for {name} of shape {p.shape}")
    total = p.sum(axis=axis, dtype=np.float64)
    tol = 8 * math.sqrt(np.finfo(p.dtype).eps) * max(1.0, math.sqrt(p.shape[axis]))
    off = np.abs(total - 1) > tol
    if off.any():
        where = first_position(off) if np.ndim(total) else ()
        which = f"the distribution at {list(where)}" if where else "it"
        raise ValueError(
            f"{name} must sum to 1 along axis {axis}, but {which} sums "
            f"to {float(np.asarray(total)[where]):.6g}; divide it by its sum first"
        )
    return p


def surprisal(p: Any, base: float | None = None) -> np.ndarray:
    r"""Information content ``-log p`` of events of probability ``p`` (``inf`` at 0).

    .. math:: I(p) = -\log_b p

    Args:
        p: probabilities in [0, 1], of any shape; each entry is one event (they need not
            sum to 1).
        base: the logarithm's base: None for nats (natural log), 2 for bits.

    Returns:
        An array of ``p``'s shape: ``inf`` where ``p`` is 0.

    >>> float(surprisal(0.5, base=2))
    1.0
    >>> surprisal([0.5, 0.2, 0.0])
    array([0.69314718, 1.60943791,        inf])
    """
    p = _probabilities(p, "p", None, distribution=False)
    with np.errstate(divide="ignore"):
        return -np.log(p) / _log_base(base)


def entropy(p: Any, axis: int = -1, base: float | None = None) -> np.ndarray:
    r"""Shannon entropy ``H(p) = -sum p log p`` of distributions along ``axis``.

    .. math:: H(p) = -\sum_i p_i \log_b p_i, \qquad 0 \log 0 = 0

    Args:
        p: distributions, e.g. ``(C,)`` or ``(N, C)``: non-negative, summing to 1 along
            ``axis`` (checked, never renormalised).
        axis: the axis that holds each distribution's outcomes.
        base: the logarithm's base: None for nats, 2 for bits.

    Returns:
        ``p``'s shape without ``axis``: a 0-d array for one distribution.

    >>> round(float(entropy([0.6, 0.2, 0.2])), 10)
    0.9502705392
    >>> entropy([[0.5, 0.5], [0.9, 0.1]], base=2)
    array([1.        , 0.46899559])
    """
    p = _probabilities(p, "p", axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0.0)
    return -terms.sum(axis=axis) / _log_base(base)


def cross_entropy(p: Any, q: Any, axis: int = -1, base: float | None = None) -> np.ndarray:
    r"""Cross-entropy ``H(p, q) = -sum p log q``: the expected surprisal of ``q`` under ``p``.

    .. math:: H(p, q) = -\sum_i p_i \log_b q_i = H(p) + KL(p \,\|\, q)

    Infinite where ``q`` gives probability 0 to an outcome ``p`` makes possible.  For a
    one-hot ``p`` (the true class) this is the cross-entropy loss of the prediction ``q``.

    Args:
        p: the true distributions, e.g. ``(C,)`` or ``(N, C)``, summing to 1 along ``axis``.
        q: the predicted distributions, of ``p``'s shape, summing to 1 along ``axis``.
        axis: the axis that holds each distribution's outcomes.
        base: the logarithm's base: None for nats, 2 for bits.

    Returns:
        ``p``'s shape without ``axis``.

    >>> round(float(cross_entropy([0.0, 0.0, 1.0], [0.6, 0.2, 0.2])), 9)  # = ln 5
    1.609437912
    """
    p = _probabilities(p, "p", axis)
    q = _probabilities(q, "q", axis)
    _same_shape(p, q)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(q), 0.0)
    return -terms.sum(axis=axis) / _log_base(base)


def kl_divergence(p: Any, q: Any, axis: int = -1, base: float | None = None) -> np.ndarray:
    r"""Kullback-Leibler divergence ``KL(p || q) = sum p log(p / q) >= 0``.

    .. math:: KL(p \,\|\, q) = \sum_i p_i \log_b \frac{p_i}{q_i}

    Equals ``scipy.special.rel_entr(p, q).sum(axis)`` and ``cross_entropy(p, q) - entropy(p)``;
    not symmetric in ``p`` and ``q``.

    Args:
        p: the reference distributions, e.g. ``(C,)`` or ``(N, C)``, summing to 1 along
            ``axis``.
        q: the distributions compared with them, of ``p``'s shape.
        axis: the axis that holds each distribution's outcomes.
        base: the logarithm's base: None for nats, 2 for bits.

    Returns:
        ``p``'s shape without ``axis``: 0 where ``q`` equals ``p``, ``inf`` where ``q``
            gives probability 0 to an outcome ``p`` makes possible.

    >>> round(float(kl_divergence([0.6, 0.2, 0.2], [0.2, 0.3, 0.5])), 10)
    0.3948162052
    """
    p = _probabilities(p, "p", axis)
    q = _probabilities(q, "q", axis)
    _same_shape(p, q)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) - np.log(q)), 0.0)
    return terms.sum(axis=axis) / _log_base(base)


def _same_shape(p: np.ndarray, q: np.ndarray) -> None:
    if p.shape != q.shape:
        raise ValueError(f"q must have the shape of p {p.shape}, got shape {q.shape}")

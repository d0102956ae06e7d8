r"""``SoftmaxRegression``: multinomial logistic regression trained on crossent's own losses.

The pipeline the textbooks draw, as a scikit-learn estimator::

    x  ->  z = W x + b  ->  p = softmax(z)  ->  loss(p, onehot(y))  ->  gradient step on W, b

Every loss value and every gradient of the loss comes from :mod:`crossent.functional`
(:func:`~crossent.functional.cross_entropy_with_grad` for cross-entropy; :func:`~crossent.softmax`
for the squared-error comparison loss); this module adds only the chain rule through the
linear layer, the L2 penalty, and the solvers.

Needs scikit-learn and SciPy (``pip install "crossent[sklearn]"``).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

try:
    from scipy import optimize, sparse
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, validate_data
    from threadpoolctl import ThreadpoolController
except ImportError as _exc:  # name the extra, not just the module
    from ._optional import missing

    raise missing(_exc, "crossent.SoftmaxRegression", "sklearn") from _exc

from ._kernel import num_threads
from ._model_file import MODEL_FORMAT, ModelFileError, read_model_file
from ._row_losses import LOSS_ROWS as _LOSS_ROWS
from .functional import log_softmax, softmax

__all__ = ["SoftmaxRegression", "TrainingDiverged", "save_model", "load_model", "ModelFileError",
           "MODEL_FORMAT"]

LOSSES = ("cross_entropy", "mse")
SOLVERS = ("lbfgs", "gd", "sgd")
# Below this many entries of X, one thread does the matrix products (a thread pool costs
# more than it saves on digits-sized data).
_PARALLEL_MIN_ENTRIES = 1 << 18


# --------------------------------------------------------------------------------------------
# The training objective
# --------------------------------------------------------------------------------------------


class _Objective:
    r"""The function every solver minimises, and its gradient.

    .. math:: J(W, b) = \frac{1}{S} \sum_i s_i\, \ell(W x_i + b,\ y_i)
        + \frac{\alpha}{2} \lVert W \rVert_F^2, \qquad S = \sum_i s_i

    ``ell`` is the per-sample cross-entropy or squared error (times the class weight of
    ``y_i``, with label smoothing); ``s`` are sample weights (all 1 by default, so the first
    term is the mean loss); the intercept ``b`` is not penalised.  With ``G = dJ/dZ`` from
    the loss functions above (rows already scaled by ``s_i / S``)::

        dJ/dW = G^T X + alpha W        dJ/db = sum_i G_i

    Large dense ``X`` is split into row blocks whose matrix products run on a thread pool
    (NumPy releases the GIL in ``matmul``).
    """

    def __init__(self, X, y, n_classes, *, loss, alpha, class_weight, sample_weight,
                 label_smoothing, pool=None, threads=1):
        self.X = X
        self.y = y
        self.n_classes = n_classes
        self.n_features = X.shape[1]
        self.loss_rows = _LOSS_ROWS[loss]
        self.alpha = alpha
        self.weight = class_weight
        self.label_smoothing = label_smoothing
        s = np.ones(X.shape[0]) if sample_weight is None else sample_weight
        self.sample_weight = s
        self.row_scale = s / s.sum()
        self.pool = pool
        self.blocks = None
        if pool is not None and not sparse.issparse(X):
            # a few blocks per thread, so that a thread slowed by another process does not
            # hold the others up: the pool hands out blocks as threads come free
            parts = 4 * threads
            bounds = np.linspace(0, X.shape[0], parts + 1).astype(np.int64)
            self.blocks = [(int(a), int(c)) for a, c in zip(bounds[:-1], bounds[1:]) if c > a]

    # -- the linear layer, forward and backward ----------------------------------------------

    def logits(self, W, b, rows=None):
        X = self.X if rows is None else self.X[rows]
        if rows is None and self.blocks is not None:
            Z = np.empty((X.shape[0], W.shape[0]))

            def part(a, c):
                np.matmul(X[a:c], W.T, out=Z[a:c])

            list(self.pool.map(lambda ac: part(*ac), self.blocks))
        else:
            Z = np.asarray(X @ W.T)
        Z += b
        return Z

    def weight_grad(self, G, rows=None):
        X = self.X if rows is None else self.X[rows]
        if sparse.issparse(X):
            return np.asarray(X.T @ G).T
        if rows is None and self.blocks is not None:
            parts = self.pool.map(lambda ac: G[ac[0]:ac[1]].T @ X[ac[0]:ac[1]], self.blocks)
            return sum(parts)
        return G.T @ X

    # -- J and its gradient -----------------------------------------------------------------

    def value_and_grad(self, W, b, rows=None):
        """``(J, dJ/dW, dJ/db)``, on all samples or on the minibatch ``rows``."""
        Z = self.logits(W, b, rows)
        if rows is None:
            y, scale = self.y, self.row_scale
        else:
            y, s = self.y[rows], self.sample_weight[rows]
            scale = s / s.sum()
        per_row, G = self.loss_rows(Z, y, self.weight, self.label_smoothing, scale)
        data_term = float(per_row @ scale)
        gW = self.weight_grad(G, rows)
        gW += self.alpha * W
        value = data_term + 0.5 * self.alpha * float(np.vdot(W, W))
        return value, gW, G.sum(axis=0)

    def value(self, W, b):
        """``J`` on all samples, without the gradient."""
        Z = self.logits(W, b)
        per_row, _ = self.loss_rows(Z, self.y, self.weight, self.label_smoothing,
                                    self.row_scale, want_grad=False)
        return float(per_row @ self.row_scale) + 0.5 * self.alpha * float(np.vdot(W, W))

    def flat(self, theta):
        """``value_and_grad`` on one flat vector ``[W.ravel(), b]`` (for SciPy)."""
        W, b = self.unflatten(theta)
        value, gW, gb = self.value_and_grad(W, b)
        return value, np.concatenate([gW.ravel(), gb])

    def unflatten(self, theta):
        k, d = self.n_classes, self.n_features
        return theta[: k * d].reshape(k, d), theta[k * d:]

    def smoothness(self):
        r"""An estimate of ``L``, the Lipschitz constant of ``dJ/d(W, b)`` for cross-entropy.

        The Hessian of ``CE(z)`` in ``z`` is ``diag(p) - p p^T``, whose eigenvalues never exceed
        1/2 (Böhning's bound), so ``L <= lambda_max(X1^T D X1) / 2 + alpha`` with ``X1 = [X, 1]``
        and ``D = diag(s_i A_i / S)`` (``A_i`` the class weight of the sample).  The largest
        eigenvalue comes from 50 steps of power iteration (seeded, so fits are reproducible).
        """
        d = self.n_features
        row = self.row_scale * self._coef_sum()
        v = np.random.default_rng(0).standard_normal(d + 1)
        lam = 0.0
        for _ in range(50):
            v /= np.linalg.norm(v)
            u = np.asarray(self.X @ v[:d]).ravel() + v[d]
            u *= row
            w = np.concatenate([np.asarray(self.X.T @ u).ravel(), [u.sum()]])
            new = float(np.linalg.norm(w))
            if abs(new - lam) <= 1e-4 * new:
                lam = new
                break
            lam, v = new, w
        return 0.5 * lam + self.alpha

    def _coef_sum(self):
        if self.weight is None:
            return 1.0
        eps, k = self.label_smoothing, self.n_classes
        return (1.0 - eps) * self.weight[self.y] + eps / k * self.weight.sum()


# --------------------------------------------------------------------------------------------
# The estimator
# --------------------------------------------------------------------------------------------


def _check_number(name, value, *, low=None, high=None, low_open=False, high_open=False,
                  integer=False, allow=()):
    """Raise ``ValueError`` naming ``name``, the allowed range and what arrived."""
    if any(value is a or (isinstance(value, str) and value == a) for a in allow):
        return value
    kind = numbers.Integral if integer else numbers.Real
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if ok and not integer:
        ok = math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else f"{'(' if low_open else '['}{low}, "
        hi = "inf)" if high is None else f"{high}{')' if high_open else ']'}"
        what = "an integer" if integer else "a number"
        also = "".join(f" or {a!r}" for a in allow)
        rng = f" in {lo}{hi}" if lo else ""
        raise ValueError(f"{name} must be {what}{rng}{also}, got {value!r}")
    return value


class SoftmaxRegression(ClassifierMixin, BaseEstimator):
    r"""Multinomial logistic (softmax) regression, trained on crossent's NumPy losses.

    Minimises

    .. math:: J(W, b) = \frac{1}{\sum_i s_i} \sum_i s_i\, w_{y_i}\, \ell\big(
        \operatorname{softmax}(W x_i + b),\ y_i\big) + \frac{\alpha}{2} \lVert W \rVert_F^2

    where ``ell`` is the cross-entropy ``-log p_y`` (``loss="cross_entropy"``) or the squared
    error ``sum_c (p_c - onehot(y)_c)^2`` (``loss="mse"``, for comparison), ``s`` are sample
    weights, ``w`` class weights, and the intercept is not penalised.  With the defaults it is
    the model ``LogisticRegression`` fits: ``LogisticRegression(C=C)`` on ``n`` samples is
    ``SoftmaxRegression(alpha=1 / (C * n))`` with three or more classes, and
    ``SoftmaxRegression(alpha=2 / (C * n))`` with two.  Two classes differ because the softmax
    keeps a weight vector per class and only their difference ``w = W[1] - W[0]`` matters: at
    the optimum ``W[0] = -W[1] = -w / 2``, so the penalty ``alpha / 2 * (|W[0]|^2 + |W[1]|^2)``
    is ``alpha / 4 * |w|^2``, which is logistic regression's ``|w|^2 / (2 C n)`` when
    ``alpha = 2 / (C n)``.

    Parameters
    ----------
    loss : {"cross_entropy", "mse"}, default="cross_entropy"
        The per-sample loss on the softmax probabilities.
    solver : {"lbfgs", "gd", "sgd"}, default="lbfgs"
        ``"lbfgs"``: SciPy's L-BFGS-B on the full objective.  ``"gd"``: full-batch gradient
        descent with momentum.  ``"sgd"``: minibatch gradient descent with momentum, samples
        shuffled every epoch with ``random_state``.
    alpha : float, default=1e-3
        L2 penalty on ``W`` (not on the intercept).  ``0`` turns it off.
    max_iter : int, default=1000
        Iterations (``lbfgs``, ``gd``) or epochs (``sgd``).
    tol : float or None, default=1e-4
        ``lbfgs`` and ``gd`` stop once every entry of the objective's gradient is at most
        ``tol`` in absolute value; ``sgd`` stops once the training objective has not improved
        by more than ``tol`` for ``n_iter_no_change`` epochs in a row.  ``None`` runs all
        ``max_iter``.  Whatever the solver, the fit counts as converged (``converged_``) only
        when the full-batch gradient meets the first rule (see ``converged_``).
    label_smoothing : float, default=0.0
        ``eps`` in [0, 1]: the one-hot target becomes ``(1 - eps) onehot + eps / C``.
    class_weight : dict, "balanced" or None, default=None
        Weights ``w`` per class label (missing labels get 1).  ``"balanced"`` gives class ``k``
        the weight ``S / (C * S_k)``, ``S_k`` the (sample-weighted) count of class ``k``.
    batch_size : int, default=64
        Minibatch size for ``sgd`` (capped at the number of samples).
    learning_rate : float or "auto", default="auto"
        Step size for ``gd`` and ``sgd``.  ``"auto"`` is ``1 / L`` for ``gd`` and
        ``(1 - momentum) / L`` for ``sgd``, with ``L`` an estimate of the gradient's Lipschitz
        constant for cross-entropy (see Notes); the value used is stored in
        ``learning_rate_``.
    momentum : float, default=0.9
        Heavy-ball momentum in [0, 1) for ``gd`` and ``sgd``: ``v = momentum * v - lr * grad``.
    n_iter_no_change : int, default=10
        ``sgd`` stops after this many epochs without an improvement larger than ``tol``
        (the objective oscillates under momentum, so one bad epoch is not enough).
    random_state : int, RandomState instance or None, default=None
        Seeds the ``sgd`` shuffling.
    verbose : int, default=0
        Print the objective after every iteration when positive.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels, sorted.
    coef_ : ndarray of shape (n_classes, n_features), or (1, n_features) for two classes
        ``W``.  For two classes, the single row is ``W[1] - W[0]`` (as in LogisticRegression),
        so ``decision_function > 0`` predicts ``classes_[1]``.
    intercept_ : ndarray of shape (n_classes,), or (1,) for two classes
        ``b`` (centred to sum to 0), or ``b[1] - b[0]`` for two classes.
    n_iter_ : int
        Iterations (``lbfgs``, ``gd``) or epochs (``sgd``) run.
    n_features_in_ : int
        Number of features seen in ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Column names, when ``X`` was a DataFrame with string column names.
    loss_curve_ : list of float
        The training objective ``J`` after each iteration or epoch.
    learning_rate_ : float
        The step size used (``gd`` and ``sgd`` only).
    max_abs_gradient_ : float
        The largest absolute entry of the objective's full-batch gradient ``(dJ/dW, dJ/db)``
        at the returned coefficients: the number ``tol`` bounds.
    converged_ : bool
        Whether the fit met its convergence criterion: ``max_abs_gradient_ <= tol`` for
        ``gd`` and ``sgd``; for ``lbfgs``, SciPy's success (projected gradient at most ``tol``,
        or no relative decrease of the objective beyond ``64 * eps``).  Always False with
        ``tol=None``.  A plateau of ``sgd``'s objective is not enough: minibatch noise, or a
        very small step on unscaled features, stops the objective from improving long before
        the optimum.  With a ``tol``, ``fit`` issues a ``ConvergenceWarning`` exactly when
        this is False.

    Notes
    -----
    ``learning_rate="auto"``: the Hessian of the cross-entropy in the logits is
    ``diag(p) - p p^T`` and never exceeds ``I / 2`` (Böhning), so the objective's gradient is
    ``L``-Lipschitz with ``L <= lambda_max(X1^T D X1) / 2 + alpha``, ``X1 = [X, 1]``,
    ``D = diag(s_i w_i / S)``; the largest eigenvalue is estimated by power iteration.  The
    same step is used for ``loss="mse"``, so the two losses are compared at equal steps.

    While fitting, BLAS runs on one thread and the matrix products on large data are split
    over crossent's own threads (``CROSSENT_NUM_THREADS``): on small machines OpenBLAS's
    spinning threads and the fused loss kernel's threads otherwise slow each other down
    several times over.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.model_selection import train_test_split
    >>> from crossent import SoftmaxRegression
    >>> X, y = load_digits(return_X_y=True)
    >>> X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=0)
    >>> model = SoftmaxRegression().fit(X_train, y_train)
    >>> round(model.score(X_test, y_test), 4)
    0.9722
    """

    def __init__(self, loss="cross_entropy", *, solver="lbfgs", alpha=1e-3, max_iter=1000,
                 tol=1e-4, label_smoothing=0.0, class_weight=None, batch_size=64,
                 learning_rate="auto", momentum=0.9, n_iter_no_change=10, random_state=None,
                 verbose=0):
        self.loss = loss
        self.solver = solver
        self.alpha = alpha
        self.max_iter = max_iter
        self.tol = tol
        self.label_smoothing = label_smoothing
        self.class_weight = class_weight
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.n_iter_no_change = n_iter_no_change
        self.random_state = random_state
        self.verbose = verbose

    # -- checks ------------------------------------------------------------------------------

    def _check_params(self):
        name = type(self).__name__
        if self.loss not in LOSSES:
            raise ValueError(f"{name}: loss must be one of {', '.join(map(repr, LOSSES))}, "
                             f"got {self.loss!r}")
        if self.solver not in SOLVERS:
            raise ValueError(f"{name}: solver must be one of {', '.join(map(repr, SOLVERS))}, "
                             f"got {self.solver!r}")
        _check_number(f"{name}: alpha", self.alpha, low=0)
        _check_number(f"{name}: max_iter", self.max_iter, low=1, integer=True)
        _check_number(f"{name}: tol", self.tol, low=0, allow=(None,))
        _check_number(f"{name}: label_smoothing", self.label_smoothing, low=0, high=1)
        _check_number(f"{name}: batch_size", self.batch_size, low=1, integer=True)
        _check_number(f"{name}: learning_rate", self.learning_rate, low=0, low_open=True,
                      allow=("auto",))
        _check_number(f"{name}: momentum", self.momentum, low=0, high=1, high_open=True)
        _check_number(f"{name}: n_iter_no_change", self.n_iter_no_change, low=1, integer=True)
        _check_number(f"{name}: verbose", self.verbose, low=0, integer=True)
        cw = self.class_weight
        if not (cw is None or cw == "balanced" or isinstance(cw, dict)):
            raise ValueError(f"{name}: class_weight must be None, 'balanced' or a dict "
                             f"{{label: weight}}, got {cw!r}")

    def _class_weights(self, y_idx, sample_weight):
        cw = self.class_weight
        k = len(self.classes_)
        if cw is None:
            return None
        if isinstance(cw, str):  # "balanced"
            counts = np.bincount(y_idx, weights=sample_weight, minlength=k)
            return sample_weight.sum() / (k * counts)
        unknown = [label for label in cw if label not in set(self.classes_.tolist())]
        if unknown:
            raise ValueError(f"class_weight names labels that are not classes of y: {unknown!r} "
                             f"(classes: {self.classes_.tolist()!r})")
        weights = np.ones(k)
        for i, label in enumerate(self.classes_.tolist()):
            if label in cw:
                weights[i] = _check_number(f"class_weight[{label!r}]", cw[label], low=0)
        return weights

    @staticmethod
    def _sample_weight(sample_weight, n):
        if sample_weight is None:
            return np.ones(n)
        try:
            s = np.asarray(sample_weight, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"sample_weight must be an array of numbers, got "
                             f"{type(sample_weight).__name__}") from None
        if s.ndim == 0:
            s = np.full(n, float(s))
        if s.shape != (n,):
            raise ValueError(f"sample_weight must have shape ({n},) (one weight per sample), "
                             f"got shape {s.shape}")
        if not np.all(np.isfinite(s)) or np.any(s < 0):
            raise ValueError("sample_weight must hold finite, non-negative numbers")
        if s.sum() <= 0:
            raise ValueError("sample_weight must not be all zero")
        return s

    # -- fit ---------------------------------------------------------------------------------

    def fit(self, X, y, sample_weight=None, *, callback: Callable[[Any], Any] | None = None):
        """Fit the model to ``X`` of shape (n_samples, n_features) and labels ``y``.

        ``callback(model)``, if given, is called after every iteration (epoch for ``sgd``)
        with ``coef_``, ``intercept_``, ``n_iter_`` and ``loss_curve_`` set to their current
        values, so it can evaluate the model as it trains.  Returns ``self``.
        """
        self._check_params()
        X, y = validate_data(self, X, y, accept_sparse="csr", dtype=np.float64)
        check_classification_targets(y)
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        y_idx = y_idx.astype(np.int64)
        if len(self.classes_) < 2:
            raise ValueError(
                f"y contains only one class ({self.classes_.tolist()[0]!r}); {type(self).__name__} "
                "needs samples of at least 2 classes"
            )
        s = self._sample_weight(sample_weight, X.shape[0])
        class_weight = self._class_weights(y_idx, s)
        k, d = len(self.classes_), X.shape[1]
        threads = num_threads()
        big = threads > 1 and not sparse.issparse(X) and X.size >= _PARALLEL_MIN_ENTRIES
        self.loss_curve_ = []
        self.n_iter_ = 0
        with _one_blas_thread(), \
                ThreadPoolExecutor(threads) if big else _NoPool() as pool:
            objective = _Objective(
                X, y_idx, k, loss=self.loss, alpha=float(self.alpha),
                class_weight=class_weight, sample_weight=None if sample_weight is None else s,
                label_smoothing=float(self.label_smoothing), pool=pool if big else None,
                threads=threads,
            )
            W, b = np.zeros((k, d)), np.zeros(k)
            solve = {"lbfgs": self._fit_lbfgs, "gd": self._fit_gd, "sgd": self._fit_sgd}
            W, b, self.max_abs_gradient_, self.converged_ = solve[self.solver](
                objective, W, b, callback)
        self._set_weights(W, b)
        return self

    def _set_weights(self, W, b):
        if W.shape[0] == 2:
            self.coef_ = (W[1] - W[0])[None, :]
            self.intercept_ = np.array([b[1] - b[0]])
        else:
            self.coef_ = W.copy()
            self.intercept_ = b - b.mean()

    def _after_iteration(self, W, b, value, callback):
        self.n_iter_ += 1
        self.loss_curve_.append(float(value))
        if self.verbose:
            print(f"{type(self).__name__} {self.solver} iteration {self.n_iter_}: "
                  f"objective {value:.6f}")
        if callback is not None:
            self._set_weights(W, b)
            callback(self)

    def _fit_lbfgs(self, objective, W, b, callback):
        def on_iteration(intermediate_result):
            Wi, bi = objective.unflatten(intermediate_result.x)
            self._after_iteration(Wi, bi, intermediate_result.fun, callback)

        result = optimize.minimize(
            objective.flat, np.concatenate([W.ravel(), b]), jac=True, method="L-BFGS-B",
            callback=on_iteration,
            options={
                "maxiter": self.max_iter,
                "maxls": 50,
                "gtol": 0.0 if self.tol is None else self.tol,
                "ftol": 64 * np.finfo(float).eps,
            },
        )
        converged = bool(result.success) and self.tol is not None
        if not result.success and self.tol is not None:
            warnings.warn(
                f"lbfgs did not converge after {self.n_iter_} iterations ({result.message}); "
                "raise max_iter, or scale the features",
                ConvergenceWarning, stacklevel=3,
            )
        W, b = objective.unflatten(result.x)
        return W, b, float(np.abs(result.jac).max()), converged

    def _step_size(self, objective):
        if self.learning_rate == "auto":
            # gd: 1/L, the classic safe step (heavy-ball momentum stays stable up to
            # 2 (1 + momentum) / L).  sgd: (1 - momentum)/L, so that the step of the momentum
            # average, lr / (1 - momentum), is 1/L: minibatch gradients are noisy and the
            # full 1/L step with momentum 0.9 wanders far from the optimum.
            scale = 1.0 if self.solver == "gd" else 1.0 - float(self.momentum)
            self.learning_rate_ = scale / objective.smoothness()
        else:
            self.learning_rate_ = float(self.learning_rate)
        return self.learning_rate_

    def _fit_gd(self, objective, W, b, callback):
        lr, beta = self._step_size(objective), float(self.momentum)
        vW, vb = np.zeros_like(W), np.zeros_like(b)
        _, gW, gb = objective.value_and_grad(W, b)
        largest = _largest(gW, gb)
        while not self._within_tol(largest) and self.n_iter_ < self.max_iter:
            vW *= beta
            vW -= lr * gW
            vb *= beta
            vb -= lr * gb
            W, b = W + vW, b + vb
            value, gW, gb = objective.value_and_grad(W, b)
            if not np.isfinite(value):
                raise TrainingDiverged(_diverged(self, "gd"))
            self._after_iteration(W, b, value, callback)
            largest = _largest(gW, gb)
        converged = self._within_tol(largest)
        if not converged and self.tol is not None:
            warnings.warn(f"gd did not converge after {self.n_iter_} iterations (largest "
                          f"gradient entry still above tol={self.tol}); raise max_iter",
                          ConvergenceWarning, stacklevel=3)
        return W, b, largest, converged

    def _within_tol(self, largest):
        """The convergence criterion of gd and sgd: every entry of the full gradient is at
        most ``tol`` (never met with ``tol=None``)."""
        return self.tol is not None and largest <= self.tol

    def _fit_sgd(self, objective, W, b, callback):
        lr, beta = self._step_size(objective), float(self.momentum)
        rng = check_random_state(self.random_state)
        n = objective.X.shape[0]
        batch = min(int(self.batch_size), n)
        vW, vb = np.zeros_like(W), np.zeros_like(b)
        best, stalled, plateau = np.inf, 0, False
        while self.n_iter_ < self.max_iter and not plateau:
            order = rng.permutation(n)
            for start in range(0, n, batch):
                rows = np.sort(order[start:start + batch])
                if not objective.sample_weight[rows].any():
                    continue
                _, gW, gb = objective.value_and_grad(W, b, rows)
                vW *= beta
                vW -= lr * gW
                vb *= beta
                vb -= lr * gb
                W += vW
                b += vb
            value = objective.value(W, b)
            if not np.isfinite(value):
                raise TrainingDiverged(_diverged(self, "sgd"))
            self._after_iteration(W, b, value, callback)
            if self.tol is not None:
                stalled = stalled + 1 if value > best - self.tol else 0
                best = min(best, value)
                plateau = stalled >= self.n_iter_no_change
        # A plateau of the objective is where sgd stops, not a proof of convergence (tiny
        # steps make a plateau too): convergence is judged by the full-batch gradient, as
        # for gd, and the warning says so exactly when converged_ is False.
        _, gW, gb = objective.value_and_grad(W, b)
        largest = _largest(gW, gb)
        converged = self._within_tol(largest)
        if not converged and self.tol is not None:
            measured = f"the largest gradient entry, {largest:.2g}, is above tol={self.tol}"
            if plateau:
                message = (f"sgd did not converge: the objective stopped improving after "
                           f"{self.n_iter_} epochs, but {measured}; lower learning_rate or "
                           "scale the features")
            else:
                message = (f"sgd did not converge after {self.n_iter_} epochs ({measured}); "
                           "raise max_iter")
            warnings.warn(message, ConvergenceWarning, stacklevel=3)
        return W, b, largest, converged

    # -- predict -----------------------------------------------------------------------------

    def decision_function(self, X):
        """Logits ``X @ coef_.T + intercept_``: (n_samples, n_classes), or (n_samples,) for
        two classes (the logit of ``classes_[1]`` against ``classes_[0]``)."""
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse="csr", dtype=np.float64, reset=False)
        scores = np.asarray(X @ self.coef_.T) + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    def _logits(self, X):
        z = self.decision_function(X)
        if z.ndim == 1:
            return np.column_stack([np.zeros_like(z), z])
        return z

    def predict_proba(self, X):
        """Class probabilities ``softmax(logits)``, shape (n_samples, n_classes)."""
        return softmax(self._logits(X), axis=1)

    def predict_log_proba(self, X):
        """Log-probabilities ``log_softmax(logits)`` (exact, also where ``p`` underflows)."""
        return log_softmax(self._logits(X), axis=1)

    def predict(self, X):
        """The most probable class label per sample."""
        logits = self._logits(X)
        return self.classes_[np.argmax(logits, axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


_controller: ThreadpoolController | None = None


def _one_blas_thread():
    """A context in which BLAS runs on one thread.  The controller (which scans the loaded
    libraries, ~2 ms) is made once; limiting through it costs microseconds."""
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")


def _largest(gW, gb):
    """The largest absolute entry of the gradient ``(dJ/dW, dJ/db)``."""
    return float(max(np.abs(gW).max(), np.abs(gb).max()))


class _NoPool:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


class TrainingDiverged(ValueError, FloatingPointError):
    """Gradient descent blew up: the objective stopped being finite (step size too large)."""


def _diverged(model, solver):
    return (f"{solver} diverged (the objective is no longer finite); lower learning_rate "
            f"(it was {model.learning_rate_:.4g}) or scale the features")


# --------------------------------------------------------------------------------------------
# Saving and loading, without pickle
# --------------------------------------------------------------------------------------------

_PARAMS = ("loss", "solver", "alpha", "max_iter", "tol", "label_smoothing", "batch_size",
           "learning_rate", "momentum", "n_iter_no_change")


def _split_pipeline(model: Any) -> tuple[SoftmaxRegression, Any]:
    """``(the SoftmaxRegression, the StandardScaler before it or None)`` of what save_model
    was given: a SoftmaxRegression, or a Pipeline of a StandardScaler and one."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if isinstance(model, SoftmaxRegression):
        return model, None
    steps = [step for _, step in model.steps] if isinstance(model, Pipeline) else []
    if (len(steps) == 2 and isinstance(steps[0], StandardScaler)
            and isinstance(steps[1], SoftmaxRegression)):
        return steps[1], steps[0]
    raise TypeError(f"model must be a SoftmaxRegression or a Pipeline of a StandardScaler and "
                    f"a SoftmaxRegression, got {type(model).__name__}")


def save_model(model: Any, file: Any, *, feature_names: Any = None,
               metadata: dict | None = None) -> None:
    """Write a fitted model to ``file`` (a path or a binary file object) as ``.npz``.

    ``model`` is a :class:`SoftmaxRegression`, or a ``Pipeline`` of a fitted
    ``StandardScaler`` and a SoftmaxRegression (``make_pipeline(StandardScaler(),
    SoftmaxRegression())``, what ``crossent train`` fits), whose mean and scale are saved
    with it.  The file holds plain arrays only (``coef``, ``intercept``, ``classes``,
    ``feature_mean`` and ``feature_scale`` for a pipeline, and ``feature_names``: the given
    ones, else ``feature_names_in_`` when the model has them) plus one JSON string ``meta``
    with the parameters and ``metadata``; :func:`load_model` reads it back with
    ``allow_pickle=False``.  Class labels must be numbers or strings.
    """
    estimator, scaler = _split_pipeline(model)
    check_is_fitted(estimator)
    classes = np.asarray(estimator.classes_)
    if classes.dtype.kind == "O":
        try:
            classes = classes.astype(str)
        except (TypeError, ValueError):
            raise TypeError("class labels must be numbers or strings to be saved") from None
    if classes.dtype.kind not in "biufU":
        raise TypeError(f"class labels must be numbers or strings to be saved, got "
                        f"{classes.dtype}")
    d = estimator.coef_.shape[1]
    names_in = getattr(scaler if scaler is not None else estimator, "feature_names_in_", None)
    names = feature_names if feature_names is not None else names_in
    meta = {
        **(metadata or {}),
        "format": MODEL_FORMAT,
        "params": {p: getattr(estimator, p) for p in _PARAMS},
        "n_iter": int(estimator.n_iter_),
        "feature_names_in": feature_names is None and names_in is not None,
        "standardize": scaler is not None,
    }
    arrays = {
        "coef": np.ascontiguousarray(estimator.coef_, dtype=np.float64),
        "intercept": np.ascontiguousarray(estimator.intercept_, dtype=np.float64),
        "classes": classes,
        "meta": np.array(json.dumps(meta)),
    }
    if scaler is not None:
        check_is_fitted(scaler)
        d_in = scaler.n_features_in_
        mean = np.zeros(d_in) if scaler.mean_ is None else scaler.mean_
        scale = np.ones(d_in) if scaler.scale_ is None else scaler.scale_
        if d_in != d:
            raise ValueError(f"the scaler has {d_in} features but the model {d}")
        arrays["feature_mean"] = np.asarray(mean, dtype=np.float64)
        arrays["feature_scale"] = np.asarray(scale, dtype=np.float64)
    if names is not None:
        names = np.asarray(names, dtype=str)
        if names.shape != (d,):
            raise ValueError(f"feature_names must name the {d} features, "
                             f"got {names.shape[0] if names.ndim == 1 else names.shape} names")
        arrays["feature_names"] = names
    if isinstance(file, (str, os.PathLike)):
        with open(file, "wb") as fh:
            np.savez(fh, **arrays)
    else:
        np.savez(file, **arrays)


def load_model(file: Any) -> tuple[Any, dict]:
    """Read a model written by :func:`save_model`: ``(model, meta)``.

    ``model`` is what was saved: a :class:`SoftmaxRegression`, or a ``Pipeline`` of a
    ``StandardScaler`` and one, which standardises the features it is given (both have
    ``classes_``, ``n_features_in_``, ``predict`` and ``predict_proba``).  ``meta`` is the
    metadata given to :func:`save_model` plus ``params``, ``n_iter``, ``standardize`` and
    ``feature_names`` (a list, or None).  Raises :class:`ModelFileError` (a ``ValueError``)
    naming the file and what is wrong when it is not such a model: not an ``.npz`` archive,
    a pickled or oversized array, arrays of the wrong dtype or shape, class labels that are
    not distinct, coefficients that are not finite, parameters SoftmaxRegression refuses
    (see :func:`crossent._model_file.read_model_file`).
    """
    arrays, meta = read_model_file(file)
    return build_model(arrays, meta), meta


def build_model(arrays: dict[str, np.ndarray], meta: dict) -> Any:
    """The model of a file that :func:`crossent._model_file.read_model_file` has read and
    checked (``arrays``, ``meta``): what :func:`load_model` returns first, for a caller that
    looks at the arrays before scikit-learn is needed, without reading the file again."""
    params = {p: v for p, v in meta.get("params", {}).items() if p in _PARAMS}
    model = SoftmaxRegression(**params)
    try:
        model._check_params()
    except ValueError as exc:
        raise ModelFileError(f"{meta['file']} is not a valid crossent model: {exc}") from None
    coef = arrays["coef"]
    model.classes_ = arrays["classes"]
    model.coef_ = coef
    model.intercept_ = arrays["intercept"]
    model.n_features_in_ = coef.shape[1]
    n_iter = meta.get("n_iter", 0)
    model.n_iter_ = n_iter if isinstance(n_iter, int) else 0
    model.loss_curve_ = []
    names = arrays.get("feature_names")
    names_in = names.astype(object) if names is not None and meta.get("feature_names_in") \
        else None
    if not meta["standardize"]:
        if names_in is not None:
            model.feature_names_in_ = names_in
        return model
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    scale = arrays["feature_scale"]
    scaler = StandardScaler()
    scaler.mean_, scaler.scale_, scaler.var_ = arrays["feature_mean"], scale, scale**2
    scaler.n_features_in_ = coef.shape[1]
    train_rows = meta.get("train_rows", 0)
    scaler.n_samples_seen_ = train_rows if isinstance(train_rows, int) else 0
    if names_in is not None:
        scaler.feature_names_in_ = names_in
    return make_pipeline(scaler, model)

"""SoftmaxRegression: scikit-learn's estimator contract, the objective and its gradient,
agreement between solvers and with LogisticRegression, digits accuracy, save/load."""

from __future__ import annotations

import functools
import io
import json
import os
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("scipy")

from scipy import sparse  # noqa: E402
from sklearn.datasets import load_digits, make_classification  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import crossent  # noqa: E402
from crossent._row_losses import cross_entropy_rows, squared_error_rows  # noqa: E402
from crossent.classifier import (  # noqa: E402
    ModelFileError,
    SoftmaxRegression,
    TrainingDiverged,
    _Objective,
    load_model,
    save_model,
)


@pytest.fixture(scope="module")
def digits_split():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X, y, test_size=0.2, random_state=0)


@pytest.fixture(scope="module")
def small_problem():
    """300 standardised rows, 5 features, 3 classes: well conditioned, fast to solve exactly."""
    X, y = make_classification(300, 5, n_informative=4, n_redundant=0, n_classes=3,
                               random_state=0)
    return StandardScaler().fit_transform(X), y


# --------------------------------------------------------------------------------------------
# scikit-learn's estimator checks.  Small max_iter keeps them fast; one instance per solver
# and one with the squared-error loss.
# --------------------------------------------------------------------------------------------


ESTIMATORS = [
    SoftmaxRegression(max_iter=100),
    SoftmaxRegression(solver="sgd", max_iter=20),
    SoftmaxRegression(loss="mse", solver="gd", max_iter=50),
]


@parametrize_with_checks(ESTIMATORS)
def test_sklearn_estimator_checks(estimator, check):
    """Every check runs, the pandas ones included (pandas is a test dependency); the array
    API check needs ``SCIPY_ARRAY_API=1`` before SciPy is imported, so it runs in a process
    of its own."""
    func = check
    while hasattr(func, "func"):
        func = func.func
    if func.__name__ == "check_array_api_input":
        _array_api_check_in_a_subprocess(estimator, check.keywords)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


def _array_api_check_in_a_subprocess(estimator, keywords):
    outcome = _array_api_checks(json.dumps(keywords, sort_keys=True))
    assert outcome[json.dumps(estimator.get_params(), sort_keys=True)] == "passed", outcome


@functools.lru_cache
def _array_api_checks(keywords: str) -> dict:
    """Run ``check_array_api_input(**keywords)`` on every estimator of ESTIMATORS in one
    process with ``SCIPY_ARRAY_API=1``: ``{params as JSON: "passed" or the error}``."""
    code = (
        "import json, sys, traceback, warnings\n"
        "from sklearn.utils.estimator_checks import check_array_api_input\n"
        "from crossent import SoftmaxRegression\n"
        "outcome = {}\n"
        "for params in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        with warnings.catch_warnings():\n"
        "            warnings.simplefilter('ignore')\n"
        "            check_array_api_input('SoftmaxRegression', SoftmaxRegression(**params), "
        "**json.loads(sys.argv[2]))\n"
        "        outcome[json.dumps(params, sort_keys=True)] = 'passed'\n"
        "    except Exception:\n"
        "        outcome[json.dumps(params, sort_keys=True)] = traceback.format_exc()\n"
        "print(json.dumps(outcome))\n"
    )
    params = json.dumps([e.get_params() for e in ESTIMATORS])
    result = subprocess.run([sys.executable, "-c", code, params, keywords],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "SCIPY_ARRAY_API": "1"})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_lazy_attribute_of_the_package():
    assert crossent.SoftmaxRegression is SoftmaxRegression


# --------------------------------------------------------------------------------------------
# Quality: the bound on digits, and LogisticRegression's model
# --------------------------------------------------------------------------------------------


def test_digits_default_model_reaches_the_bound(digits_split):
    """80/20 split, random_state=0: LogisticRegression gets 0.9694; we must reach 0.969."""
    X_train, X_test, y_train, y_test = digits_split
    model = SoftmaxRegression().fit(X_train, y_train)
    assert model.score(X_test, y_test) >= 0.969
    assert model.n_iter_ < model.max_iter  # converged, no ConvergenceWarning
    assert len(model.loss_curve_) == model.n_iter_
    assert model.coef_.shape == (10, 64) and model.intercept_.shape == (10,)


def test_same_model_as_logistic_regression(small_problem):
    """LogisticRegression(C) on n samples minimises our objective with alpha = 1/(C n) when
    there are three or more classes."""
    X, y = small_problem
    C = 0.5
    theirs = LogisticRegression(C=C, tol=1e-10, max_iter=10000).fit(X, y)
    ours = SoftmaxRegression(alpha=1 / (C * len(X)), tol=1e-10).fit(X, y)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=1e-7)
    np.testing.assert_allclose(ours.coef_, theirs.coef_, atol=1e-6)


@pytest.mark.parametrize("C", [0.05, 1.0])
def test_two_classes_take_twice_the_alpha(C):
    """With two classes LogisticRegression(C) is SoftmaxRegression(alpha=2/(C n)): the
    softmax's two weight vectors split the logistic one, W[1] = -W[0] = w/2, so its penalty
    alpha/2 (|W[0]|^2 + |W[1]|^2) = alpha/4 |w|^2 equals |w|^2 / (2 C n) at alpha = 2/(C n).
    alpha = 1/(C n) fits a different (less regularised) model."""
    X, y = make_classification(400, 6, n_informative=4, random_state=1)
    X = StandardScaler().fit_transform(X)
    n = len(X)
    theirs = LogisticRegression(C=C, tol=1e-12, max_iter=10000).fit(X, y)
    ours = SoftmaxRegression(alpha=2 / (C * n), tol=1e-10).fit(X, y)
    np.testing.assert_allclose(ours.coef_, theirs.coef_, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(ours.intercept_, theirs.intercept_, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=1e-6)
    half = SoftmaxRegression(alpha=1 / (C * n), tol=1e-10).fit(X, y)
    assert np.abs(half.coef_ - theirs.coef_).max() > 1e-3 * np.abs(theirs.coef_).max()


# --------------------------------------------------------------------------------------------
# The objective: gradient against finite differences
# --------------------------------------------------------------------------------------------


def _numeric_gradient(f, theta, h=1e-6):
    g = np.empty_like(theta)
    for i in range(theta.size):
        e = np.zeros_like(theta)
        e[i] = h
        g[i] = (f(theta + e) - f(theta - e)) / (2 * h)
    return g


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize(("class_weight", "sample_weight", "label_smoothing"), [
    (None, None, 0.0),  # the plain mean loss
    ([2.0, 0.5, 1.0, 3.0], None, 0.0),  # class weights multiply each sample's loss
    (None, "random", 0.0),  # sample weights: a weighted mean
    ([2.0, 0.5, 1.0, 3.0], "random", 0.2),  # all together, with label smoothing
])
def test_objective_gradient_matches_finite_differences(rng, loss, class_weight, sample_weight,
                                                        label_smoothing):
    n, d, k = 40, 5, 4
    X = rng.standard_normal((n, d))
    y = rng.integers(0, k, n)
    s = rng.uniform(0.1, 3.0, n) if sample_weight == "random" else None
    w = None if class_weight is None else np.array(class_weight)
    obj = _Objective(X, y, k, loss=loss, alpha=0.3, class_weight=w, sample_weight=s,
                     label_smoothing=label_smoothing)
    theta = rng.standard_normal(k * d + k)
    value, grad = obj.flat(theta)
    numeric = _numeric_gradient(lambda t: obj.flat(t)[0], theta)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)
    # and J is what its formula says
    W, b = obj.unflatten(theta)
    Z = X @ W.T + b
    loss_rows = cross_entropy_rows if loss == "cross_entropy" else squared_error_rows
    per_row, _ = loss_rows(Z, y, w, label_smoothing, np.ones(n), want_grad=False)
    s_ = np.ones(n) if s is None else s
    expected = (s_ @ per_row) / s_.sum() + 0.15 * np.sum(W * W)
    assert value == pytest.approx(expected, rel=1e-12)


def test_cross_entropy_rows_are_the_core(rng):
    """The classifier's cross-entropy is crossent.cross_entropy_with_grad, row by row."""
    Z = rng.standard_normal((6, 3))
    y = rng.integers(0, 3, 6)
    per_row, grad = cross_entropy_rows(Z, y, None, 0.0, np.full(6, 1 / 6))
    loss, core_grad = crossent.cross_entropy_with_grad(Z, y)
    assert per_row.mean() == pytest.approx(float(loss), rel=1e-12)
    np.testing.assert_allclose(grad, core_grad, rtol=1e-12)


def test_squared_error_is_the_brier_sum(rng):
    """SE_i = sum_c (softmax(z_i)_c - onehot(y_i)_c)^2."""
    Z = rng.standard_normal((5, 4))
    y = rng.integers(0, 4, 5)
    per_row, _ = squared_error_rows(Z, y, None, 0.0, np.ones(5), want_grad=False)
    p = crossent.softmax(Z, axis=1)
    np.testing.assert_allclose(per_row, ((p - np.eye(4)[y]) ** 2).sum(axis=1), rtol=1e-12)


def test_parallel_row_blocks_give_the_same_objective(rng):
    X = rng.standard_normal((3001, 7))
    y = rng.integers(0, 5, 3001)
    W, b = rng.standard_normal((5, 7)), rng.standard_normal(5)
    args = dict(loss="cross_entropy", alpha=0.1, class_weight=None, sample_weight=None,
                label_smoothing=0.0)
    serial = _Objective(X, y, 5, **args).value_and_grad(W, b)
    with ThreadPoolExecutor(3) as pool:
        parallel = _Objective(X, y, 5, pool=pool, threads=3, **args).value_and_grad(W, b)
    for a, c in zip(serial, parallel):
        np.testing.assert_allclose(a, c, rtol=1e-12)


def test_auto_learning_rate_is_one_over_the_lipschitz_bound(small_problem):
    """L = lambda_max(X1^T X1 / n) / 2 + alpha, X1 = [X, 1] (Böhning's bound)."""
    X, y = small_problem
    X1 = np.column_stack([X, np.ones(len(X))])
    L = 0.5 * np.linalg.eigvalsh(X1.T @ X1 / len(X)).max() + 0.01
    gd = SoftmaxRegression(solver="gd", alpha=0.01, max_iter=1, tol=None).fit(X, y)
    assert gd.learning_rate_ == pytest.approx(1 / L, rel=1e-3)
    sgd = SoftmaxRegression(solver="sgd", alpha=0.01, max_iter=1, tol=None).fit(X, y)
    assert sgd.learning_rate_ == pytest.approx((1 - 0.9) / L, rel=1e-3)


# --------------------------------------------------------------------------------------------
# Solvers agree on the optimum of the (strictly convex in W) cross-entropy objective
# --------------------------------------------------------------------------------------------


def test_solvers_agree_on_the_optimum(small_problem):
    X, y = small_problem
    lbfgs = SoftmaxRegression(alpha=1e-2, tol=1e-10).fit(X, y)
    gd = SoftmaxRegression(alpha=1e-2, solver="gd", tol=1e-9, max_iter=5000).fit(X, y)
    # full-batch sgd is gd; minibatch sgd with a small constant step gets close
    sgd = SoftmaxRegression(alpha=1e-2, solver="sgd", batch_size=32, learning_rate=0.01,
                            max_iter=300, tol=None, random_state=0).fit(X, y)
    best = lbfgs.loss_curve_[-1]
    assert gd.loss_curve_[-1] == pytest.approx(best, abs=1e-12)
    np.testing.assert_allclose(gd.coef_, lbfgs.coef_, atol=1e-7)
    np.testing.assert_allclose(gd.intercept_, lbfgs.intercept_, atol=1e-7)
    assert 0 <= sgd.loss_curve_[-1] - best < 1e-3
    np.testing.assert_allclose(sgd.predict_proba(X), lbfgs.predict_proba(X), atol=0.05)


def test_sgd_is_reproducible_and_shuffles(small_problem):
    X, y = small_problem
    a = SoftmaxRegression(solver="sgd", max_iter=3, tol=None, random_state=1).fit(X, y)
    b = SoftmaxRegression(solver="sgd", max_iter=3, tol=None, random_state=1).fit(X, y)
    c = SoftmaxRegression(solver="sgd", max_iter=3, tol=None, random_state=2).fit(X, y)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    assert not np.array_equal(a.coef_, c.coef_)
    assert a.n_iter_ == 3 and len(a.loss_curve_) == 3


def test_sparse_input_fits_the_same_model(small_problem):
    X, y = small_problem
    dense = SoftmaxRegression(tol=1e-10).fit(X, y)
    csr = SoftmaxRegression(tol=1e-10).fit(sparse.csr_matrix(X), y)
    np.testing.assert_allclose(csr.coef_, dense.coef_, atol=1e-8)
    np.testing.assert_allclose(csr.predict_proba(sparse.csr_matrix(X)), dense.predict_proba(X),
                               atol=1e-9)


# --------------------------------------------------------------------------------------------
# Weights, smoothing, binary problems, the callback
# --------------------------------------------------------------------------------------------


def test_balanced_class_weight_equals_sample_weights(rng):
    X = rng.standard_normal((120, 3))
    y = np.r_[np.zeros(80, int), np.ones(30, int), np.full(10, 2)]
    balanced = SoftmaxRegression(class_weight="balanced", tol=1e-10).fit(X, y)
    counts = np.bincount(y)
    weights = len(y) / (3 * counts[y])
    weighted = SoftmaxRegression(tol=1e-10).fit(X, y, sample_weight=weights)
    np.testing.assert_allclose(balanced.coef_, weighted.coef_, atol=1e-7)


def test_dict_class_weight_and_unknown_label(rng):
    X = rng.standard_normal((60, 2))
    y = np.repeat(["a", "b", "c"], 20)
    model = SoftmaxRegression(class_weight={"a": 5.0}).fit(X, y)
    plain = SoftmaxRegression().fit(X, y)
    assert np.mean(model.predict(X) == "a") > np.mean(plain.predict(X) == "a")
    with pytest.raises(ValueError, match=r"class_weight names labels that are not classes"):
        SoftmaxRegression(class_weight={"z": 1.0}).fit(X, y)


def test_label_smoothing_makes_the_model_less_confident(small_problem):
    X, y = small_problem
    sharp = SoftmaxRegression(alpha=0.0, tol=1e-8).fit(X, y).predict_proba(X).max(axis=1)
    smooth = SoftmaxRegression(alpha=0.0, tol=1e-8, label_smoothing=0.3).fit(X, y)
    assert smooth.predict_proba(X).max(axis=1).mean() < sharp.mean()


def test_binary_problem_has_one_row_like_logistic_regression(rng):
    X = rng.standard_normal((100, 3))
    y = np.where(X[:, 0] + 0.3 * rng.standard_normal(100) > 0, "yes", "no")
    model = SoftmaxRegression().fit(X, y)
    assert model.coef_.shape == (1, 3) and model.intercept_.shape == (1,)
    z = model.decision_function(X)
    assert z.shape == (100,)
    np.testing.assert_allclose(model.predict_proba(X)[:, 1], 1 / (1 + np.exp(-z)), rtol=1e-12)
    np.testing.assert_array_equal(model.predict(X), np.where(z > 0, "yes", "no"))
    np.testing.assert_allclose(model.predict_log_proba(X), np.log(model.predict_proba(X)),
                               rtol=1e-10)


def test_callback_sees_every_iteration(small_problem):
    X, y = small_problem
    seen = []
    model = SoftmaxRegression(solver="gd", max_iter=7, tol=None)
    model.fit(X, y, callback=lambda m: seen.append((m.n_iter_, m.coef_.copy(),
                                                    m.score(X, y))))
    assert [i for i, _, _ in seen] == list(range(1, 8))
    np.testing.assert_array_equal(seen[-1][1], model.coef_)


def test_verbose_prints_the_objective(small_problem, capsys):
    X, y = small_problem
    SoftmaxRegression(max_iter=3, tol=None, verbose=1).fit(X, y)
    assert "lbfgs iteration 1: objective" in capsys.readouterr().out


def test_convergence_warning_names_the_remedy(digits_split):
    X_train, _, y_train, _ = digits_split
    with pytest.warns(ConvergenceWarning, match="raise max_iter"):
        SoftmaxRegression(max_iter=5).fit(X_train, y_train)
    with pytest.warns(ConvergenceWarning, match="gd did not converge after 5 iterations"):
        SoftmaxRegression(solver="gd", max_iter=5).fit(X_train, y_train)


def test_converged_only_when_the_gradient_says_so(small_problem):
    """``converged_`` holds the stated criterion (every gradient entry <= tol) for every
    solver: a plateau of sgd's objective is not convergence."""
    X, y = small_problem
    lbfgs = SoftmaxRegression(tol=1e-6).fit(X, y)
    assert lbfgs.converged_ and lbfgs.max_abs_gradient_ <= 1e-6
    gd = SoftmaxRegression(solver="gd", tol=1e-6, max_iter=5000).fit(X, y)
    assert gd.converged_ and gd.max_abs_gradient_ <= 1e-6
    with pytest.warns(ConvergenceWarning):
        short = SoftmaxRegression(solver="gd", max_iter=3).fit(X, y)
    assert not short.converged_ and short.max_abs_gradient_ > 1e-4
    # sgd on the unscaled wine table (proline ~ 1000): the automatic step is 3e-7, the
    # objective creeps (a plateau by the tol rule) while far from the optimum
    from sklearn.datasets import load_wine

    X_wine, y_wine = load_wine(return_X_y=True)
    with pytest.warns(ConvergenceWarning, match="the objective stopped improving after"):
        creeping = SoftmaxRegression(solver="sgd", random_state=0).fit(X_wine, y_wine)
    assert creeping.n_iter_ < creeping.max_iter and creeping.learning_rate_ < 1e-6
    assert not creeping.converged_ and creeping.max_abs_gradient_ > 1e4 * creeping.tol
    assert creeping.score(X_wine, y_wine) < 0.8
    # a plateau where the gradient is within tol (a loose one here) does count
    loose = SoftmaxRegression(solver="sgd", tol=0.02, learning_rate=0.03, random_state=0
                              ).fit(X, y)
    assert loose.converged_ and loose.max_abs_gradient_ <= 0.02
    assert not SoftmaxRegression(tol=None, max_iter=5).fit(X, y).converged_


@pytest.mark.parametrize(("params", "warning"), [
    # every epoch run, yet the gradient is within tol: converged, no warning
    (dict(max_iter=3, tol=0.05, n_iter_no_change=100), None),
    # every epoch run and the gradient above tol
    (dict(max_iter=3, tol=1e-6, n_iter_no_change=100), "did not converge after 3 epochs"),
    # a plateau (2 epochs without a better objective) with the gradient above tol
    (dict(max_iter=200, tol=1e-3, n_iter_no_change=2, learning_rate=1e-6),
     "the objective stopped improving after 3 epochs"),
])
def test_sgd_warns_exactly_when_it_has_not_converged(small_problem, params, warning):
    X, y = small_problem
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model = SoftmaxRegression(solver="sgd", random_state=0, **params).fit(X, y)
    notes = [str(w.message) for w in caught if w.category is ConvergenceWarning]
    assert model.converged_ is (warning is None)
    assert (model.max_abs_gradient_ <= model.tol) is model.converged_
    assert len(notes) == (0 if warning is None else 1), notes
    if warning is not None:
        assert warning in notes[0] and f"{model.max_abs_gradient_:.2g}" in notes[0]


def test_divergence_is_a_clear_error(digits_split):
    X_train, _, y_train, _ = digits_split
    with pytest.raises(TrainingDiverged, match="gd diverged .* lower learning_rate"):
        SoftmaxRegression(solver="gd", learning_rate=1e200, max_iter=50).fit(X_train, y_train)


# --------------------------------------------------------------------------------------------
# Bad arguments: ValueError naming the parameter, the allowed values and what arrived
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("params", "message"), [
    (dict(loss="hinge"), r"loss must be one of 'cross_entropy', 'mse', got 'hinge'"),
    (dict(solver="adam"), r"solver must be one of 'lbfgs', 'gd', 'sgd', got 'adam'"),
    (dict(alpha=-1.0), r"alpha must be a number in \[0, inf\), got -1.0"),
    (dict(alpha=float("nan")), r"alpha must be a number"),
    (dict(max_iter=0), r"max_iter must be an integer in \[1, inf\), got 0"),
    (dict(max_iter=2.5), r"max_iter must be an integer"),
    (dict(tol=-1), r"tol must be a number in \[0, inf\) or None, got -1"),
    (dict(label_smoothing=1.5), r"label_smoothing must be a number in \[0, 1\], got 1.5"),
    (dict(learning_rate=0), r"learning_rate must be a number in \(0, inf\) or 'auto', got 0"),
    (dict(learning_rate="fast"), r"learning_rate must be a number .* got 'fast'"),
    (dict(momentum=1.0), r"momentum must be a number in \[0, 1\), got 1.0"),
    (dict(batch_size=0), r"batch_size must be an integer in \[1, inf\), got 0"),
    (dict(class_weight="auto"), r"class_weight must be None, 'balanced' or a dict"),
])
def test_bad_parameters_raise_value_error(small_problem, params, message):
    X, y = small_problem
    with pytest.raises(ValueError, match=message):
        SoftmaxRegression(**params).fit(X, y)


def test_one_class_is_refused():
    with pytest.raises(ValueError, match=r"only one class \(3\).*at least 2 classes"):
        SoftmaxRegression().fit(np.ones((4, 2)), [3, 3, 3, 3])


def test_bad_sample_weight():
    X, y = np.eye(4), [0, 1, 0, 1]
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(4,\)"):
        SoftmaxRegression().fit(X, y, sample_weight=[1, 2])
    with pytest.raises(ValueError, match="non-negative"):
        SoftmaxRegression().fit(X, y, sample_weight=[1, -1, 1, 1])


# --------------------------------------------------------------------------------------------
# Save and load: plain arrays, no pickle, identical predictions
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("labels", ["digits", "text binary"])
def test_save_load_round_trip_gives_identical_predictions(tmp_path, digits_split, labels):
    X_train, X_test, y_train, _ = digits_split
    if labels == "text binary":
        y_train = np.where(y_train % 2 == 0, "even", "odd")
    model = SoftmaxRegression(max_iter=2000).fit(X_train, y_train)
    path = tmp_path / "model.npz"
    names = [f"px{i}" for i in range(64)]
    save_model(model, path, feature_names=names, metadata={"target": "digit"})
    with np.load(path, allow_pickle=False) as data:  # plain arrays only
        assert set(data.files) == {"coef", "intercept", "classes", "meta", "feature_names"}
    loaded, meta = load_model(path)
    assert meta["target"] == "digit" and meta["feature_names"] == names
    assert meta["params"]["max_iter"] == 2000
    np.testing.assert_array_equal(loaded.predict_proba(X_test), model.predict_proba(X_test))
    np.testing.assert_array_equal(loaded.predict(X_test), model.predict(X_test))
    np.testing.assert_array_equal(loaded.classes_, model.classes_)
    assert loaded.get_params() == model.get_params()


def test_build_model_from_the_arrays_read(tmp_path, small_problem):
    """``load_model`` is ``read_model_file`` (NumPy only) then ``build_model`` on its arrays,
    which the command line calls apart so that the file is read once."""
    from crossent._model_file import read_model_file
    from crossent.classifier import build_model

    X, y = small_problem
    path = tmp_path / "m.npz"
    save_model(SoftmaxRegression().fit(X, y), path)
    arrays, meta = read_model_file(path)
    built = build_model(arrays, meta)
    loaded, _ = load_model(path)
    np.testing.assert_array_equal(built.predict_proba(X), loaded.predict_proba(X))
    assert built.coef_ is arrays["coef"] and built.get_params() == loaded.get_params()


def test_load_refuses_other_files(tmp_path):
    bad = tmp_path / "not-a-model.npz"
    np.savez(bad, coef=np.zeros((3, 2)))
    with pytest.raises(ModelFileError, match="is not a crossent model: it lacks intercept"):
        load_model(bad)
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(ModelFileError, match="is not a crossent model: it is not an .npz "
                                             "archive"):
        load_model(text)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, coef=np.array([object()], dtype=object))
    with pytest.raises(ModelFileError, match=r"is not a valid crossent model: array 'coef' "
                                             r"holds Python objects \(pickled\)"):
        load_model(pickled)


def test_an_archive_is_told_from_a_file_that_is_not_one_by_type(tmp_path):
    """Whether the file is an .npz archive at all is known from read_npz's exception type,
    not its wording: a broken member whose name says "not a NumPy .npz archive" is a broken
    member; another format is named with every format that loads."""
    import zipfile

    odd = tmp_path / "odd.npz"
    with zipfile.ZipFile(odd, "w") as archive:
        archive.writestr("not a NumPy .npz archive.npy", b"garbage")
    with pytest.raises(ModelFileError, match=r"is not a valid crossent model: array 'not a "
                                             r"NumPy .npz archive' is not a NumPy array file"):
        load_model(odd)
    other = tmp_path / "other.npz"
    np.savez(other, coef=np.zeros((1, 2)), intercept=np.zeros(1), classes=np.arange(2),
             meta=np.array(json.dumps({"format": "other/1"})))
    with pytest.raises(ModelFileError, match="format 'other/1', expected "
                                             "'crossent.SoftmaxRegression/1' or "
                                             "'crossent.SoftmaxRegression/2'$"):
        load_model(other)


@pytest.fixture(scope="module")
def saved_arrays(digits_split):
    X_train, _, y_train, _ = digits_split
    buf = io.BytesIO()
    save_model(make_pipeline(StandardScaler(), SoftmaxRegression(max_iter=30)).fit(
        X_train[:300], y_train[:300]), buf)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as data:
        return dict(data)


@pytest.mark.parametrize(("change", "message"), [
    (dict(coef=np.zeros((10, 64), dtype=np.float32).astype(str)), "coef must hold floating"),
    (dict(intercept=np.zeros(9)), r"coef \(10, 64\) and intercept \(9,\) do not fit 10"),
    (dict(classes=np.arange(10)[::-1].copy()), "at least 2 distinct labels in sorted order"),
    (dict(classes=np.array([0.0, np.nan] + list(range(2, 10)))), "classes holds values that"),
    (dict(intercept=np.full(10, np.inf)), "intercept holds values that are not finite"),
    (dict(feature_mean=np.zeros(3)), r"feature_mean must be 64 finite numbers"),
    (dict(feature_scale=np.zeros(64)), "feature_scale must be positive"),
    (dict(feature_names=np.array(["a"] * 64)), "feature_names names a feature twice"),
    (dict(meta=np.array(json.dumps({"format": "crossent.SoftmaxRegression/2",
                                    "params": {"alpha": -1}}))), "alpha must be a number in"),
    (dict(meta=np.array(b"{}")), "its metadata is not a JSON string"),
])
def test_load_names_what_is_wrong_with_a_crafted_file(tmp_path, saved_arrays, change, message):
    path = tmp_path / "crafted.npz"
    np.savez(path, **{**saved_arrays, **change})
    with pytest.raises(ModelFileError, match=message) as info:
        load_model(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_a_standardising_pipeline_round_trips(tmp_path, digits_split):
    """make_pipeline(StandardScaler(), SoftmaxRegression()) is saved with the scaler's mean
    and scale and loaded as such a pipeline: identical predictions on raw features."""
    X_train, X_test, y_train, _ = digits_split
    pipeline = make_pipeline(StandardScaler(), SoftmaxRegression()).fit(X_train, y_train)
    path = tmp_path / "pipe.npz"
    save_model(pipeline, path, metadata={"train_rows": len(X_train)})
    loaded, meta = load_model(path)
    assert meta["standardize"] and [type(s).__name__ for _, s in loaded.steps] == [
        "StandardScaler", "SoftmaxRegression"]
    np.testing.assert_array_equal(loaded.predict_proba(X_test), pipeline.predict_proba(X_test))
    assert loaded.n_features_in_ == 64 and loaded[0].n_samples_seen_ == len(X_train)
    with pytest.raises(TypeError, match="a SoftmaxRegression or a Pipeline of a StandardScaler"):
        save_model(make_pipeline(SoftmaxRegression()), io.BytesIO())


def test_a_version_1_file_still_loads(tmp_path, digits_split):
    X_train, X_test, y_train, _ = digits_split
    model = SoftmaxRegression(max_iter=50, tol=None).fit(X_train, y_train)
    buf = io.BytesIO()
    save_model(model, buf)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as data:
        arrays = dict(data)
    meta = json.loads(str(arrays["meta"]))
    meta["format"] = "crossent.SoftmaxRegression/1"
    del meta["standardize"]
    np.savez(tmp_path / "v1.npz", **{**arrays, "meta": np.array(json.dumps(meta))})
    loaded, _ = load_model(tmp_path / "v1.npz")
    np.testing.assert_array_equal(loaded.predict_proba(X_test), model.predict_proba(X_test))


def test_save_to_a_file_object_and_unfitted_model():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        save_model(SoftmaxRegression(), io.BytesIO())

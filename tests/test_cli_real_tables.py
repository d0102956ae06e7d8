"""The command line on real tables, as a new user meets it: scikit-learn's wine,
breast-cancer and iris data exported to CSV with pandas, trained, evaluated, predicted and
scored with the ``crossent`` command (subprocesses, files in a temporary folder)."""

from __future__ import annotations

import csv
import io
import os
import re
import stat

import numpy as np
import pytest
from cli_support import assert_usage_error, crossent, real_table

sk = pytest.importorskip("sklearn")
pd = pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import log_loss  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402


def scores(text: str, which: str) -> tuple[float, float]:
    """(log loss, accuracy) of the ``train`` or ``test`` row of crossent train's table."""
    match = re.search(rf"^\s*{which}\s+([0-9.]+)\s+([0-9.]+)\s+\d+$", text, re.M)
    assert match, text
    return float(match.group(1)), float(match.group(2))


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tables")
    return {
        "wine": real_table("wine", folder, index=True, index_label="id"),  # an id column
        "breast_cancer": real_table("breast_cancer", folder),
        "iris": real_table("iris", folder),
        "folder": folder,
    }


@pytest.fixture(scope="module")
def wine_model(tables):
    """``crossent train`` with its defaults on wine.csv (with an id column), saved."""
    model = tables["folder"] / "wine.npz"
    result = crossent("train", "--data", str(tables["wine"]), "--out", str(model),
                      "--plot", str(tables["folder"] / "wine-curves.pdf"))
    assert result.returncode == 0, result.stderr
    return model, result


@pytest.fixture(scope="module")
def wine_predictions(tables, wine_model):
    """``crossent predict`` of the wine model on the wine table, to a file."""
    model, _ = wine_model
    preds = tables["folder"] / "preds.csv"
    result = crossent("predict", "--model", str(model), "--data", str(tables["wine"]),
                      "--out", str(preds))
    assert result.returncode == 0, result.stderr
    return preds, result


def sklearn_pipeline_split(path, drop=("id",)):
    frame = pd.read_csv(path).drop(columns=[c for c in drop if c in pd.read_csv(path, nrows=0)])
    X, y = frame.iloc[:, :-1].to_numpy(), frame.iloc[:, -1].to_numpy()
    return train_test_split(X, y, test_size=0.2, random_state=0)


def test_wine_by_default_is_at_least_as_accurate_as_scikit_learns_pipeline(tables, wine_model):
    """Standardised by default: the unscaled wine table (proline ~1000, hue ~1) trains to
    scikit-learn's ``make_pipeline(StandardScaler(), LogisticRegression())`` accuracy on the
    same split, converges (and says by which criterion), and leaves the id column out."""
    model_path, result = wine_model
    out = result.stdout
    X_train, X_test, y_train, y_test = sklearn_pipeline_split(tables["wine"])
    theirs = make_pipeline(StandardScaler(), LogisticRegression()).fit(X_train, y_train)
    assert scores(out, "test")[1] >= round(theirs.score(X_test, y_test), 4) == 1.0
    assert out.splitlines()[1] == "columns left out: id (identifies rows)"
    assert "wine.csv: 178 rows x 13 features, 3 classes; 142 train / 36 test rows" in out
    assert "alpha 0.001, standardised features" in out
    assert re.search(r"^iterations\s+\d+ \(converged: largest gradient entry [0-9.e-]+ <= "
                     r"tol 0.0001\)$", out, re.M)
    # the standardisation is saved: the training rows' mean and scale
    scaler = StandardScaler().fit(X_train)
    with np.load(model_path, allow_pickle=False) as saved:
        np.testing.assert_allclose(saved["feature_mean"], scaler.mean_, rtol=1e-12)
        np.testing.assert_allclose(saved["feature_scale"], scaler.scale_, rtol=1e-12)
        assert "id" not in saved["feature_names"].tolist()
    with open(tables["folder"] / "wine-curves.pdf", "rb") as fh:  # --plot x.pdf is a PDF
        assert fh.read(5) == b"%PDF-"


def test_breast_cancer_by_default_is_at_least_as_accurate_as_scikit_learns_pipeline(tables):
    result = crossent("train", "--data", str(tables["breast_cancer"]))
    assert result.returncode == 0, result.stderr
    X_train, X_test, y_train, y_test = sklearn_pipeline_split(tables["breast_cancer"])
    theirs = make_pipeline(StandardScaler(), LogisticRegression()).fit(X_train, y_train)
    ours = scores(result.stdout, "test")[1]  # printed with 4 decimals
    assert ours >= round(theirs.score(X_test, y_test), 4) > 0.95
    assert "(converged: " in result.stdout
    assert "2 classes" in result.stdout


def test_evaluate_and_predict_apply_the_saved_standardisation(tables, wine_model,
                                                              wine_predictions):
    """The probabilities ``predict`` writes are softmax(((x - mean) / scale) W^T + b) with
    the file's arrays, row by row in id order; ``evaluate`` scores the same numbers."""
    model_path, _ = wine_model
    frame = pd.read_csv(tables["wine"])
    X, y = frame.drop(columns=["id", "target"]).to_numpy(), frame["target"].to_numpy()
    with np.load(model_path, allow_pickle=False) as saved:
        z = (X - saved["feature_mean"]) / saved["feature_scale"] @ saved["coef"].T
        expected = softmax(z + saved["intercept"])

    preds, result = wine_predictions
    assert result.stderr.strip() == f"crossent predict: 178 rows of {tables['wine']} -> {preds}"
    rows = list(csv.reader(io.StringIO(preds.read_text())))
    assert rows[0] == ["id", "prob_0", "prob_1", "prob_2", "predicted"]  # the id, copied
    assert [r[0] for r in rows[1:]] == [str(i) for i in frame["id"]]
    proba = np.array([[float(v) for v in r[1:4]] for r in rows[1:]])
    np.testing.assert_allclose(proba, expected, rtol=1e-9, atol=1e-15)

    result = crossent("evaluate", "--model", str(model_path), "--data", str(tables["wine"]))
    assert result.returncode == 0, result.stderr
    printed = float(re.search(r"^log loss\s+([0-9.]+)$", result.stdout, re.M).group(1))
    assert printed == pytest.approx(log_loss(y, expected), abs=5e-5)


def test_score_matches_rows_by_id(tables, wine_predictions):
    """The labels file in another order: matched by the id column both files have, the log
    loss is the right one; by position it would be far off."""
    preds, _ = wine_predictions
    frame = pd.read_csv(tables["wine"])
    shuffled = frame[["id", "target"]].sample(frac=1.0, random_state=3)
    labels = tables["folder"] / "labels.csv"
    shuffled.to_csv(labels, index=False)
    result = crossent("score", str(preds), str(labels))
    assert result.returncode == 0, result.stderr
    proba = pd.read_csv(preds)[["prob_0", "prob_1", "prob_2"]].to_numpy()
    right = log_loss(frame["target"], proba, labels=[0, 1, 2])
    by_position = log_loss(shuffled["target"], proba, labels=[0, 1, 2])
    printed = float(re.search(r"^log loss\s+([0-9.]+)", result.stdout, re.M).group(1))
    assert printed == pytest.approx(right, abs=5e-7) and by_position > right + 1
    assert "(178 rows matched by id, 3 classes)" in result.stdout


def test_options_on_iris(tables):
    """``--drop``, ``--no-standardize`` with sgd (a plateau is not called convergence, and
    the hint names the command's options), and ``--force`` over an existing model file: the
    new file replaces the old one by a rename and keeps its permissions."""
    model = tables["folder"] / "iris.npz"
    model.write_bytes(b"old")
    os.chmod(model, 0o640)
    inode = model.stat().st_ino
    result = crossent("train", "--data", str(tables["iris"]), "--drop", "petal width (cm)",
                      "--no-standardize", "--solver", "sgd", "--out", str(model), "--force")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "columns left out: petal width (cm) (--drop)" in out
    assert "iris.csv: 150 rows x 3 features" in out and "features as given" in out
    status = re.search(r"^epochs\s+(\d+) \((.*)\)$", out, re.M)
    assert status and "converged:" not in status.group(2).replace("not converged:", "")
    assert status.group(2).startswith("not converged: ")
    assert "standardise the features (leave out --no-standardize)" in status.group(2)
    assert "max_iter" not in out
    assert stat.S_IMODE(model.stat().st_mode) == 0o640
    assert model.stat().st_ino != inode  # renamed into place, not rewritten
    with np.load(model, allow_pickle=False) as saved:
        assert "feature_mean" not in saved.files
        assert saved["feature_names"].tolist() == ["sepal length (cm)", "sepal width (cm)",
                                                   "petal length (cm)"]
    assert [p.name for p in tables["folder"].iterdir() if p.name.startswith(".crossent")] == []


def test_a_continuous_target_says_so(tmp_path):
    path = real_table("diabetes", tmp_path)  # a regression table: target 25.0 .. 346.0
    assert_usage_error(crossent("train", "--data", str(path)),
                       "the target column 'target' of " + str(path) + " looks continuous: 214 "
                       "distinct numbers written as decimals in 442 rows (151.0, 75.0, 141.0, "
                       "...); crossent trains classifiers")

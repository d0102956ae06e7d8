"""``crossent evaluate`` end to end (subprocess), on a model made by ``crossent train``."""

from __future__ import annotations

import re

import numpy as np
import pytest
from cli_support import assert_usage_error, crossent

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A model trained by the command line on digits, and the 360 test rows as CSV."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    folder = tmp_path_factory.mktemp("evaluate")
    model = folder / "model.npz"
    result = crossent("train", "--out", str(model))
    assert result.returncode == 0, result.stderr
    digits = load_digits()
    _, X_test, _, y_test = train_test_split(digits.data, digits.target, test_size=0.2,
                                            random_state=0)
    header = ",".join(digits.feature_names)
    test_csv = folder / "test.csv"
    np.savetxt(test_csv, np.column_stack([X_test, y_test]), delimiter=",", fmt="%g",
               header=header + ",digit", comments="")
    features_csv = folder / "features.csv"
    np.savetxt(features_csv, X_test, delimiter=",", fmt="%g", header=header, comments="")
    relabelled = folder / "relabelled.csv"  # the label column under another name, first
    np.savetxt(relabelled, np.column_stack([y_test, X_test]), delimiter=",", fmt="%g",
               header="label," + header, comments="")
    return dict(model=model, test=test_csv, features=features_csv, relabelled=relabelled,
                X=X_test, y=y_test, folder=folder)


def test_evaluate_prints_the_scores(files):
    from sklearn.metrics import confusion_matrix, log_loss

    from crossent.classifier import load_model

    result = crossent("evaluate", "--model", str(files["model"]), "--data", str(files["test"]))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    model, _ = load_model(files["model"])
    proba = model.predict_proba(files["X"])
    expected = log_loss(files["y"], proba)
    printed = float(re.search(r"^log loss\s+([0-9.]+)$", out, re.M).group(1))
    assert printed == pytest.approx(expected, abs=5e-5)
    correct = int(np.sum(proba.argmax(axis=1) == files["y"]))
    assert correct > 340  # the model (standardised digits) is good
    assert re.search(rf"^accuracy\s+{correct / 360:.4f} \({correct}/360\)$", out, re.M)
    # the confusion matrix as printed equals sklearn's
    block = out.split("columns: predicted class)\n")[1].strip().splitlines()[1:]
    printed_cm = np.array([[int(v) for v in line.split()[1:]] for line in block])
    np.testing.assert_array_equal(printed_cm,
                                  confusion_matrix(files["y"], proba.argmax(axis=1)))
    assert re.search(r"^0\s+1.0000\s+1.0000\s+27$", out, re.M)  # class 0: precision, recall


def test_label_column_found_by_default(files):
    """The model knows its label column ('digit'); another name is found as the default
    (first/last) column only when --target names it."""
    result = crossent("evaluate", "--model", str(files["model"]), "--data",
                      str(files["relabelled"]), "--target", "label")
    assert result.returncode == 0, result.stderr
    assert "360 rows, 10 classes" in result.stdout


def test_missing_model(files):
    missing = files["folder"] / "none.npz"
    assert_usage_error(crossent("evaluate", "--model", str(missing), "--data",
                                str(files["test"])), f"No such file: {missing}")


def test_not_a_model(files):
    fake = files["folder"] / "fake.npz"
    fake.write_text("not a model")
    assert_usage_error(crossent("evaluate", "--model", str(fake), "--data",
                                str(files["test"])), "is not a crossent model")


def test_missing_data(files):
    assert_usage_error(crossent("evaluate", "--model", str(files["model"]), "--data",
                                "nowhere.csv"), "No such file: nowhere.csv")


def test_feature_mismatch(files):
    path = files["folder"] / "narrow.csv"
    path.write_text("a,b,digit\n1,2,0\n3,4,1\n")
    assert_usage_error(crossent("evaluate", "--model", str(files["model"]), "--data",
                                str(path)),
                       "does not match the model: the model has 64 features, the file has 2 "
                       "feature columns and lacks 'pixel_0_0'")


def test_unlabelled_data(files):
    assert_usage_error(crossent("evaluate", "--model", str(files["model"]), "--data",
                                str(files["features"])),
                       "has no label column: the model's is 'digit'; name the file's with "
                       "--target")


def test_unknown_labels(files):
    text = files["test"].read_text().splitlines()
    text[1] = text[1].rsplit(",", 1)[0] + ",11"
    path = files["folder"] / "eleven.csv"
    path.write_text("\n".join(text) + "\n")
    assert_usage_error(crossent("evaluate", "--model", str(files["model"]), "--data",
                                str(path)), "has label 11, which is not a class of the model")


def test_nan_feature(files):
    text = files["test"].read_text().splitlines()
    text[2] = "nan," + text[2].split(",", 1)[1]
    path = files["folder"] / "nan.csv"
    path.write_text("\n".join(text) + "\n")
    assert_usage_error(crossent("evaluate", "--model", str(files["model"]), "--data",
                                str(path)), "feature column 'pixel_0_0' holds nan on line 3")


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_the_model_file_is_read_once_and_labels_mapped_once(files, monkeypatch, capsys,
                                                            command):
    """The arrays checked before scikit-learn is loaded are the ones the model is built from
    (``classifier.build_model``): one read of the file; the labels are mapped once."""
    import crossent.datasets as datasets
    from crossent.cli import _common as common
    from crossent.cli import main

    calls = {"read_npz": 0, "label_indices": 0}

    def counting(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(datasets, "read_npz", counting("read_npz", datasets.read_npz))
    monkeypatch.setattr(common, "label_indices",
                        counting("label_indices", common.label_indices))
    assert main([command, "--model", str(files["model"]), "--data", str(files["test"])]) == 0
    out = capsys.readouterr().out
    assert "(360 rows, 10 classes)" in out if command == "evaluate" else \
        len(out.splitlines()) == 361
    assert calls == {"read_npz": 1, "label_indices": int(command == "evaluate")}

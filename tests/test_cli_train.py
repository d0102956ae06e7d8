"""``crossent train`` end to end, run as a user runs it (a subprocess), bad input included."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys

import numpy as np
import pytest
from cli_support import assert_usage_error, crossent

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")


def number(label: str, text: str) -> float:
    match = re.search(rf"^\s*{label}\s+([0-9.]+)\s+([0-9.]+)", text, re.M)
    assert match, text
    return float(match.group(1)), float(match.group(2))


def png_size(path) -> tuple[int, int]:
    with open(path, "rb") as fh:
        data = fh.read(24)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory):
    """120 rows, 4 features, 3 text classes, the label first (so --target is needed)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 120)
    X = rng.standard_normal((120, 4)) + 2.0 * y[:, None]
    path = tmp_path_factory.mktemp("data") / "small.csv"
    names = np.array(["red", "green", "blue"])[y]
    lines = ["colour,a,b,c,d"] + [f"{n},{','.join(f'{v:.4f}' for v in row)}"
                                  for n, row in zip(names, X)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_default_trains_on_digits():
    """The README's main job (``make run``): digits, 80/20 split, seed 0, standardised
    features; at least the test accuracy of scikit-learn's
    ``make_pipeline(StandardScaler(), LogisticRegression())`` on the same split (0.9611)."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    result = crossent("train")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no progress bar when stderr is not a terminal
    out = result.stdout
    assert "digits: 1797 rows x 64 features, 10 classes; 1437 train / 360 test rows" in out
    assert "cross-entropy loss, lbfgs solver, alpha 0.001, standardised features" in out
    train_loss, train_acc = number("train", out)
    test_loss, test_acc = number("test", out)
    X_train, X_test, y_train, y_test = train_test_split(*load_digits(return_X_y=True),
                                                        test_size=0.2, random_state=0)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression()).fit(X_train, y_train)
    assert test_acc >= round(pipeline.score(X_test, y_test), 4) and train_acc >= test_acc
    assert 0 < train_loss < test_loss < 0.2
    assert re.search(r"^iterations\s+\d+ \(converged: largest gradient entry [0-9.e-]+ <= "
                     r"tol 0.0001\)$", out, re.M)
    assert re.search(r"^fit time\s+[0-9.]+ s$", out, re.M)


def test_model_and_plot_outputs_and_no_overwrite(tmp_path):
    model, plot = tmp_path / "model.npz", tmp_path / "curves.png"
    result = crossent("train", "--out", str(model), "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    assert f"model saved to {model}" in result.stdout
    with np.load(model, allow_pickle=False) as data:
        assert data["coef"].shape == (10, 64)
        assert data["feature_names"][0] == "pixel_0_0"
    assert png_size(plot) == (1000, 400)
    assert plot.stat().st_size < 150_000
    before = model.read_bytes(), plot.read_bytes()
    again = crossent("train", "--out", str(model))
    assert_usage_error(again, f"--out {model} exists; pass --force to overwrite it")
    again = crossent("train", "--plot", str(plot))
    assert_usage_error(again, f"--plot {plot} exists; pass --force to overwrite it")
    assert (model.read_bytes(), plot.read_bytes()) == before
    forced = crossent("train", "--out", str(model), "--epochs", "5", "--force")
    assert forced.returncode == 0, forced.stderr
    assert model.read_bytes() != before[0]
    assert sorted(os.listdir(tmp_path)) == ["curves.png", "model.npz"]  # no temporary left


def test_csv_with_options(small_csv, tmp_path):
    result = crossent("train", "--data", str(small_csv), "--target", "colour", "--loss", "mse",
                      "--solver", "sgd", "--epochs", "15", "--lr", "0.05", "--seed", "3",
                      "--test-size", "0.25", "--batch-size", "16", "--alpha", "0",
                      "--out", str(tmp_path / "m.npz"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "small.csv: 120 rows x 4 features, 3 classes; 90 train / 30 test rows (seed 3)" in out
    assert "squared error loss, sgd solver, alpha 0, standardised features" in out
    assert re.search(r"^learning rate\s+0.05$", out, re.M)
    assert re.search(r"^epochs\s+\d+ ", out, re.M)
    assert number("test", out)[1] > 0.8
    with np.load(tmp_path / "m.npz", allow_pickle=False) as data:
        assert sorted(data["classes"].tolist()) == ["blue", "green", "red"]


def test_no_test_set_and_gd(small_csv):
    result = crossent("train", "--data", str(small_csv), "--target", "colour",
                      "--test-size", "0", "--solver", "gd", "--epochs", "3")
    assert result.returncode == 0, result.stderr
    assert "no test set" in result.stdout
    assert not re.search(r"^\s*test\s", result.stdout, re.M)
    assert re.search(r"^iterations\s+3 \(not converged: largest gradient entry [0-9.e-]+ > tol "
                     r"0.0001 after --epochs 3 iterations; raise --epochs\)$", result.stdout,
                     re.M)


def test_console_script_is_installed():
    script = os.path.join(os.path.dirname(sys.executable), "crossent")
    result = subprocess.run([script, "train", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    for option in ("--data", "--target", "--drop", "--no-standardize", "--test-size", "--loss",
                   "--solver", "--epochs", "--lr", "--seed", "--out", "--plot", "--force"):
        assert option in result.stdout


# --------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit status 2, no traceback
# --------------------------------------------------------------------------------------------


def bad_csv(tmp_path, text, name="bad.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_missing_file(tmp_path):
    assert_usage_error(crossent("train", "--data", str(tmp_path / "nope.csv")),
                       f"No such file: {tmp_path / 'nope.csv'}")


def test_malformed_csv(tmp_path):
    path = bad_csv(tmp_path, "a,b,y\n1,2,0\n3,4\n")
    assert_usage_error(crossent("train", "--data", path),
                       "line 3 has 2 fields, the header has 3: malformed CSV")


def test_csv_without_header(tmp_path):
    path = bad_csv(tmp_path, "1,2,0\n3,4,1\n")
    assert_usage_error(crossent("train", "--data", path), "has no header line")


def test_unknown_target_column(small_csv):
    assert_usage_error(crossent("train", "--data", str(small_csv), "--target", "label"),
                       "target column 'label' is not in")


def test_text_feature_suggests_the_target(small_csv):
    result = crossent("train", "--data", str(small_csv))
    assert_usage_error(result, "feature column 'colour' must hold numbers, got '")
    assert "on line 2 (is it the target? use --target colour)" in result.stderr


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_features(tmp_path, value):
    path = bad_csv(tmp_path, f"a,b,y\n1,2,0\n3,{value},1\n5,6,0\n")
    assert_usage_error(crossent("train", "--data", path),
                       f"feature column 'b' holds {value} on line 3; features must be finite")


def test_single_class(tmp_path):
    path = bad_csv(tmp_path, "a,b,y\n1,2,7\n3,4,7\n5,6,7\n")
    assert_usage_error(crossent("train", "--data", path),
                       "holds only one class (7); a classifier needs at least 2")


def test_class_only_in_the_test_split(tmp_path):
    rows = "\n".join(f"{i},{i % 2}" for i in range(20))
    path = bad_csv(tmp_path, f"a,y\n{rows}\n99,2\n")
    result = crossent("train", "--data", path, "--test-size", "0.5", "--seed", "0")
    if result.returncode == 0:  # the lone class-2 row landed in the training half
        result = crossent("train", "--data", path, "--test-size", "0.5", "--seed", "1")
    assert_usage_error(result, "appears only in the test split")


@pytest.mark.parametrize("where", ["missing-dir", "parent-is-a-file", "is-a-dir"])
def test_unwritable_output(tmp_path, where):
    (tmp_path / "file").write_text("x")
    target = {"missing-dir": tmp_path / "no" / "such" / "m.npz",
              "parent-is-a-file": tmp_path / "file" / "m.npz",
              "is-a-dir": tmp_path}[where]
    result = crossent("train", "--out", str(target), "--epochs", "1")
    fragment = "is a directory" if where == "is-a-dir" else "does not exist"
    assert_usage_error(result, fragment)


@pytest.mark.parametrize(("args", "fragment"), [
    (["--test-size", "1.5"], "argument --test-size: expected a number in [0, 1), got '1.5'"),
    (["--epochs", "0"], "argument --epochs: expected a positive integer, got '0'"),
    (["--lr", "-1"], "argument --lr: expected a positive number or 'auto', got '-1'"),
    (["--loss", "hinge"], "argument --loss: invalid choice: 'hinge'"),
    (["--target", "y"], "--target needs --data"),
])
def test_bad_options(args, fragment):
    assert_usage_error(crossent("train", *args), fragment)


def test_diverging_learning_rate_is_a_usage_error():
    assert_usage_error(crossent("train", "--solver", "gd", "--lr", "1e200", "--epochs", "20"),
                       "gd diverged (the objective is no longer finite) with a learning rate "
                       "of 1e+200; lower --lr", after_summary=True)


def test_progress_bar_on_a_terminal(monkeypatch, capsys):
    """Iterative solvers show a tqdm bar on stderr when it is a terminal (and none otherwise,
    as every subprocess test above checks)."""
    import io

    from crossent.cli import main

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["train", "--solver", "sgd", "--epochs", "3"]) == 0
    assert "train (sgd):" in terminal.getvalue() and "/3 [" in terminal.getvalue()
    assert "1437 train / 360 test rows" in capsys.readouterr().out

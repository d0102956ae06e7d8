"""``crossent predict`` end to end (subprocess): probabilities and labels per row as CSV."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from cli_support import assert_usage_error, crossent

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small text-labelled model trained by the command line, and data to predict."""
    rng = np.random.default_rng(1)
    folder = tmp_path_factory.mktemp("predict")
    y = rng.integers(0, 3, 90)
    X = rng.standard_normal((90, 3)) + 1.5 * y[:, None]
    names = np.array(["cat", "dog", "emu"])[y]
    train = folder / "train.csv"
    train.write_text("x1,x2,x3,animal\n" + "".join(
        f"{a:.5f},{b:.5f},{c:.5f},{n}\n" for (a, b, c), n in zip(X, names)))
    model = folder / "model.npz"
    result = crossent("train", "--data", str(train), "--out", str(model))
    assert result.returncode == 0, result.stderr
    new = folder / "new.csv"  # columns in another order, no labels
    new.write_text("x3,x1,x2\n" + "".join(f"{c},{a},{b}\n" for a, b, c in X[:10]))
    return dict(model=model, train=train, new=new, X=X, folder=folder)


def read(text: str):
    rows = list(csv.reader(io.StringIO(text)))
    return rows[0], rows[1:]


def test_predict_to_stdout_matches_the_model(files):
    from crossent.classifier import load_model

    result = crossent("predict", "--model", str(files["model"]), "--data", str(files["new"]))
    assert result.returncode == 0, result.stderr
    header, rows = read(result.stdout)
    assert header == ["prob_cat", "prob_dog", "prob_emu", "predicted"]
    assert len(rows) == 10
    model, _ = load_model(files["model"])
    X = files["X"][:10]  # written in full (repr) precision
    proba = np.array([[float(v) for v in row[:3]] for row in rows])
    np.testing.assert_array_equal(proba, model.predict_proba(X))  # exact: repr round-trips
    assert [row[3] for row in rows] == model.predict(X).tolist()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_predict_to_file_ignores_the_label_column(files):
    out = files["folder"] / "preds.csv"
    result = crossent("predict", "--model", str(files["model"]), "--data", str(files["train"]),
                      "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert f"90 rows of {files['train']} -> {out}" in result.stderr
    header, rows = read(out.read_text())
    assert len(rows) == 90 and header[-1] == "predicted"
    before = out.read_bytes()
    again = crossent("predict", "--model", str(files["model"]), "--data", str(files["new"]),
                     "--out", str(out))
    assert_usage_error(again, f"--out {out} exists; pass --force to overwrite it")
    assert out.read_bytes() == before
    forced = crossent("predict", "--model", str(files["model"]), "--data", str(files["new"]),
                      "--out", str(out), "--force")
    assert forced.returncode == 0, forced.stderr
    assert len(read(out.read_text())[1]) == 10


def test_npy_data_by_position(files):
    path = files["folder"] / "rows.npy"
    np.save(path, files["X"][:4])
    result = crossent("predict", "--model", str(files["model"]), "--data", str(path))
    assert result.returncode == 0, result.stderr
    assert len(read(result.stdout)[1]) == 4


def test_feature_mismatch(files):
    path = files["folder"] / "wide.npy"
    np.save(path, np.zeros((2, 5)))
    assert_usage_error(crossent("predict", "--model", str(files["model"]), "--data", str(path)),
                       "the model has 3 features, the file has 5 feature columns")


def test_nan_feature(files):
    path = files["folder"] / "nan.csv"
    path.write_text("x1,x2,x3\n1,2,3\n1,nan,3\n")
    assert_usage_error(crossent("predict", "--model", str(files["model"]), "--data", str(path)),
                       "feature column 'x2' holds nan on line 3")


def test_unwritable_output(files):
    out = files["folder"] / "missing" / "p.csv"
    assert_usage_error(crossent("predict", "--model", str(files["model"]), "--data",
                                str(files["new"]), "--out", str(out)), "does not exist")


def test_malformed_csv(files):
    path = files["folder"] / "ragged.csv"
    path.write_text("x1,x2,x3\n1,2\n")
    assert_usage_error(crossent("predict", "--model", str(files["model"]), "--data", str(path)),
                       "line 2 has 2 fields, the header has 3: malformed CSV")


def test_id_column_is_copied_for_score(files):
    """``--id COL`` copies that column, as written (leading zeros kept), before the
    probabilities; a column named as ids are (``PassengerId``) is copied without asking."""
    rows = "".join(f"{i:04d},{a},{b},{c}\n" for i, (a, b, c) in enumerate(files["X"][:5]))
    keyed = files["folder"] / "keyed.csv"
    keyed.write_text("key,x1,x2,x3\n" + rows)
    result = crossent("predict", "--model", str(files["model"]), "--data", str(keyed),
                      "--id", "key")
    assert result.returncode == 0, result.stderr
    header, body = read(result.stdout)
    assert header == ["key", "prob_cat", "prob_dog", "prob_emu", "predicted"]
    assert [r[0] for r in body] == ["0000", "0001", "0002", "0003", "0004"]
    named = files["folder"] / "named.csv"
    named.write_text("PassengerId,x1,x2,x3\n" + rows)
    result = crossent("predict", "--model", str(files["model"]), "--data", str(named))
    assert result.returncode == 0, result.stderr
    assert read(result.stdout)[0][0] == "PassengerId"
    assert_usage_error(crossent("predict", "--model", str(files["model"]), "--data",
                                str(keyed), "--id", "x1"),
                       "--id column 'x1' is one of the model's features")


def test_a_feature_named_like_an_id_is_a_feature_not_the_id(tmp_path):
    """A model whose feature is called ``sensor_id`` (saved from Python) predicts: the id
    column is guessed only among the columns that are not the model's features, and the
    feature error is for an explicit ``--id`` alone."""
    from crossent.classifier import SoftmaxRegression, save_model

    rng = np.random.default_rng(3)
    X = np.column_stack([rng.integers(0, 5, 40), rng.standard_normal(40)])
    y = np.where(X[:, 1] > 0, "hot", "cold")
    model_path = tmp_path / "sensor.npz"
    save_model(SoftmaxRegression().fit(X, y), model_path,
               feature_names=["sensor_id", "reading"], metadata={"target": "state"})
    data = tmp_path / "readings.csv"
    data.write_text("sensor_id,reading\n3,0.5\n1,-2.0\n")
    result = crossent("predict", "--model", str(model_path), "--data", str(data))
    assert result.returncode == 0, result.stderr
    header, rows = read(result.stdout)
    assert header == ["prob_cold", "prob_hot", "predicted"]
    assert [r[-1] for r in rows] == ["hot", "cold"]
    keyed = tmp_path / "keyed.csv"
    keyed.write_text("id,sensor_id,reading\nA7,3,0.5\nB2,1,-2.0\n")
    result = crossent("predict", "--model", str(model_path), "--data", str(keyed))
    assert result.returncode == 0, result.stderr
    header, rows = read(result.stdout)
    assert header[0] == "id" and [r[0] for r in rows] == ["A7", "B2"]
    assert_usage_error(crossent("predict", "--model", str(model_path), "--data", str(data),
                                "--id", "sensor_id"),
                       "--id column 'sensor_id' is one of the model's features")
    assert_usage_error(crossent("predict", "--model", str(model_path), "--data", str(data),
                                "--id", "key"),
                       f"column 'key' is not in {data} (columns: 'sensor_id', 'reading')")


def test_the_id_column_training_left_out_is_copied(tmp_path):
    """A column that training left out because it counts the rows (not named as ids are) is
    the id column of the predictions: the model file lists the identifiers."""
    rng = np.random.default_rng(4)
    X = rng.standard_normal((30, 2))
    train = tmp_path / "train.csv"
    train.write_text("row,a,b,y\n" + "".join(f"{i},{a:.4f},{b:.4f},{int(a > 0)}\n"
                                               for i, (a, b) in enumerate(X)))
    model = tmp_path / "m.npz"
    result = crossent("train", "--data", str(train), "--out", str(model))
    assert result.returncode == 0, result.stderr
    assert "columns left out: row (identifies rows)" in result.stdout
    new = tmp_path / "new.csv"
    new.write_text("b,row,a\n0.1,17,1.5\n0.2,18,-1.5\n")
    result = crossent("predict", "--model", str(model), "--data", str(new))
    assert result.returncode == 0, result.stderr
    header, rows = read(result.stdout)
    assert header == ["row", "prob_0", "prob_1", "predicted"]
    assert [(r[0], r[-1]) for r in rows] == [("17", "1"), ("18", "0")]


def test_the_output_is_written_in_blocks_of_rows(files, monkeypatch, capsys):
    """The CSV is streamed a block of rows at a time: blocks that split the rows (and the ids)
    give the same bytes, on standard output and in --out."""
    from crossent.cli import main, predict

    keyed = files["folder"] / "streamed.csv"
    keyed.write_text("key,x1,x2,x3\n" + "".join(
        f"{i:04d},{a},{b},{c}\n" for i, (a, b, c) in enumerate(files["X"][:7])))
    args = ["predict", "--model", str(files["model"]), "--data", str(keyed), "--id", "key"]
    assert main(args) == 0
    whole = capsys.readouterr().out
    monkeypatch.setattr(predict, "_ROWS_PER_WRITE", 3)
    assert main(args) == 0
    assert capsys.readouterr().out == whole
    out = files["folder"] / "streamed-preds.csv"
    assert main([*args, "--out", str(out)]) == 0
    assert out.read_text() == whole
    header, rows = read(whole)
    assert header[0] == "key" and [r[0] for r in rows] == [f"{i:04d}" for i in range(7)]

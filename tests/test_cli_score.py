"""``crossent score`` end to end (subprocess): a submission file against the answers."""

from __future__ import annotations

import re

import numpy as np
import pytest
from cli_support import assert_usage_error, crossent

sk = pytest.importorskip("sklearn.metrics")


def value(label: str, text: str) -> float:
    match = re.search(rf"^{label}\s+([0-9.]+)", text, re.M)
    assert match, text
    return float(match.group(1))


@pytest.fixture
def submission(tmp_path):
    """crossent-predict style predictions (prob_<class>) and a labels CSV, with zeros."""
    rng = np.random.default_rng(7)
    proba = rng.dirichlet(np.ones(4) * 0.7, size=50)
    proba[0] = [0.0, 1.0, 0.0, 0.0]  # a confident mistake: clipped, not infinite
    labels = rng.integers(0, 4, 50)
    labels[0] = 2
    preds = tmp_path / "preds.csv"
    preds.write_text("prob_0,prob_1,prob_2,prob_3,predicted\n" + "".join(
        ",".join(repr(float(v)) for v in row) + f",{row.argmax()}\n" for row in proba))
    answers = tmp_path / "answers.csv"
    answers.write_text("row,label\n" + "".join(f"{i},{y}\n" for i, y in enumerate(labels)))
    return preds, answers, proba, labels


def test_scores_match_sklearn(submission):
    preds, answers, proba, labels = submission
    result = crossent("score", str(preds), str(answers))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "(50 rows matched by position, 4 classes)" in out
    assert value("log loss", out) == pytest.approx(
        sk.log_loss(labels, proba, labels=range(4)), abs=5e-7)
    assert "(1 rows clipped at p = eps)" in out
    assert value("accuracy", out) == pytest.approx(sk.accuracy_score(labels,
                                                                     proba.argmax(1)), abs=5e-7)
    assert value("Brier score", out) == pytest.approx(
        sk.brier_score_loss(labels, proba, labels=range(4)), abs=5e-7)
    assert 0 <= value("expected calibration error", out) <= 1


def test_help_states_the_clipping_policy():
    result = crossent("score", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "clipped to [eps, 1 - eps] with eps = 2.22e-16" in text
    assert "NOT renormalised" in text and "sklearn.metrics.log_loss" in text


def test_kaggle_style_ids_and_class_headers(tmp_path):
    """Header = class names plus an id column; rows matched by --id, in any order."""
    proba = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]])
    labels = ["cat", "emu", "dog"]
    preds = tmp_path / "sub.csv"
    preds.write_text("id,cat,dog,emu\nb,0.1,0.1,0.8\na,0.7,0.2,0.1\nc,0.3,0.4,0.3\n")
    answers = tmp_path / "solution.csv"
    answers.write_text("id,animal\na,cat\nb,emu\nc,dog\n")
    result = crossent("score", str(preds), str(answers), "--id", "id")
    assert result.returncode == 0, result.stderr
    expected = sk.log_loss(labels, proba, labels=["cat", "dog", "emu"])
    assert value("log loss", result.stdout) == pytest.approx(expected, abs=5e-7)
    assert value("accuracy", result.stdout) == 1.0


def test_npy_files_and_binary_single_column(tmp_path):
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    labels = np.array([0, 1, 1])
    np.save(tmp_path / "p.npy", proba)
    np.save(tmp_path / "y.npy", labels)
    result = crossent("score", str(tmp_path / "p.npy"), str(tmp_path / "y.npy"))
    assert result.returncode == 0, result.stderr
    assert value("log loss", result.stdout) == pytest.approx(sk.log_loss(labels, proba),
                                                             abs=5e-7)
    single = tmp_path / "p1.csv"
    single.write_text("target\n0.1\n0.8\n0.4\n")
    result = crossent("score", str(single), str(tmp_path / "y.npy"))
    assert result.returncode == 0, result.stderr
    assert value("log loss", result.stdout) == pytest.approx(sk.log_loss(labels, proba[:, 1]),
                                                             abs=5e-7)


def test_rows_not_summing_to_one_warn_but_score(tmp_path):
    preds = tmp_path / "p.csv"
    preds.write_text("a,b\n0.5,0.1\n0.2,0.8\n")
    answers = tmp_path / "y.csv"
    answers.write_text("y\na\nb\n")
    result = crossent("score", str(preds), str(answers))
    assert result.returncode == 0
    assert "warning: the probabilities in some rows do not sum to 1" in result.stderr
    assert value("log loss", result.stdout) == pytest.approx(-(np.log(0.5) + np.log(0.8)) / 2,
                                                             abs=5e-7)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_missing_file(submission, tmp_path):
    preds, _, _, _ = submission
    assert_usage_error(crossent("score", str(preds), str(tmp_path / "none.csv")),
                       "No such file")


def test_row_count_mismatch(submission, tmp_path):
    preds, _, _, _ = submission
    short = tmp_path / "short.csv"
    short.write_text("label\n0\n1\n")
    assert_usage_error(crossent("score", str(preds), str(short)),
                       "has 50 rows but")


def test_unknown_label(submission, tmp_path):
    preds, _, _, _ = submission
    bad = tmp_path / "bad.csv"
    bad.write_text("label\n" + "7\n" * 50)
    assert_usage_error(crossent("score", str(preds), str(bad)),
                       "has label '7', which has no probability column")


def test_probability_above_one(tmp_path):
    preds = tmp_path / "p.csv"
    preds.write_text("a,b\n1.5,0.1\n")
    answers = tmp_path / "y.csv"
    answers.write_text("y\na\n")
    assert_usage_error(crossent("score", str(preds), str(answers)),
                       "must hold probabilities in [0, 1], got 1.5 (above 1)")


def test_malformed_predictions(tmp_path):
    preds = tmp_path / "p.csv"
    preds.write_text("a,b\n0.5\n")
    answers = tmp_path / "y.csv"
    answers.write_text("y\na\n")
    assert_usage_error(crossent("score", str(preds), str(answers)), "malformed CSV")


def test_text_in_probabilities(tmp_path):
    preds = tmp_path / "p.csv"
    preds.write_text("prob_a,prob_b\n0.5,half\n")
    answers = tmp_path / "y.csv"
    answers.write_text("y\na\n")
    assert_usage_error(crossent("score", str(preds), str(answers)),
                       "column 'prob_b' must hold probabilities, got text")


def test_missing_id(tmp_path):
    preds = tmp_path / "p.csv"
    preds.write_text("id,a,b\nx,0.5,0.5\n")
    answers = tmp_path / "y.csv"
    answers.write_text("id,y\nz,a\n")
    assert_usage_error(crossent("score", str(preds), str(answers), "--id", "id"),
                       "has no prediction for id 'z'")


@pytest.mark.parametrize(("predictions", "labels", "column", "expected"), [
    # both files have an 'id' column, in different orders
    ("id,prob_0,prob_1\n7,0.9,0.1\n8,0.2,0.8\n9,0.4,0.6\n", "id,y\n9,1\n7,0\n8,1\n", "id",
     -(np.log(0.9) + np.log(0.8) + np.log(0.6)) / 3),
    # a submission and a solution keyed by PassengerId; a single probability column is
    # P(class 1)
    ("PassengerId,Survived\n892,0.1\n893,0.7\n894,0.4\n",
     "PassengerId,Survived\n894,1\n892,0\n893,1\n", "PassengerId",
     -(np.log(0.9) + np.log(0.7) + np.log(0.4)) / 3),
])
def test_files_with_ids_match_by_id_without_being_told(tmp_path, predictions, labels, column,
                                                        expected):
    """Both files have the id column (by its name), rows in different orders: matched by
    it without --id."""
    preds = tmp_path / "preds.csv"
    preds.write_text(predictions)
    answers = tmp_path / "labels.csv"
    answers.write_text(labels)
    result = crossent("score", str(preds), str(answers))
    assert result.returncode == 0, result.stderr
    assert f"(3 rows matched by {column}, 2 classes)" in result.stdout
    assert value("log loss", result.stdout) == pytest.approx(expected, abs=5e-7)


def test_an_id_column_in_one_file_only_is_not_matched_by_position_silently(tmp_path):
    preds = tmp_path / "preds.csv"
    preds.write_text("prob_0,prob_1\n0.9,0.1\n0.2,0.8\n")
    labels = tmp_path / "labels.csv"
    labels.write_text("id,y\nb,1\na,0\n")
    assert_usage_error(crossent("score", str(preds), str(labels)),
                       f"{labels} has an id column ('id') but {preds} does not, so the rows "
                       "cannot be matched by id, and matching them by position could pair them "
                       "wrongly; give both files the ids (crossent predict --id copies them) "
                       "or pass --by-position")
    result = crossent("score", str(preds), str(labels), "--by-position")
    assert result.returncode == 0, result.stderr
    assert "(2 rows matched by position, 2 classes)" in result.stdout


def test_repeated_ids_are_refused(tmp_path):
    preds = tmp_path / "preds.csv"
    preds.write_text("id,prob_0,prob_1\n1,0.9,0.1\n1,0.2,0.8\n")
    labels = tmp_path / "labels.csv"
    labels.write_text("id,y\n1,1\n2,0\n")
    assert_usage_error(crossent("score", str(preds), str(labels)),
                       "id column 'id' of " + str(preds) + " repeats the value '1', so rows "
                       "cannot be matched by it")


def test_an_id_column_missing_from_a_file_is_named(tmp_path):
    preds = tmp_path / "preds.csv"
    preds.write_text("key,prob_0,prob_1\na,0.9,0.1\n")
    labels = tmp_path / "labels.csv"
    labels.write_text("y\n0\n")
    assert_usage_error(crossent("score", str(preds), str(labels), "--id", "key"),
                       f"column 'key' is not in {labels} (columns: 'y')")


def test_npy_files_are_read_once_and_checked(tmp_path, monkeypatch, capsys):
    """A 2-D labels array is read once (its --target column is the labels); predictions
    of text are refused naming the file and what was expected."""
    import crossent.datasets as datasets
    from crossent.cli import main

    np.save(tmp_path / "p.npy", np.array([[0.9, 0.1], [0.2, 0.8]]))
    np.save(tmp_path / "table.npy", np.array([[5.0, 1.0], [6.0, 0.0]]))  # labels: column 1
    reads = []
    monkeypatch.setattr(datasets, "load_npy",
                        lambda path, load=datasets.load_npy: reads.append(path) or load(path))
    assert main(["score", str(tmp_path / "p.npy"), str(tmp_path / "table.npy"),
                 "--target", "1"]) == 0
    assert value("log loss", capsys.readouterr().out) == pytest.approx(
        -(np.log(0.1) + np.log(0.2)) / 2, abs=5e-7)
    assert reads == [str(tmp_path / "p.npy"), str(tmp_path / "table.npy")]
    np.save(tmp_path / "text.npy", np.array([["0.9", "0.1"]]))
    np.save(tmp_path / "y.npy", np.array([0]))
    assert_usage_error(crossent("score", str(tmp_path / "text.npy"), str(tmp_path / "y.npy")),
                       f"{tmp_path / 'text.npy'}: expected predicted probabilities (numbers), "
                       "got <U3")


def test_labels_map_to_columns_in_the_file_order(tmp_path):
    """Probability columns need not be sorted: each label finds its own column."""
    preds = tmp_path / "p.csv"
    preds.write_text("prob_emu,prob_cat,prob_dog\n0.7,0.2,0.1\n0.1,0.1,0.8\n0.3,0.4,0.3\n")
    answers = tmp_path / "y.csv"
    answers.write_text("y\nemu\ndog\ncat\n")
    result = crossent("score", str(preds), str(answers))
    assert result.returncode == 0, result.stderr
    assert value("log loss", result.stdout) == pytest.approx(
        -(np.log(0.7) + np.log(0.8) + np.log(0.4)) / 3, abs=5e-7)
    answers.write_text("y\nemu\nyak\ncat\n")
    assert_usage_error(crossent("score", str(preds), str(answers)),
                       "has label 'yak', which has no probability column")


def test_a_single_column_names_the_label_that_is_not_binary(tmp_path):
    preds = tmp_path / "p.csv"
    preds.write_text("p\n0.2\n0.9\n")
    answers = tmp_path / "y.csv"
    answers.write_text("y\n1\n2\n")
    assert_usage_error(crossent("score", str(preds), str(answers)),
                       "so the labels must be 0 or 1; got '2'")

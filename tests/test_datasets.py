"""crossent.datasets: the bundled digits, CSV/NPY/NPZ loading, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from crossent.datasets import (
    DataError,
    check_classes,
    load_digits,
    load_file,
    read_table,
    train_test_split,
)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------------
# The bundled digits (reference/semantics.md section 4)
# --------------------------------------------------------------------------------------------


def test_digits_facts():
    pytest.importorskip("sklearn")
    d = load_digits()
    assert d.X.shape == (1797, 64) and d.X.dtype == np.float64
    assert d.X.min() == 0 and d.X.max() == 16
    np.testing.assert_array_equal(np.bincount(d.y),
                                  [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
    assert d.feature_names[:2] == ("pixel_0_0", "pixel_0_1") and d.target_name == "digit"
    train, test = train_test_split(d, 0.2, 0)
    assert (train.n_samples, test.n_samples) == (1437, 360)  # scikit-learn's split
    assert train_test_split(d, 0.0, 0) == (d, None)


# --------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------


def test_csv_with_text_labels_and_quoted_fields(tmp_path):
    path = write(tmp_path, "iris.csv", 'length,width,"kind"\n1.5,0.2,setosa\n'
                 '4.7,1.4,"versi, color"\n\n6.0,2.5,virginica\n')
    d = load_file(path)
    np.testing.assert_array_equal(d.X, [[1.5, 0.2], [4.7, 1.4], [6.0, 2.5]])
    assert d.y.tolist() == ["setosa", "versi, color", "virginica"]
    assert d.feature_names == ("length", "width") and d.target_name == "kind"


def test_csv_target_column_by_name_and_integer_labels(tmp_path):
    path = write(tmp_path, "d.csv", "label,a,b\n1,0.5,2\n0,1.5,3\n1,2.5,4\n")
    d = load_file(path, "label")
    assert d.y.dtype == np.int64 and d.y.tolist() == [1, 0, 1]
    assert d.feature_names == ("a", "b")
    # the feature columns a model knows are picked by name, in the model's order
    d = load_file(path, "label", feature_names=("b", "a"))
    np.testing.assert_array_equal(d.X[:, 0], [2, 3, 4])
    # without labels (prediction)
    d = load_file(path, None, feature_names=("a", "b"), require_target=False)
    assert d.y is None and d.X.shape == (3, 2)


def test_csv_byte_order_mark_and_spaces(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffx, y\n 1 , a\n2,b\n".encode())
    d = load_file(path)
    assert d.feature_names == ("x",) and d.y.tolist() == ["a", "b"]


@pytest.mark.parametrize(("text", "message"), [
    ("", r"is empty: expected a header line"),
    ("a,b,c\n", r"has a header but no rows of data"),
    ("1,2,3\n4,5,6\n", r"has no header line: its first line holds numbers \(1,2,3\)"),
    ("a,b,c\n1,2,3\n4,5\n", r"line 3 has 2 fields, the header has 3: malformed CSV"),
    ('a,b,c\n1,"2,3\n', r"malformed CSV"),
    ("a,,c\n1,2,3\n", r"empty column name \(column 2\)"),
    ("a,a,c\n1,2,3\n", r"names column 'a' more than once"),
    ("a,b,c\n1,nan,0\n", r"feature column 'b' holds nan on line 2; features must be finite"),
    ("a,b,c\n1,2,0\n1,inf,0\n", r"feature column 'b' holds inf on line 3"),
    ("a,b,c\n1,,0\n", r"feature column 'b' must hold numbers, got an empty cell on line 2"),
    ("a,b,c\n1,x,0\n", r"feature column 'b' must hold numbers, got 'x' on line 2 \(is it the "
                       r"target\? use --target b\)"),
    ("a,b,c\n1,2,0.5\n", r"target column 'c' must hold class labels .* got 0.5 on line 2"),
    ("a,b,c\n1,2,\n", r"target column 'c' has an empty label on line 2"),
])
def test_bad_csv_is_one_clear_line(tmp_path, text, message):
    path = write(tmp_path, "bad.csv", text)
    with pytest.raises(DataError, match=message) as info:
        load_file(path)
    assert "\n" not in str(info.value)


def test_unknown_target_column_lists_the_columns(tmp_path):
    path = write(tmp_path, "d.csv", "a,b,c\n1,2,3\n")
    with pytest.raises(DataError, match=r"target column 'label' is not in .*d.csv \(expected a "
                                        r"column name; columns: 'a', 'b', 'c'\)"):
        load_file(path, "label")


def test_not_utf8_and_missing_and_unknown_type(tmp_path):
    binary = tmp_path / "x.csv"
    binary.write_bytes(b"a,b\n\xff\xfe,1\n")
    with pytest.raises(DataError, match="is not UTF-8 text"):
        load_file(binary)
    with pytest.raises(FileNotFoundError):
        load_file(tmp_path / "missing.csv")
    with pytest.raises(DataError, match=r"unknown file type '.txt'; expected .csv"):
        load_file(write(tmp_path, "d.txt", "a\n1\n"))
    with pytest.raises(DataError, match="is a directory"):
        load_file(tmp_path)


def test_one_class_is_caught(tmp_path):
    d = load_file(write(tmp_path, "d.csv", "a,y\n1,5\n2,5\n"))
    with pytest.raises(DataError, match=r"target column 'y' .* holds only one class \(5\)"):
        check_classes(d)


def test_model_feature_mismatch(tmp_path):
    path = write(tmp_path, "d.csv", "a,b,y\n1,2,0\n3,4,1\n")
    with pytest.raises(DataError, match=r"does not match the model: the model has 3 features, "
                                        r"the file has 2 feature columns and lacks 'c'"):
        load_file(path, "y", feature_names=("a", "b", "c"))


# --------------------------------------------------------------------------------------------
# NPY and NPZ
# --------------------------------------------------------------------------------------------


def test_npy_last_column_or_index_is_the_target(tmp_path):
    arr = np.array([[0.1, 0.2, 1], [0.3, 0.4, 0], [0.5, 0.6, 1]])
    path = tmp_path / "d.npy"
    np.save(path, arr)
    d = load_file(path)
    np.testing.assert_array_equal(d.X, arr[:, :2])
    assert d.y.tolist() == [1, 0, 1] and d.target_name == "column 2"
    d = load_file(path, "-1")
    assert d.target_name == "column 2"
    with pytest.raises(DataError, match="target column 'column 0' must hold class labels"):
        load_file(path, "0")
    with pytest.raises(DataError, match=r"--target 7: .* has columns 0..2"):
        load_file(path, "7")


def test_npz_x_and_y(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, X=np.arange(6.0).reshape(3, 2), y=np.array(["a", "b", "a"]),
             group=np.array([1, 2, 3]))
    d = load_file(path)
    assert d.y.tolist() == ["a", "b", "a"] and d.feature_names == ("x0", "x1")
    np.testing.assert_array_equal(d.X, [[0, 1], [2, 3], [4, 5]])
    d = load_file(path, "group", feature_names=("x0", "x1"))
    assert d.y.tolist() == [1, 2, 3]


def test_pickled_arrays_are_refused_not_loaded(tmp_path):
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([[object(), 1]], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"holds Python objects \(pickled\)"):
        load_file(obj)
    npz = tmp_path / "obj.npz"
    np.savez(npz, X=np.zeros((2, 2)), y=np.array([None, 1], dtype=object))
    with pytest.raises(DataError, match=r"holds Python objects \(pickled\)"):
        load_file(npz)


@pytest.mark.parametrize(("arrays", "message"), [
    (dict(features=np.zeros((2, 2))), r"expected an array named 'X' \(the features\)"),
    (dict(X=np.zeros(3)), r"'X' must be a non-empty 2-D numeric array"),
])
def test_bad_npz(tmp_path, arrays, message):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message):
        load_file(path)


def test_bad_npy(tmp_path):
    path = tmp_path / "d.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(DataError, match=r"expected a 2-D array \(rows x columns\), got shape"):
        load_file(path)
    path.write_text("not numpy")
    with pytest.raises(DataError, match="is not a NumPy file"):
        load_file(path)


def test_read_table_keeps_line_numbers(tmp_path):
    table = read_table(write(tmp_path, "d.csv", 'a,b\n\n1,x\n2,"y\nz"\n3,w\n'))
    assert [table.where(i) for i in range(3)] == ["line 3", "line 5", "line 6"]
    assert table.n_rows == 3


def test_split_that_leaves_no_training_rows(tmp_path):
    d = load_file(write(tmp_path, "d.csv", "a,y\n1.5,0\n2.5,1\n3.5,0\n"))
    with pytest.raises(DataError, match=r"--test-size 0.9 leaves 0 training and 3 test rows"):
        train_test_split(d, 0.9, 0)


# --------------------------------------------------------------------------------------------
# The pandas reader: kinds, chunks, memory
# --------------------------------------------------------------------------------------------


def test_columns_keep_how_they_were_written(tmp_path):
    """Whole numbers, decimals and text; labels that look like booleans or 'NA' stay text."""
    path = write(tmp_path, "d.csv", "i,f,t,b,na\n1,1.5,x,True,NA\n2,2,y,false,b\n")
    table = read_table(path)
    assert table.kinds == {"i": "int", "f": "float", "t": "text", "b": "text", "na": "text"}
    assert table.columns["b"].tolist() == ["True", "false"]
    assert table.columns["na"].tolist() == ["NA", "b"]
    np.testing.assert_array_equal(table.columns["f"], [1.5, 2.0])


def test_a_column_that_turns_to_text_in_a_later_chunk(tmp_path, monkeypatch):
    """pandas types each chunk alone: a label column of numbers that turns to text far into
    the file is read again as text, exactly as written."""
    import crossent.datasets as ds

    monkeypatch.setattr(ds, "_CSV_CHUNK_BYTES", 64)  # chunks of a few rows
    rows = [f"{i}.5,{i % 3}" for i in range(3000)] + ["1.0,cat"]
    d = load_file(write(tmp_path, "d.csv", "x,label\n" + "\n".join(rows) + "\n"))
    assert d.y.dtype.kind == "U" and d.y[:4].tolist() == ["0", "1", "2", "0"]
    assert d.y[-1] == "cat" and d.X.shape == (3001, 1)


def test_a_short_line_is_malformed_even_in_an_unused_column(tmp_path):
    path = write(tmp_path, "d.csv", "a,note,y\n1,x,0\n2\n")
    with pytest.raises(DataError, match="line 3 has 1 fields, the header has 3: malformed"):
        read_table(path)


def test_numbers_are_parsed_exactly(tmp_path, rng):
    """Every float64 written in Python's shortest round-trip form is read back bit for bit."""
    values = rng.standard_normal(2000) * 10.0 ** rng.integers(-8, 8, 2000)
    path = write(tmp_path, "d.csv", "x,y\n" + "".join(f"{v!r},{i % 2}\n"
                                                    for i, v in enumerate(values.tolist())))
    np.testing.assert_array_equal(load_file(path).X[:, 0], values)


def test_the_feature_matrix_is_the_parsed_block_itself(tmp_path):
    """No second copy: the features are a view of the block the parser filled (moved into
    place when the target is not last)."""
    path = write(tmp_path, "d.csv", "a,y,b,c\n1,0,2,3\n4,1,5,6\n")
    d = load_file(path, "y")
    assert d.feature_names == ("a", "b", "c") and d.y.tolist() == [0, 1]
    np.testing.assert_array_equal(d.X, [[1, 2, 3], [4, 5, 6]])
    assert d.X.base is not None and d.X.flags.f_contiguous


def test_progress_reports_the_bytes_read(tmp_path):
    path = write(tmp_path, "d.csv", "a,y\n" + "".join(f"{i},{i % 2}\n" for i in range(5000)))
    seen = []
    read_table(path, progress=lambda done, total: seen.append((done, total)))
    size = path.stat().st_size
    assert seen and seen[-1] == (size, size) and all(t == size for _, t in seen)


# --------------------------------------------------------------------------------------------
# Identifiers, dropped columns, continuous targets
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "values"), [
    ("id", "7,3,9"), ("ID", "7,3,9"), ("customer_id", "7,3,9"), ("PassengerId", "7,3,9"),
    ("userID", "7,3,9"), ("Unnamed: 0", "7,3,9"), ("index", "7,3,9"),
    ("row", "0,1,2"), ("n", "1,2,3"),  # counts the rows
])
def test_identifier_columns_are_left_out(tmp_path, name, values):
    cells = values.split(",")
    path = write(tmp_path, "d.csv", f"{name},x,y\n" + "".join(
        f"{c},{v},{i % 2}\n" for i, (c, v) in enumerate(zip(cells, ["0.5", "1.5", "2.5"]))))
    d = load_file(path)
    assert d.identifiers == (name,) and d.feature_names == ("x",)


@pytest.mark.parametrize("name", ["paid", "valid", "ACID", "width", "fluid_level"])
def test_names_that_only_end_in_id_are_features(tmp_path, name):
    path = write(tmp_path, "d.csv", f"{name},y\n3,0\n1,1\n2,0\n")
    assert load_file(path).feature_names == (name,)


def test_the_index_pandas_writes_is_an_identifier(tmp_path):
    path = write(tmp_path, "d.csv", ",x,y\n0,0.5,0\n1,1.5,1\n2,2.5,0\n")
    d = load_file(path)
    assert d.identifiers == ("Unnamed: 0",) and d.feature_names == ("x",)


def test_id_columns_by_name_never_a_probability():
    """One rule for the id columns of a header (predict and score use it; training adds the
    row counters): ``prob_<class>`` columns are probabilities, even of a class ``id``."""
    from crossent.datasets import id_columns

    header = ["prob_id", "prob_user_id", "x", "order_id", "PassengerId", "paid", "y"]
    assert id_columns(header) == ["order_id", "PassengerId"]


def test_text_columns_must_exist(tmp_path):
    """``read_table(text=...)`` checks its names as ``exclude`` does, for every kind of file
    (it named nothing when the column was missing)."""
    path = write(tmp_path, "d.csv", "key,x,y\n007,0.5,0\n")
    assert read_table(path, text=["key"]).columns["key"].tolist() == ["007"]
    with pytest.raises(DataError, match=r"column 'id' is not in .*d.csv \(columns: 'key', 'x'"):
        read_table(path, text=["id"])
    npz = tmp_path / "d.npz"
    np.savez(npz, X=np.ones((2, 2)), y=np.array([0, 1]))
    with pytest.raises(DataError, match=r"column 'id' is not in .*d.npz \(columns: 'x0'"):
        read_table(npz, text=["id"])


def test_a_table_given_up_becomes_the_features_in_place(tmp_path):
    """``load_file(table, consume=True)``: the features are the table's numeric block, not a
    copy; the text columns (an id read as text) stay; without ``consume`` it is a copy."""
    path = write(tmp_path, "d.csv", "key,a,b,y\n007,1.5,2,0\n008,3.5,4,1\n")
    table = read_table(path, text=["key"])
    copied = load_file(table, "y", feature_names=("a", "b"))
    assert not np.shares_memory(copied.X, table.block) and "a" in table.columns
    d = load_file(table, "y", feature_names=("a", "b"), consume=True)
    assert np.shares_memory(d.X, table.block)
    np.testing.assert_array_equal(d.X, [[1.5, 2.0], [3.5, 4.0]])
    assert d.y.tolist() == [0, 1] and list(table.columns) == ["key"]
    assert table.columns["key"].tolist() == ["007", "008"]


@pytest.mark.parametrize("end", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("last", [True, False])
def test_every_line_ending_is_counted_and_read(tmp_path, monkeypatch, end, last):
    """The rows are counted before parsing (the table is allocated once, at that size):
    ``\\r\\n`` and a lone ``\\r`` (old Mac files) end lines as ``\\n`` does, also where a
    ``\\r\\n`` falls across two blocks of the count, and with or without a last line end."""
    import crossent.datasets as datasets

    text = end.join(["a,b,y", "1,2,0", "3,4.5,1", "5,6,0"]) + (end if last else "")
    path = tmp_path / "d.csv"
    path.write_bytes(text.encode())
    for block in (1, 2, 3, 5, 1 << 20):
        monkeypatch.setattr(datasets, "_COUNT_BLOCK_BYTES", block)
        assert datasets._count_lines(str(path)) == 4
    table = read_table(path)
    assert table.n_rows == 3 and table.block.shape == (3, 3)
    assert table.columns["b"].tolist() == [2.0, 4.5, 6.0]
    headers = []
    monkeypatch.setattr(datasets, "csv_header",
                        lambda p, read=datasets.csv_header: headers.append(p) or read(p))
    assert load_file(path, drop=["a"]).feature_names == ("b",)
    assert headers == [str(path)]  # the header is read once, also with --drop


def test_drop_leaves_columns_out(tmp_path):
    path = write(tmp_path, "d.csv", "a,b,c,y\n1,2,x,0\n4,5,z,1\n")
    d = load_file(path, drop=["c", "a"])
    assert d.feature_names == ("b",)
    with pytest.raises(DataError, match=r"column 'nope' is not in .*d.csv \(columns: 'a', 'b'"):
        load_file(path, drop=["nope"])
    with pytest.raises(DataError, match="^the target column 'y' cannot be left out$"):
        load_file(path, "y", drop=["y", "c"])
    with pytest.raises(DataError, match="it is the target by default .* name the target with"):
        load_file(path, drop=["y"])


@pytest.mark.parametrize(("text", "message"), [
    # a regression table: 30 distinct values written as decimals in 40 rows
    ("".join(f"{i}.0\n" for i in range(30)) + "1.0\n" * 10,
     r"looks continuous: 30 distinct numbers written as decimals in 40 rows \(0.0, 1.0, 2.0"),
    # whole numbers, nearly one per row
    ("".join(f"{i * 7}\n" for i in range(25)) + "0\n",
     r"looks continuous: 25 distinct whole numbers in 26 rows \(0, 7, 14"),
])
def test_a_continuous_looking_target_says_so(tmp_path, text, message):
    rows = text.splitlines()
    path = write(tmp_path, "d.csv", "x,y\n" + "".join(f"{i % 5}.5,{v}\n"
                                                    for i, v in enumerate(rows)))
    with pytest.raises(DataError, match=message):
        check_classes(load_file(path))


def test_a_few_classes_written_as_decimals_are_classes(tmp_path):
    path = write(tmp_path, "d.csv", "x,y\n" + "".join(f"{i}.5,{i % 3}.0\n" for i in range(60)))
    d = load_file(path)
    assert check_classes(d).tolist() == [0, 1, 2]


# --------------------------------------------------------------------------------------------
# .npy / .npz headers are checked before anything is allocated
# --------------------------------------------------------------------------------------------


def test_npy_declaring_more_than_it_holds(tmp_path):
    path = tmp_path / "d.npy"
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": "<f8", "fortran_order": False, "shape": (1000, 1000)})
        fh.write(bytes(800))
    with pytest.raises(DataError, match=r"declares an array of shape \(1000, 1000\) \(7.6 MiB\) "
                                        r"but holds only 800 bytes of data"):
        load_file(path)


def test_memory_check(monkeypatch):
    import crossent.datasets as ds

    monkeypatch.setattr(ds, "available_memory", lambda: 3 << 30)
    ds.check_memory(1 << 30, "this")
    with pytest.raises(DataError, match=r"^that needs 4.0 GiB of memory, but only 3.0 GiB is "
                                        r"available$"):
        ds.check_memory(4 << 30, "that")
    assert ds.available_memory is not None

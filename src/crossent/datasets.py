"""Data for the classifier: the bundled digits, and tables read from CSV, NPY and NPZ files.

Every loader returns a :class:`Dataset` whose features are a finite float64 matrix, or raises
:class:`DataError` (a ``ValueError``) with one line that names the file, the column or line,
what was expected and what was found.

File formats
------------
``.csv``
    Comma-separated, UTF-8, with a header line naming the columns.  Every column except the
    target holds numbers (``nan``/``inf`` and empty cells are refused).  The target column
    (default: the last one) may hold integers or any text.
``.npy``
    A 2-D numeric array; the target is a column index (default: the last column).  Columns
    are named ``column 0``, ``column 1``, ...
``.npz``
    An array ``X`` of shape (n, d) and 1-D arrays of length n, of which the target (default
    ``y``) holds the labels.  Feature columns are named ``x0``, ``x1``, ...

Files are opened with ``allow_pickle=False``: object arrays are refused, never unpickled.
"""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DataError",
    "Dataset",
    "Table",
    "load_digits",
    "load_file",
    "read_table",
    "load_npy",
    "default_target",
    "resolve_target",
    "label_column",
    "check_classes",
    "train_test_split",
]

DIGITS = "digits"
_INTEGER = re.compile(r"^[+-]?\d+$")


class DataError(ValueError):
    """A data file that cannot be used, described in one line."""


@dataclass(frozen=True)
class Dataset:
    """Features ``X`` (n, d) float64, labels ``y`` (n,) or None, and where they came from."""

    X: np.ndarray
    y: np.ndarray | None
    feature_names: tuple[str, ...]
    target_name: str | None
    source: str

    @property
    def n_samples(self) -> int:
        return self.X.shape[0]

    @property
    def n_features(self) -> int:
        return self.X.shape[1]

    def subset(self, rows: np.ndarray) -> Dataset:
        return Dataset(self.X[rows], None if self.y is None else self.y[rows],
                       self.feature_names, self.target_name, self.source)


@dataclass(frozen=True)
class Table:
    """A file read as named columns: numeric columns as float64, others as text."""

    columns: dict[str, np.ndarray]  # name -> (n,) float64 or str array
    source: str
    kind: str  # "csv", "npy" or "npz"
    lines: np.ndarray | None = None  # CSV line number of each row, for error messages
    features: tuple[str, ...] | None = None  # the columns that may be features (None: all)

    @property
    def names(self) -> list[str]:
        return list(self.columns)

    @property
    def n_rows(self) -> int:
        return len(next(iter(self.columns.values())))


# --------------------------------------------------------------------------------------------
# The bundled data
# --------------------------------------------------------------------------------------------


def load_digits() -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1797 images, 64 pixel features 0..16, 10
    classes), read from the copy that ships inside scikit-learn: no network needed."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    names = tuple(getattr(bunch, "feature_names", None)
                  or [f"pixel_{i // 8}_{i % 8}" for i in range(64)])
    return Dataset(np.asarray(bunch.data, dtype=np.float64), bunch.target.astype(np.int64),
                   names, "digit", DIGITS)


# --------------------------------------------------------------------------------------------
# Reading files into tables
# --------------------------------------------------------------------------------------------


def read_table(path: str | os.PathLike) -> Table:
    """Read a ``.csv``, ``.npy`` or ``.npz`` file into named columns (see the module doc)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(2, "No such file", path)
    if os.path.isdir(path):
        raise DataError(f"{path} is a directory, not a data file")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".csv":
        return _read_csv(path)
    if ext == ".npy":
        return _read_npy(path)
    if ext == ".npz":
        return _read_npz(path)
    raise DataError(f"{path}: unknown file type {ext or '(no extension)'!r}; expected .csv "
                    "(with a header line), .npy or .npz")


def _read_csv(path: str) -> Table:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [(i, row) for i, row in enumerate(csv.reader(fh, strict=True), start=1)
                    if row and any(cell.strip() for cell in row)]
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.start}): is it really a CSV "
                        "file?") from None
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV: {exc}") from None
    if not rows:
        raise DataError(f"{path} is empty: expected a header line and rows of data")
    _, header = rows[0]
    header = [name.strip() for name in header]
    if all(_is_number(name) for name in header):
        raise DataError(f"{path} has no header line: its first line holds numbers "
                        f"({','.join(header[:4])}{',...' if len(header) > 4 else ''}); add a "
                        "line naming the columns")
    if any(not name for name in header):
        raise DataError(f"{path}: the header line has an empty column name (column "
                        f"{header.index('') + 1})")
    dup = sorted({name for name in header if header.count(name) > 1})
    if dup:
        raise DataError(f"{path}: the header names column {dup[0]!r} more than once")
    body = rows[1:]
    if not body:
        raise DataError(f"{path} has a header but no rows of data")
    width = len(header)
    for line, row in body:
        if len(row) != width:
            raise DataError(f"{path}: line {line} has {len(row)} fields, the header has "
                            f"{width}: malformed CSV")
    lines = np.array([line for line, _ in body])
    cells = np.array([row for _, row in body], dtype=str)
    columns = {}
    for j, name in enumerate(header):
        text = np.char.strip(cells[:, j])
        try:
            columns[name] = text.astype(np.float64)
        except ValueError:
            columns[name] = text
    return Table(columns, path, "csv", lines)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_npy(path: str) -> Any:
    """``np.load`` of an ``.npy`` file without pickle, with one-line errors."""
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic != b"\x93NUMPY":
        raise DataError(f"{path} is not a NumPy file (no .npy header); save it with numpy.save")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DataError(f"{path} holds Python objects (pickled), which crossent does not "
                            "load; save plain numeric arrays") from None
        raise DataError(f"{path} is not a NumPy file: {exc}") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path} is not a NumPy file: {exc}") from None


def _read_npy(path: str) -> Table:
    arr = load_npy(path)
    if not isinstance(arr, np.ndarray) or arr.ndim != 2:
        raise DataError(f"{path}: expected a 2-D array (rows x columns), got shape "
                        f"{getattr(arr, 'shape', None)}")
    if arr.dtype.kind not in "biuf" or arr.shape[0] == 0:
        raise DataError(f"{path}: expected a non-empty numeric array, got {arr.dtype} "
                        f"of shape {arr.shape}")
    values = arr.astype(np.float64)
    return Table({f"column {j}": values[:, j] for j in range(arr.shape[1])}, path, "npy")


def _read_npz(path: str) -> Table:
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path} is not a NumPy .npz archive: {exc}") from None
    with archive:
        try:
            arrays = {key: archive[key] for key in archive.files}
        except ValueError:
            raise DataError(f"{path} holds Python objects (pickled), which crossent does not "
                            "load; save plain numeric or string arrays") from None
    if "X" not in arrays:
        raise DataError(f"{path}: expected an array named 'X' (the features), found "
                        f"{', '.join(sorted(arrays)) or 'no arrays'}")
    X = arrays.pop("X")
    if X.ndim != 2 or X.dtype.kind not in "biuf" or X.shape[0] == 0:
        raise DataError(f"{path}: 'X' must be a non-empty 2-D numeric array, got {X.dtype} of "
                        f"shape {X.shape}")
    X = X.astype(np.float64)
    columns = {f"x{j}": X[:, j] for j in range(X.shape[1])}
    for key, arr in arrays.items():
        if arr.ndim == 1 and len(arr) == X.shape[0] and arr.dtype.kind in "biufU":
            columns[key] = arr.astype(np.float64) if arr.dtype.kind in "biuf" else arr
        elif arr.ndim == 2 and arr.shape == (X.shape[0], 1):
            columns[key] = arr[:, 0]
    return Table(columns, path, "npz", features=tuple(f"x{j}" for j in range(X.shape[1])))


# --------------------------------------------------------------------------------------------
# Tables to datasets
# --------------------------------------------------------------------------------------------


def default_target(table: Table) -> str:
    """The label column when none is named: ``y`` in an .npz, else the last column."""
    if table.kind == "npz":
        return "y"
    return table.names[-1]


def resolve_target(table: Table, target: str | None) -> str:
    """The name of the column ``target`` means (a name, or for .npy a column index)."""
    if target is None:
        name = default_target(table)
    elif table.kind == "npy" and _INTEGER.match(str(target)):
        index = int(target)
        width = len(table.names)
        if not -width <= index < width:
            raise DataError(f"--target {target}: {table.source} has columns 0..{width - 1}")
        name = table.names[index]
    else:
        name = str(target)
    if name not in table.columns:
        known = ", ".join(repr(n) for n in table.names[:8])
        more = ", ..." if len(table.names) > 8 else ""
        hint = "a column index" if table.kind == "npy" else "a column name"
        raise DataError(f"target column {name!r} is not in {table.source} (expected {hint}; "
                        f"columns: {known}{more})")
    return name


def load_file(source: str | os.PathLike | Table, target: str | None = None, *,
              feature_names: tuple[str, ...] | None = None,
              require_target: bool = True) -> Dataset:
    """Load a data file (or a :class:`Table` already read) as a :class:`Dataset`.

    ``target`` names the label column; when it is None the default column is used (see
    :func:`default_target`), or, with ``require_target=False``, no column: the rows are
    unlabelled (for prediction).  With ``feature_names`` (a model's), those columns are the
    features, in that order, and other columns are ignored; if the file lacks some of them,
    every column but the target is a feature, by position.  Without ``feature_names``,
    every column but the target is a feature.
    """
    table = source if isinstance(source, Table) else read_table(source)
    if target is None and not require_target:
        target_name = None
    else:
        target_name = resolve_target(table, target)
    if feature_names is not None and all(n in table.columns for n in feature_names):
        names = tuple(feature_names)
    else:
        names = tuple(n for n in (table.features or table.names) if n != target_name)
        if feature_names is not None and len(names) != len(feature_names):
            missing = [n for n in feature_names if n not in table.columns]
            raise DataError(
                f"{table.source} does not match the model: the model has "
                f"{len(feature_names)} features, the file has {len(names)} feature columns"
                + (f" and lacks {', '.join(repr(n) for n in missing[:3])}"
                   f"{', ...' if len(missing) > 3 else ''}" if missing else "")
            )
    if not names:
        raise DataError(f"{table.source} has no feature columns besides the target "
                        f"{target_name!r}")
    X = np.column_stack([_numeric(table, name) for name in names])
    y = None if target_name is None else label_column(table, target_name)
    return Dataset(X, y, names, target_name, table.source)


def _numeric(table: Table, name: str) -> np.ndarray:
    col = table.columns[name]
    if col.dtype.kind != "f":
        i = next(i for i, cell in enumerate(col) if not _is_number(cell))
        where = f"line {table.lines[i]}" if table.lines is not None else f"row {i}"
        found = repr(str(col[i])) if col[i] else "an empty cell"
        raise DataError(f"{table.source}: feature column {name!r} must hold numbers, got "
                        f"{found} on {where} (is it the target? use --target {name})")
    bad = ~np.isfinite(col)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        where = f"line {table.lines[i]}" if table.lines is not None else f"row {i}"
        raise DataError(f"{table.source}: feature column {name!r} holds {col[i]} on {where}; "
                        "features must be finite numbers (remove or fill missing values)")
    return col


def label_column(table: Table, name: str) -> np.ndarray:
    """The class labels in column ``name``: int64 when numeric (they must be whole numbers),
    else the text, non-empty."""
    col = table.columns[name]
    if col.dtype.kind == "f":
        bad = ~np.isfinite(col) | (col != np.round(col))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            where = f"line {table.lines[i]}" if table.lines is not None else f"row {i}"
            raise DataError(f"{table.source}: target column {name!r} must hold class labels "
                            f"(integers or text), got {col[i]} on {where}")
        return col.astype(np.int64)
    empty = col == ""
    if empty.any():
        i = int(np.flatnonzero(empty)[0])
        where = f"line {table.lines[i]}" if table.lines is not None else f"row {i}"
        raise DataError(f"{table.source}: target column {name!r} has an empty label on {where}")
    return col


def check_classes(dataset: Dataset) -> np.ndarray:
    """The sorted class labels; raises :class:`DataError` when there are fewer than 2."""
    if dataset.y is None:
        raise DataError(f"{dataset.source} has no labels")
    classes = np.unique(dataset.y)
    if len(classes) < 2:
        raise DataError(f"the target column {dataset.target_name!r} of {dataset.source} holds "
                        f"only one class ({classes[0]}); a classifier needs at least 2")
    return classes


def train_test_split(dataset: Dataset, test_size: float, seed: int
                     ) -> tuple[Dataset, Dataset | None]:
    """Shuffle and split as ``sklearn.model_selection.train_test_split(test_size, seed)``
    (so digits with 0.2 and seed 0 gives scikit-learn's 1437/360 split)."""
    if test_size == 0:
        return dataset, None
    from sklearn.model_selection import train_test_split as sk_split

    n = dataset.n_samples
    n_test = math.ceil(test_size * n)
    if n_test < 1 or n - n_test < 2:
        raise DataError(f"--test-size {test_size} leaves {n - n_test} training and {n_test} "
                        f"test rows of {n}; need at least 2 training rows and 1 test row")
    train_rows, test_rows = sk_split(np.arange(n), test_size=test_size, random_state=seed)
    return dataset.subset(train_rows), dataset.subset(test_rows)

"""``crossent score``: score a file of predicted probabilities against the true labels.

What a competition does with a submission: read the probabilities, read the answers, and
report the log loss (with the clipping rule in ``--help``), plus accuracy, Brier score and
expected calibration error.  The log loss is :func:`crossent.metrics.log_loss`, which gives
``sklearn.metrics.log_loss``'s number.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np

from . import Needs, Sometimes
from . import _common as common


def _reads_csv(args: argparse.Namespace) -> bool:
    return any(p.lower().endswith(".csv") for p in (args.predictions, args.labels))


# pandas reads CSV files; .npy and .npz files need only NumPy
NEEDS = Needs(sometimes=(Sometimes(("pandas",), "for CSV files", _reads_csv),))

CLIPPING = (
    "Clipping: every probability is clipped to [eps, 1 - eps] with eps = 2.22e-16 (float64 "
    "machine epsilon), so a probability of 0 on the true class costs -ln(eps) = 36.04 nats "
    "instead of infinity; rows are NOT renormalised, and rows that do not sum to 1 only draw "
    "a warning. This is scikit-learn's log_loss rule (since 1.5), so the number is "
    "sklearn.metrics.log_loss's."
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score predicted probabilities against true labels (log loss, accuracy, "
        "Brier score, calibration error)",
        description="Score a file of predicted class probabilities against the true labels, "
        "as competitions score submissions: log loss (natural log, mean over rows), "
        "accuracy, Brier score and expected calibration error. " + CLIPPING,
        epilog="PREDICTIONS: CSV whose probability columns are named prob_<class> (as "
        "'crossent predict' writes) or, failing that, every numeric column except --id is a "
        "class named by its header; a single column is P(class 1) with labels 0/1; or an "
        ".npy array (n, C) for classes 0..C-1. LABELS: CSV with the label column --target "
        "(default: the last), or a 1-D .npy array. ROWS: matched by id when both files have "
        "the id column (--id, or a column named as ids are: id, PassengerId, customer_id, "
        "...); by position when neither has one; when only one file has it, matching by "
        "position is refused unless --by-position asks for it.",
    )
    p.add_argument("predictions", metavar="PREDICTIONS", help="predicted probabilities")
    p.add_argument("labels", metavar="LABELS", help="true labels")
    p.add_argument("--target", metavar="COLUMN",
                   help="the label column of LABELS (default: the last column)")
    p.add_argument("--id", metavar="COLUMN",
                   help="match rows by this column, present in both files (default: the id "
                   "column both files have, such as 'id' or 'PassengerId')")
    p.add_argument("--by-position", action="store_true",
                   help="match rows by their order, even where a file has an id column")
    p.add_argument("--bins", type=common.positive_int, default=15, metavar="N",
                   help="confidence bins of the calibration error (default: 15)")
    p.set_defaults(run=run)


def _columns(path: str) -> list[str] | None:
    """The column names of a CSV file (None for .npy files and unreadable files)."""
    from ..datasets import DataError, csv_header

    if path.lower().endswith(".npy") or not os.path.isfile(path):
        return None
    try:
        return csv_header(path)[0]
    except DataError:
        return None  # reading the file proper says what is wrong


def choose_id(args: argparse.Namespace) -> str | None:
    """The column to match rows by, or None to match them by position.

    ``--id``, else the identifier column both files have (``id``, ``PassengerId``, ... by
    name: see :func:`crossent.datasets.id_columns`).  Refuses to match by position where an
    identifier column says the rows have identities but cannot be matched by it.
    """
    from ..datasets import DataError, id_columns

    if args.by_position:
        if args.id:
            raise common.UsageError("--id and --by-position contradict each other")
        return None
    names = {path: _columns(path) for path in (args.predictions, args.labels)}
    if args.id is not None:
        for path in names:
            if path.lower().endswith(".npy"):
                raise DataError(f"--id needs CSV files, and {path} is a .npy file")
        return args.id
    ids = {path: id_columns(columns or []) for path, columns in names.items()}
    pred_ids, label_ids = ids[args.predictions], ids[args.labels]
    common_ids = [c for c in pred_ids if c in label_ids]
    if len(common_ids) == 1:
        return common_ids[0]
    if len(common_ids) > 1:
        if "id" in common_ids:
            return "id"
        raise DataError(f"both files have the id columns {', '.join(map(repr, common_ids))}; "
                        "name the one to match rows by with --id")
    if pred_ids or label_ids:
        has, other = ((args.predictions, args.labels) if pred_ids
                      else (args.labels, args.predictions))
        column = (pred_ids or label_ids)[0]
        raise DataError(f"{has} has an id column ({column!r}) but {other} does not, so the "
                        "rows cannot be matched by id, and matching them by position could "
                        "pair them wrongly; give both files the ids (crossent predict --id "
                        "copies them) or pass --by-position")
    return None


def _read_predictions(path: str, id_column: str | None):
    """``(classes as text, (n, C) probabilities, ids or None)``."""
    from ..datasets import DataError, is_identifier_name, load_npy, read_table

    if path.lower().endswith(".npy"):
        arr = load_npy(path)
        if arr.ndim != 2:
            raise DataError(f"{path}: expected predicted probabilities of shape (n, classes), "
                            f"got shape {arr.shape}")
        if arr.dtype.kind not in "iuf":
            raise DataError(f"{path}: expected predicted probabilities (numbers), got "
                            f"{arr.dtype}")
        return [str(k) for k in range(arr.shape[1])], arr.astype(np.float64), None
    table = read_table(path, text=[id_column] if id_column else [])
    ids = _ids(table, id_column)
    named = [n for n in table.names if n.startswith("prob_")]
    if named:
        columns, classes = named, [n[len("prob_"):] for n in named]
    else:
        columns = [n for n in table.names if n != id_column and not is_identifier_name(n)
                   and table.columns[n].dtype.kind == "f"]
        classes = columns
    if not columns:
        raise DataError(f"{path} has no probability columns (numeric columns, or columns "
                        "named prob_<class>)")
    for name in columns:
        if table.columns[name].dtype.kind != "f":
            raise DataError(f"{path}: column {name!r} must hold probabilities, got text "
                            f"({str(table.columns[name][0])!r}, ...)")
    proba = np.column_stack([table.columns[n] for n in columns])
    return classes, proba, ids


def _read_labels(path: str, target: str | None, id_column: str | None):
    from ..datasets import DataError, label_column, load_npy, npy_table, read_table, resolve_target

    if path.lower().endswith(".npy"):  # (choose_id refuses --id with .npy files)
        arr = load_npy(path)
        if arr.ndim == 1:
            if arr.dtype.kind not in "iuU" and not (
                    arr.dtype.kind == "f" and np.all(arr == np.round(arr))):
                raise DataError(f"{path}: labels must be integers or text, got {arr.dtype}")
            return (arr.astype(np.int64) if arr.dtype.kind in "fiu" else arr), None
        table = npy_table(arr, path)  # a table of columns: the label column is --target
    else:
        table = read_table(path, text=[id_column] if id_column else [])
    ids = _ids(table, id_column)
    name = resolve_target(table, target)
    if name == id_column:
        raise DataError(f"the label column of {path} is the --id column {id_column!r}; name "
                        "it with --target")
    return label_column(table, name), ids


def _ids(table, id_column: str | None):
    from ..datasets import DataError

    if id_column is None:
        return None
    ids = table.columns[id_column].astype(str)
    unique, counts = np.unique(ids, return_counts=True)
    if len(unique) != len(ids):
        raise DataError(f"id column {id_column!r} of {table.source} repeats the value "
                        f"{str(unique[counts > 1][0])!r}, so rows cannot be matched by it")
    return ids


def _class_indices(text: np.ndarray, classes: list[str], args: argparse.Namespace
                   ) -> np.ndarray:
    """The probability column of every label (``text``) among ``classes`` (in the file's
    order, not sorted); a label without one is a :class:`DataError`."""
    from ..datasets import DataError

    names = np.array(classes, dtype=str)
    order = np.argsort(names)
    position = np.minimum(np.searchsorted(names[order], text), len(names) - 1)
    known = names[order][position] == text
    if not known.all():
        raise DataError(f"{args.labels} has label {str(text[~known][0])!r}, which has no "
                        f"probability column in {args.predictions} (classes: "
                        f"{', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''})")
    return order[position].astype(np.int64)


def run(args: argparse.Namespace) -> int:
    from ..datasets import DataError
    from ..metrics import accuracy, brier_score, expected_calibration_error, log_loss

    id_column = choose_id(args)
    classes, proba, pred_ids = _read_predictions(args.predictions, id_column)
    labels, label_ids = _read_labels(args.labels, args.target, id_column)
    if pred_ids is not None:
        missing = np.setdiff1d(label_ids, pred_ids)
        if len(missing):
            raise DataError(f"{args.predictions} has no prediction for id {str(missing[0])!r}")
        extra = np.setdiff1d(pred_ids, label_ids)
        if len(extra):
            raise DataError(f"{args.labels} has no label for id {str(extra[0])!r}")
        order = np.argsort(pred_ids)
        proba = proba[order][np.searchsorted(pred_ids[order], label_ids)]
    elif len(proba) != len(labels):
        raise DataError(f"{args.predictions} has {len(proba)} rows but {args.labels} has "
                        f"{len(labels)}; they must match row by row (or by an id column: "
                        "--id)")
    text = labels.astype(str)
    if len(classes) == 1:  # P(class 1): the competitions' binary format
        binary = np.isin(text, ["0", "1"])
        if not binary.all():
            raise DataError(f"{args.predictions} has one probability column, read as "
                            f"P(label 1), so the labels must be 0 or 1; got "
                            f"{str(text[~binary][0])!r}")
        classes, proba = ["0", "1"], np.column_stack([1.0 - proba[:, 0], proba[:, 0]])
    y = _class_indices(text, classes, args)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = log_loss(y, proba)
    for w in caught:
        print(f"crossent score: warning: {w.message}", file=sys.stderr)
    clipped = int(np.sum(proba[np.arange(len(y)), y] < np.finfo(np.float64).eps))
    rows = [  # every number first, so that a failure prints nothing but its error line
        ("log loss", f"{loss:.6f}" + (f"  ({clipped} rows clipped at p = eps)"
                                      if clipped else "")),
        ("accuracy", f"{accuracy(y, proba):.6f}"),
        ("Brier score", f"{brier_score(y, proba):.6f}"),
        ("expected calibration error", f"{expected_calibration_error(y, proba, args.bins):.6f}"
         f"  ({args.bins} bins)"),
    ]
    matched = f"matched by {id_column}" if id_column else "matched by position"
    print(f"crossent score: {args.predictions} against {args.labels} ({len(y)} rows "
          f"{matched}, {len(classes)} classes)")
    print()
    print(common.pairs(rows))
    return 0

"""``crossent predict``: class probabilities and the predicted label for every row.

Writes CSV: the id column (``--id``, or the first column that is not one of the model's
features and either identified rows when the model was trained or is named as ids are:
``id``, ``PassengerId``, ...), copied as it is written in the data file; one column
``prob_<class>`` per class; then ``predicted``.  Probabilities are written in Python's
shortest round-trip form, so ``crossent score`` on the file gives exactly the log loss
``crossent evaluate`` prints, and with the id column it matches the rows of a labels file
by id.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from typing import IO

import numpy as np

from . import Needs
from . import _common as common

NEEDS = Needs(common.MODEL_PACKAGES)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="write class probabilities and the predicted label of every row as CSV",
        description="Write the class probabilities and the predicted label of every row of "
        "FILE as CSV (columns [id,] prob_<class>..., predicted), to --out or to standard "
        "output.",
    )
    p.add_argument("--model", required=True, metavar="MODEL.npz",
                   help="a model saved by 'crossent train --out'")
    p.add_argument("--data", required=True, metavar="FILE",
                   help=f"the rows to predict: {common.FORMATS_HELP}; a label column, if "
                   "present, is ignored")
    p.add_argument("--target", metavar="COLUMN",
                   help="the label column to leave out (default: the model's, if present)")
    p.add_argument("--id", metavar="COLUMN",
                   help="copy this column of FILE (row ids) to the output as its first column, "
                   "so that 'crossent score' matches rows by it (default: the first column "
                   "of FILE that is not a feature of the model and was left out of training "
                   "as an identifier or is named as ids are, such as 'id' or 'PassengerId')")
    p.add_argument("--out", metavar="PREDS.csv", help="output file (default: standard output)")
    common.add_force(p)
    p.set_defaults(run=run)


# rows turned into text at a time: the output is streamed, never held whole
_ROWS_PER_WRITE = 4096


def write_predictions(out: IO[str], model, X: np.ndarray,
                      ids: tuple[str, np.ndarray] | None = None) -> None:
    """Write the CSV ``[id,] prob_<class>..., predicted`` to the text stream ``out``."""
    proba = model.predict_proba(X)
    labels = model.classes_[np.argmax(proba, axis=1)]
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(([ids[0]] if ids else []) + [f"prob_{c}" for c in model.classes_]
                    + ["predicted"])
    for start in range(0, len(proba), _ROWS_PER_WRITE):
        rows = slice(start, start + _ROWS_PER_WRITE)
        firsts = [[str(v)] for v in ids[1][rows].tolist()] if ids else None
        writer.writerows(
            (firsts[i] if ids else []) + [repr(p) for p in row] + [label]
            for i, (row, label) in enumerate(zip(proba[rows].tolist(), labels[rows].tolist())))


def _id_column(args: argparse.Namespace, meta: dict) -> str | None:
    """``--id``, else the first column of the data file that is not one of the model's
    features and either was left out of training as an identifier (the model file lists
    those) or is named as ids are (``id``, ``PassengerId``, ...:
    :func:`crossent.datasets.id_columns`); CSV files only."""
    features = set(meta.get("feature_names") or ())
    if args.id is not None:
        if not args.data.lower().endswith(".csv"):
            raise common.UsageError("--id needs a CSV data file (its columns have names)")
        if args.id in features:
            raise common.UsageError(f"--id column {args.id!r} is one of the model's features")
        return args.id
    if args.data.lower().endswith(".csv") and os.path.isfile(args.data):
        from ..datasets import DataError, csv_header, id_columns

        try:
            header, _ = csv_header(args.data)
        except DataError:
            return None  # reading the file proper will say what is wrong
        trained = meta.get("identifiers")
        trained = [n for n in trained if n in header] if isinstance(trained, list) else []
        return next((n for n in trained + id_columns(header) if n not in features), None)
    return None


def run(args: argparse.Namespace) -> int:
    from .._model_file import read_model_file
    from .evaluate import load

    inputs = [("--data", args.data), ("--model", args.model)]
    common.check_output(args.out, args.force, "--out", inputs)
    arrays, meta = read_model_file(args.model)
    id_column = _id_column(args, meta)
    data, _, id_values = load(args, arrays, meta, require_target=False, id_column=id_column)
    from ..classifier import build_model  # scikit-learn: only once the files are checked

    model = build_model(arrays, meta)
    ids = None if id_column is None else (id_column, id_values)
    if args.out is None:
        write_predictions(sys.stdout, model, data.X, ids)
        return 0

    def write(fh: IO[bytes]) -> None:
        text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
        write_predictions(text, model, data.X, ids)
        text.flush()
        text.detach()  # (write_output flushes and closes the file itself)

    common.write_output(args.out, args.force, "--out", write, inputs)
    print(f"crossent predict: {data.n_samples} rows of {args.data} -> {args.out}",
          file=sys.stderr)
    return 0

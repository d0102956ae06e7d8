"""``crossent predict``: class probabilities and the predicted label for every row.

Writes CSV: one column ``prob_<class>`` per class, then ``predicted``.  Probabilities are
written in Python's shortest round-trip form, so ``crossent score`` on the file gives
exactly the log loss ``crossent evaluate`` prints.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys

import numpy as np

from . import _common as common


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="write class probabilities and the predicted label of every row as CSV",
        description="Write the class probabilities and the predicted label of every row of "
        "FILE as CSV (columns prob_<class>..., predicted), to --out or to standard output.",
    )
    p.add_argument("--model", required=True, metavar="MODEL.npz",
                   help="a model saved by 'crossent train --out'")
    p.add_argument("--data", required=True, metavar="FILE",
                   help=f"the rows to predict: {common.FORMATS_HELP}; a label column, if "
                   "present, is ignored")
    p.add_argument("--target", metavar="COLUMN",
                   help="the label column to leave out (default: the model's, if present)")
    p.add_argument("--out", metavar="PREDS.csv", help="output file (default: standard output)")
    common.add_force(p)
    p.set_defaults(run=run)


def predictions_csv(model, X: np.ndarray) -> str:
    proba = model.predict_proba(X)
    labels = model.classes_[np.argmax(proba, axis=1)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([f"prob_{c}" for c in model.classes_] + ["predicted"])
    for row, label in zip(proba.tolist(), labels.tolist()):
        writer.writerow([repr(p) for p in row] + [label])
    return buf.getvalue()


def run(args: argparse.Namespace) -> int:
    from .evaluate import load

    common.check_output(args.out, args.force, "--out")
    model, data = load(args, require_target=False)
    text = predictions_csv(model, data.X)
    if args.out is None:
        sys.stdout.write(text)
        return 0
    common.write_output(args.out, args.force, "--out", lambda fh: fh.write(text.encode()))
    print(f"crossent predict: {data.n_samples} rows of {args.data} -> {args.out}",
          file=sys.stderr)
    return 0

"""``crossent evaluate``: how well a saved model does on labelled data.

Prints the log loss and accuracy (the same functions as ``crossent score``), the precision
and recall of every class, and the confusion matrix.
"""

from __future__ import annotations

import argparse

import numpy as np

from . import Needs
from . import _common as common

NEEDS = Needs(common.MODEL_PACKAGES)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a saved model on labelled data: log loss, accuracy, per-class "
        "precision and recall, confusion matrix",
        description="Score a model saved by 'crossent train --out' on labelled data: log "
        "loss, accuracy, precision and recall per class, and the confusion matrix.",
    )
    p.add_argument("--model", required=True, metavar="MODEL.npz",
                   help="a model saved by 'crossent train --out'")
    p.add_argument("--data", required=True, metavar="FILE",
                   help=f"labelled data: {common.FORMATS_HELP}; the feature columns are "
                   "found by the names the model was trained with")
    p.add_argument("--target", metavar="COLUMN",
                   help="the label column (default: the one the model was trained on)")
    p.set_defaults(run=run)


def load(args: argparse.Namespace, arrays: dict, meta: dict, *, require_target: bool,
         id_column: str | None = None):
    """The data file matched up with the model (``arrays`` and ``meta`` as
    :func:`read_model_file` read them from ``--model``): ``(dataset, labels as class
    indices or None, ids or None)``, shared with ``crossent predict``, whose ``id_column``
    is read as text (as written) and returned beside the data.

    The label column is ``--target``, else the column the model was trained on, else (for
    evaluation) the file's default label column, unless that is one of the model's features.
    Everything about the files is checked here, before scikit-learn is loaded (by
    :func:`crossent.classifier.build_model`), so that a mistake is reported at once.
    """
    from ..datasets import DataError, default_target, load_file, read_table

    names = tuple(meta["feature_names"]) if meta.get("feature_names") else None
    with common.reading_progress(args.data) as progress:
        table = read_table(args.data, text=(id_column,) if id_column else (),
                           progress=progress)
    target = args.target
    if target is None and meta.get("target") in table.columns:
        target = meta["target"]
    if target is None and require_target:
        target = default_target(table)
        if names is not None and target in names:
            raise DataError(
                f"{args.data} has no label column: the model's is "
                f"{meta.get('target')!r}; name the file's with --target")
    # the table is not needed beyond its text columns: its numeric block becomes the features
    data = load_file(table, target, feature_names=names, require_target=require_target,
                     consume=True)
    n_features = arrays["coef"].shape[1]
    if data.n_features != n_features:
        raise common.UsageError(
            f"{args.data} has {data.n_features} feature columns but the model "
            f"{args.model} was trained on {n_features}")
    y = common.label_indices(arrays["classes"], data.y, args.data) if require_target else None
    ids = None if id_column is None else table.columns[id_column]
    return data, y, ids


def run(args: argparse.Namespace) -> int:
    from .._model_file import read_model_file
    from ..metrics import accuracy, confusion_matrix, log_loss, precision_recall

    if common.same_path(args.model, args.data):
        raise common.UsageError(f"--model and --data name the same file ({args.data})")
    arrays, meta = read_model_file(args.model)
    data, y, _ = load(args, arrays, meta, require_target=True)
    from ..classifier import build_model  # scikit-learn: only once the files are checked

    model = build_model(arrays, meta)
    proba = model.predict_proba(data.X)
    predicted = np.argmax(proba, axis=1)
    classes = [str(c) for c in model.classes_]
    cm = confusion_matrix(y, predicted, len(classes))
    precision, recall = precision_recall(cm)
    correct = int(np.trace(cm))

    print(f"crossent evaluate: {args.model} on {args.data} ({data.n_samples} rows, "
          f"{len(classes)} classes)")
    print()
    print(common.pairs([
        ("log loss", f"{log_loss(y, proba):.4f}"),
        ("accuracy", f"{accuracy(y, proba):.4f} ({correct}/{data.n_samples})"),
    ]))
    print()
    rows = [(c, common.fmt(precision[k]), common.fmt(recall[k]), int(cm[k].sum()))
            for k, c in enumerate(classes)]
    print(common.table(rows, header=("class", "precision", "recall", "support"), indent=""))
    print()
    print("confusion matrix (rows: true class, columns: predicted class)")
    print(common.table([(c, *cm[k]) for k, c in enumerate(classes)],
                       header=("", *classes), indent=""))
    return 0

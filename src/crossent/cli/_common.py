"""What the sub-commands share: data options, safe output files, training with curves, tables.

Output files are written to a temporary file beside the target and then linked into place,
so an existing file is never overwritten without ``--force`` (even by a race) and a failed
write never leaves half a file behind.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

import numpy as np

from . import UsageError

# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------

FORMATS_HELP = ("CSV with a header line, .npy (2-D numeric array) or .npz (arrays X and y)")


def _number_option(convert: Callable[[str], Any], accept: Callable[[Any], bool],
                   expected: str) -> Callable[[str], Any]:
    """An argparse ``type=``: ``convert`` the text, keep it if ``accept`` says so, else say
    what was expected and what arrived."""
    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


positive_int = _number_option(int, lambda v: v >= 1, "a positive integer")
fraction = _number_option(float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")
non_negative = _number_option(float, lambda v: 0.0 <= v < float("inf"), "a number >= 0")
learning_rate = _number_option(lambda t: t if t == "auto" else float(t),
                               lambda v: v == "auto" or 0.0 < v < float("inf"),
                               "a positive number or 'auto'")


def add_training_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="FILE",
                   help=f"training data: {FORMATS_HELP} (default: scikit-learn's bundled "
                   "digits, 1797 8x8 images, 10 classes)")
    g.add_argument("--target", metavar="COLUMN",
                   help="the label column: a CSV column name, an .npy column index, an .npz "
                   "array name (default: the last column; 'y' in an .npz)")
    g.add_argument("--test-size", type=fraction, default=0.2, metavar="F",
                   help="fraction of rows held out for testing, 0 for none (default: 0.2)")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of the train/test split and of sgd's shuffling (default: 0)")


def add_force(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="overwrite existing output files")


# --------------------------------------------------------------------------------------------
# Output files
# --------------------------------------------------------------------------------------------


def check_output(path: str | None, force: bool, option: str) -> None:
    """Fail early (before any work) if ``path`` cannot be written or exists without --force."""
    if path is None:
        return
    if os.path.isdir(path):
        raise UsageError(f"{option} {path} is a directory; give a file name")
    if os.path.lexists(path) and not force:
        raise UsageError(f"{option} {path} exists; pass --force to overwrite it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{option} {path}: the directory {os.path.dirname(path) or '.'} does "
                         "not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: the directory {os.path.dirname(path) or '.'} is "
                         "not writable")


def write_output(path: str, force: bool, option: str, write: Callable[[IO[bytes]], None]
                 ) -> None:
    """Call ``write(file)`` on a temporary file and move it to ``path``.

    Without ``force`` the final step is a hard link, which fails if ``path`` appeared in the
    meantime; with ``force`` it is an atomic replace.
    """
    check_output(path, force, option)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".crossent-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.chmod(tmp, 0o666 & ~_umask())
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise UsageError(f"{option} {path} exists; pass --force to overwrite it"
                                 ) from None
            except OSError:  # file systems without hard links
                if os.path.lexists(path):
                    raise UsageError(f"{option} {path} exists; pass --force to overwrite it"
                                     ) from None
                os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def load_training_data(args: argparse.Namespace) -> Any:
    from ..datasets import check_classes, load_digits, load_file

    if args.data is None:
        if args.target is not None:
            raise UsageError("--target needs --data (the bundled digits have their labels)")
        data = load_digits()
    else:
        data = load_file(args.data, args.target)
    check_classes(data)
    return data


def split(data: Any, test_size: float, seed: int) -> tuple[Any, Any]:
    from ..datasets import DataError, train_test_split

    train, test = train_test_split(data, test_size, seed)
    if len(np.unique(train.y)) < 2:
        raise DataError(f"the training split holds only one class ({train.y[0]}); use more "
                        "data or a different --seed")
    if test is not None:
        unseen = np.setdiff1d(np.unique(test.y), np.unique(train.y))
        if len(unseen):
            raise DataError(f"class {unseen.tolist()[0]!r} appears only in the test split, so the "
                            "model cannot learn it; use more data, a smaller --test-size or "
                            "a different --seed")
    return train, test


def describe_data(data: Any) -> str:
    classes = len(np.unique(data.y))
    return (f"{data.source}: {data.n_samples} rows x {data.n_features} features, "
            f"{classes} classes")


def label_indices(model: Any, labels: np.ndarray, source: str) -> np.ndarray:
    """Positions of ``labels`` in ``model.classes_``; one-line error for unknown labels."""
    classes = np.asarray(model.classes_)
    if classes.dtype.kind in "iu" and labels.dtype.kind not in "iu":
        raise UsageError(f"{source} has text labels ({str(labels[0])!r}, ...) but the model's "
                         f"classes are numbers ({', '.join(map(str, classes[:5]))}, ...)")
    if classes.dtype.kind == "U" and labels.dtype.kind != "U":
        labels = labels.astype(str)
    known = np.isin(labels, classes)
    if not known.all():
        bad = labels[~known].tolist()[0]
        raise UsageError(f"{source} has label {bad!r}, which is not a class of the model "
                         f"(classes: {', '.join(map(str, classes[:10]))}"
                         f"{', ...' if len(classes) > 10 else ''})")
    return np.searchsorted(classes, labels).astype(np.int64)


# --------------------------------------------------------------------------------------------
# Training with a progress bar and learning curves
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def progress(total: int, desc: str) -> Iterator[Any]:
    """A tqdm bar on stderr, shown only when stderr is a terminal."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="it", leave=False, disable=None, file=sys.stderr,
               dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


def fit_with_curves(model: Any, train: Any, test: Any, *, track: bool, desc: str,
                    label: str = "") -> tuple[Any, float, list[str]]:
    """Fit ``model``; returns ``(curves, seconds, convergence warnings)``.

    With ``track``, log loss and accuracy on the training and test sets are recorded after
    every iteration (this costs a prediction pass per iteration, so it is off unless a plot
    or a table needs it; the reported fit time excludes it).
    """
    from ..metrics import accuracy, log_loss
    from ..plots import LearningCurves

    curves = LearningCurves(label=label)
    y_train = np.searchsorted(np.unique(train.y), train.y)
    y_test = None if test is None else np.searchsorted(np.unique(train.y), test.y)
    tracking_time = 0.0

    with progress(model.max_iter, desc) as bar:
        def callback(m: Any) -> None:
            nonlocal tracking_time
            start = time.perf_counter()
            bar.update(1)
            bar.set_postfix(objective=f"{m.loss_curve_[-1]:.4f}", refresh=False)
            if track:
                curves.iteration.append(m.n_iter_)
                curves.objective.append(m.loss_curve_[-1])
                p = m.predict_proba(train.X)
                curves.train_loss.append(log_loss(y_train, p))
                curves.train_accuracy.append(accuracy(y_train, p))
                if test is not None:
                    p = m.predict_proba(test.X)
                    curves.test_loss.append(log_loss(y_test, p))
                    curves.test_accuracy.append(accuracy(y_test, p))
            tracking_time += time.perf_counter() - start

        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            start = time.perf_counter()
            model.fit(train.X, train.y, callback=callback)
            seconds = time.perf_counter() - start - tracking_time
    notes = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
    return curves, seconds, notes


# --------------------------------------------------------------------------------------------
# Text tables
# --------------------------------------------------------------------------------------------


def table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None,
          indent: str = "  ") -> str:
    """Rows as aligned columns: the first column left-aligned, the others right-aligned."""
    cells = [[str(c) for c in row] for row in ([header] if header else []) + list(rows)]
    widths = [max(len(row[j]) for row in cells if j < len(row)) for j in range(len(cells[0]))]
    lines = []
    for row in cells:
        parts = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append((indent + "  ".join(parts)).rstrip())
    return "\n".join(lines)


def pairs(rows: Sequence[tuple[str, Any]], indent: str = "") -> str:
    """``name  value`` lines with the values in one column."""
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{indent}{name.ljust(width)}  {value}" for name, value in rows)


def fmt(x: float, digits: int = 4) -> str:
    if x != x:  # NaN
        return "-"
    return f"{x:.{digits}f}"

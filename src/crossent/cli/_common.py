"""What the sub-commands share: data options, safe output files, training with curves, tables.

Output files are written to a temporary file beside the target and then linked (or, with
``--force``, renamed) into place, so an existing file is never overwritten without
``--force`` (even by a race), a failed write never leaves half a file behind, a replaced
file keeps its permissions, and an input file is never an output, ``--force`` or not.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
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
# NumPy's and scikit-learn's seeds are unsigned 32-bit integers
seed = _number_option(int, lambda v: 0 <= v < 2**32, "an integer in [0, 4294967295]")
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
    g.add_argument("--drop", nargs="+", action="extend", default=[], metavar="COLUMN",
                   help="leave these columns out of the features (columns that identify rows, "
                   "such as 'id', are left out anyway)")
    g.add_argument("--no-standardize", dest="standardize", action="store_false",
                   help="use the features as they are; by default each is standardised with "
                   "the mean and standard deviation of the training rows, which the model "
                   "file keeps and 'evaluate' and 'predict' apply")
    g.add_argument("--test-size", type=fraction, default=0.2, metavar="F",
                   help="fraction of rows held out for testing, 0 for none (default: 0.2)")
    g.add_argument("--seed", type=seed, default=0,
                   help="seed of the train/test split and of sgd's shuffling, an integer in "
                   "[0, 2**32) (default: 0)")


def add_force(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="overwrite existing output files")


# --------------------------------------------------------------------------------------------
# Output files
# --------------------------------------------------------------------------------------------


# what training and applying a model need beyond NumPy: the classifier, the CSV parser, the
# progress bars (of training, and of reading a large file)
MODEL_PACKAGES = ("sklearn", "scipy", "threadpoolctl", "pandas", "tqdm")


def same_path(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` are the same file (or would be, once created)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_output(path: str | None, force: bool, option: str,
                 inputs: Sequence[tuple[str, str | None]] = ()) -> None:
    """Fail early (before any work) if ``path`` cannot be written, exists without --force,
    or is one of the ``inputs`` (``(option, path)`` pairs), which no option overwrites."""
    if path is None:
        return
    check_not_input(path, option, inputs)
    _check_writable(path, force, option)


def _check_writable(path: str, force: bool, option: str) -> None:
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


def check_not_input(path: str, option: str, inputs: Sequence[tuple[str, str | None]]) -> None:
    for input_option, input_path in inputs:
        if input_path is not None and same_path(path, input_path):
            raise UsageError(f"{option} {path} is the input file of {input_option}; choose "
                             "another name (crossent never overwrites its inputs, even with "
                             "--force)")


def check_figure_output(path: str | None, force: bool, option: str,
                        inputs: Sequence[tuple[str, str | None]] = ()) -> None:
    """:func:`check_output`, and the file name must end in a format crossent can draw."""
    if path is None:
        return
    from ..plots import FIGURE_NAME_HINT, figure_format

    check_not_input(path, option, inputs)
    if figure_format(path) is None:
        raise UsageError(f"{option} {path}: cannot write a figure of that type; "
                         f"{FIGURE_NAME_HINT}")
    _check_writable(path, force, option)


def write_output(path: str, force: bool, option: str, write: Callable[[IO[bytes]], None],
                 inputs: Sequence[tuple[str, str | None]] = ()) -> None:
    """Call ``write(file)`` on a temporary file and move it to ``path``.

    Without ``force`` the final step is a hard link, which fails if ``path`` appeared in the
    meantime; with ``force`` it is an atomic rename over the old file, whose permissions the
    new one takes (and through a symbolic link, the link's target is replaced, not the link).
    The data is flushed to disk before the rename, so a crash leaves the old file or the new
    one, never a mix.
    """
    check_output(path, force, option, inputs)
    if force and os.path.islink(path):
        path = os.path.realpath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".crossent-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        mode = 0o666 & ~_umask()
        if force and os.path.exists(path):
            mode = stat.S_IMODE(os.stat(path).st_mode)
        os.chmod(tmp, mode)
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


# files at least this large show a progress bar while they are read (on a terminal)
PROGRESS_MIN_BYTES = 16 << 20


@contextlib.contextmanager
def reading_progress(path: str | None) -> Iterator[Any]:
    """A callback ``(done, total)`` that drives a byte-counting bar for a large file (None
    for small files and .npy/.npz, which are read in one go)."""
    if path is None or not path.lower().endswith(".csv") or not os.path.isfile(path) \
            or os.path.getsize(path) < PROGRESS_MIN_BYTES:
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=os.path.getsize(path), desc=f"reading {os.path.basename(path)}",
               unit="B", unit_scale=True, unit_divisor=1024, leave=False, disable=None,
               file=sys.stderr, dynamic_ncols=True)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        bar.close()


def load_training_data(args: argparse.Namespace) -> tuple[Any, np.ndarray]:
    """``(data, its sorted classes)``: ``--data`` (or the bundled digits), checked to be
    labels of a classifier."""
    from ..datasets import check_classes, load_digits, load_file

    if args.data is None:
        if args.target is not None:
            raise UsageError("--target needs --data (the bundled digits have their labels)")
        if args.drop:
            raise UsageError("--drop needs --data")
        data = load_digits()
    else:
        with reading_progress(args.data) as progress:
            data = load_file(args.data, args.target, drop=args.drop, progress=progress)
    return data, check_classes(data)


def standardize(train: Any, test: Any) -> Any:
    """A StandardScaler fitted on the training rows (columns of zero variance get scale 1),
    and both sets standardised with it, in place (they are the split's own copies)."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler(copy=False).fit(train.X)
    scaler.transform(train.X)
    if test is not None:
        scaler.transform(test.X)
    return scaler


def split(data: Any, test_size: float, seed: int) -> tuple[Any, Any, np.ndarray, Any]:
    """``(train, test, y_train, y_test)``: the rows split as scikit-learn splits them, and
    their labels as indices into the training rows' sorted classes (the model's
    ``classes_``), which the metrics take; ``test`` and ``y_test`` are None without a test
    set."""
    from ..datasets import DataError, train_test_split

    train, test = train_test_split(data, test_size, seed)
    classes, y_train = np.unique(train.y, return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"the training split holds only one class ({train.y[0]}); use more "
                        "data or a different --seed")
    if test is None:
        return train, None, y_train, None
    unseen = ~np.isin(test.y, classes)
    if unseen.any():
        raise DataError(f"class {np.unique(test.y[unseen]).tolist()[0]!r} appears only in the "
                        "test split, so the model cannot learn it; use more data, a smaller "
                        "--test-size or a different --seed")
    return train, test, y_train, np.searchsorted(classes, test.y)


@dataclass
class Training:
    """What ``train`` and ``compare`` fit on: the split rows (standardised with ``scaler``
    unless ``--no-standardize``) and their labels as class indices (see :func:`split`); and
    of the data they came from, what the commands print and save: its ``source``, its
    label column, its feature columns and the columns left out as identifiers."""

    train: Any
    test: Any
    y_train: np.ndarray
    y_test: np.ndarray | None
    scaler: Any
    source: str
    target_name: str | None
    feature_names: tuple[str, ...]
    identifiers: tuple[str, ...]


def prepare_training(args: argparse.Namespace, command: str) -> Training:
    """The opening of ``train`` and ``compare``: load ``--data`` (or the digits), split it,
    standardise it, and print the data summary and the columns left out."""
    data, classes = load_training_data(args)
    summary = describe_data(data, len(classes))
    train, test, y_train, y_test = split(data, args.test_size, args.seed)
    training = Training(train, test, y_train, y_test, None, data.source, data.target_name,
                        data.feature_names, data.identifiers)
    # the split's rows are copies: the whole matrix need not stay in memory from here on
    del data
    if args.standardize:
        training.scaler = standardize(train, test)
    rows = ("no test set" if test is None else
            f"{train.n_samples} train / {test.n_samples} test rows (seed {args.seed})")
    print(f"crossent {command}: {summary}; {rows}")
    left_out = describe_left_out(training.identifiers, args.drop)
    if left_out:
        print(left_out)
    return training


def describe_data(data: Any, n_classes: int) -> str:
    return (f"{data.source}: {data.n_samples} rows x {data.n_features} features, "
            f"{n_classes} classes")


def describe_left_out(identifiers: Sequence[str], dropped: Sequence[str]) -> str | None:
    """``columns left out: id (identifies rows), ash (--drop)``, or None."""
    parts = [f"{name} (identifies rows)" for name in identifiers]
    parts += [f"{name} (--drop)" for name in dropped]
    return "columns left out: " + ", ".join(parts) if parts else None


def label_indices(model: Any, labels: np.ndarray, source: str) -> np.ndarray:
    """Positions of ``labels`` in ``model.classes_`` (or in ``model``, an array of classes);
    one-line error for unknown labels."""
    classes = np.asarray(getattr(model, "classes_", model))
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


STANDARDIZE_HINT = "standardise the features (leave out --no-standardize)"


def fit_with_curves(model: Any, training: Training, *, track: bool, desc: str,
                    label: str = "") -> tuple[Any, float]:
    """Fit ``model`` on ``training.train``; returns ``(curves, seconds)``.

    A fit that diverges is a :class:`UsageError` that names the command's ``--lr``; a fit
    that does not converge is no warning here (:func:`convergence` reports how it ended).

    With ``track``, log loss and accuracy on the training and test sets are recorded after
    every iteration (this costs a prediction pass per iteration, so it is off unless a plot
    or a table needs it; the reported fit time excludes it).
    """
    from ..metrics import accuracy, log_loss
    from ..plots import LearningCurves

    train, test = training.train, training.test
    y_train, y_test = training.y_train, training.y_test
    curves = LearningCurves(label=label)
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

        from ..classifier import TrainingDiverged

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            start = time.perf_counter()
            try:
                model.fit(train.X, train.y, callback=callback)
            except TrainingDiverged:
                raise UsageError(
                    f"{model.solver} diverged (the objective is no longer finite) with a "
                    f"learning rate of {model.learning_rate_:.3g}; lower --lr"
                    + ("" if training.scaler is not None else f", or {STANDARDIZE_HINT}")
                ) from None
            seconds = time.perf_counter() - start - tracking_time
    return curves, seconds


def convergence(model: Any, standardized: bool) -> str:
    """How the fit ended, with the criterion that decided it and, when it did not converge,
    what to change, in the command's own options."""
    if model.tol is None:
        return "no early stopping"
    g, tol = model.max_abs_gradient_, model.tol
    measured = f"largest gradient entry {g:.2g}"
    if model.converged_:
        if g <= tol:
            return f"converged: {measured} <= tol {tol:g}"
        return f"converged: the objective stopped changing ({measured})"
    scale = "" if standardized else f", or {STANDARDIZE_HINT}"
    unit = "epochs" if model.solver == "sgd" else "iterations"
    if model.n_iter_ >= model.max_iter:
        return (f"not converged: {measured} > tol {tol:g} after --epochs {model.max_iter} "
                f"{unit}; raise --epochs{scale}")
    if model.solver == "sgd":
        remedy = "lower --lr or use --solver lbfgs" if standardized else STANDARDIZE_HINT
        return (f"not converged: the objective improved by less than {tol:g} for "
                f"{model.n_iter_no_change} epochs, but {measured} > tol {tol:g}; {remedy}")
    return f"not converged: {measured} > tol {tol:g}; L-BFGS-B stopped making progress{scale}"


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


def flush() -> None:
    """Show what is printed so far now (before a long fit), also when piped."""
    sys.stdout.flush()

"""Figures: learning curves, and the pictures that explain cross-entropy.

Every curve is computed by the library's own functions (the NumPy core for losses and
gradients, the classifier's loss functions for squared error), so a figure cannot disagree
with the numbers the library prints.

matplotlib is imported only inside these functions, and only its object-oriented API with the
Agg canvas is used: no ``pyplot``, no global backend switch, no window.  Each function returns
a :class:`matplotlib.figure.Figure`; :func:`save_figure` writes one as PNG, PDF, SVG, ...
(chosen by the file name), :func:`save_png` as PNG.  Needs matplotlib
(``pip install "crossent[plot]"``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .functional import binary_cross_entropy, softmax

__all__ = [
    "LearningCurves",
    "learning_curves_figure",
    "compare_figure",
    "binary_cross_entropy_figure",
    "softmax_figure",
    "loss_gradient_figure",
    "overview_figure",
    "save_png",
    "save_figure",
    "figure_format",
    "FIGURE_FORMATS",
    "FIGURE_NAME_HINT",
    "DPI",
]

DPI = 100
# Figure sizes in inches; at DPI these give the pixel sizes tests check.
CURVES_INCHES = (10.0, 4.0)  # 1000 x 400
SINGLE_INCHES = (6.0, 4.5)  # 600 x 450
OVERVIEW_INCHES = (11.0, 8.0)  # 1100 x 800

# The formats matplotlib writes with its own backends or Pillow (one of its dependencies);
# not pgf, which needs LaTeX.
FIGURE_FORMATS = ("png", "pdf", "svg", "svgz", "eps", "ps", "jpg", "jpeg", "tif", "tiff",
                  "webp", "gif")
# what to do about a figure file named otherwise (said by save_figure and by the commands)
FIGURE_NAME_HINT = f"name the file with one of {', '.join('.' + f for f in FIGURE_FORMATS)}"

_CE_COLOR = "tab:blue"
_SE_COLOR = "tab:orange"


@dataclass
class LearningCurves:
    """Per-iteration numbers of one training run (test lists stay empty without a test set)."""

    label: str = ""
    iteration: list[int] = field(default_factory=list)
    objective: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)


def _integer_ticks(*axes: Any) -> None:
    MaxNLocator = _matplotlib("matplotlib.ticker").MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _matplotlib(name: str) -> Any:
    from ._optional import import_module

    return import_module(name, "crossent's figures", "plot")


def _figure(inches: tuple[float, float]) -> Any:
    FigureCanvasAgg = _matplotlib("matplotlib.backends.backend_agg").FigureCanvasAgg
    Figure = _matplotlib("matplotlib.figure").Figure

    fig = Figure(figsize=inches, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, file: Any) -> None:
    """Write ``fig`` as PNG to a path or a binary file object, at the figure's own size."""
    save_figure(fig, file, "figure.png")


def figure_format(name: str | os.PathLike) -> str | None:
    """The format a figure named ``name`` is written in (its extension, lower case), or None
    when crossent cannot write that kind of file."""
    ext = os.path.splitext(os.fspath(name))[1].lower().lstrip(".")
    return ext if ext in FIGURE_FORMATS else None


def save_figure(fig: Any, file: Any, name: str | os.PathLike | None = None) -> None:
    """Write ``fig`` to a path or a binary file object in the format ``name``'s extension
    names (``name`` defaults to the path): PNG, PDF, SVG, EPS, ... (:data:`FIGURE_FORMATS`).
    Raster formats are drawn at the figure's own size in pixels (:data:`DPI`)."""
    if name is None:
        if not isinstance(file, (str, os.PathLike)):
            raise TypeError("save_figure needs the file name (its extension names the format)")
        name = file
    fmt = figure_format(name)
    if fmt is None:
        raise ValueError(f"cannot write a figure as {os.fspath(name)!r}: {FIGURE_NAME_HINT}")
    if isinstance(file, (str, os.PathLike)):
        with open(file, "wb") as fh:
            fig.savefig(fh, format=fmt, dpi=DPI)
    else:
        fig.savefig(file, format=fmt, dpi=DPI)


# --------------------------------------------------------------------------------------------
# Training curves
# --------------------------------------------------------------------------------------------


def learning_curves_figure(curves: LearningCurves, title: str = "") -> Any:
    """Two panels: log loss and accuracy per iteration, on the training and test sets."""
    fig = _figure(CURVES_INCHES)
    ax_loss, ax_acc = fig.subplots(1, 2)
    it = curves.iteration
    ax_loss.plot(it, curves.train_loss, color=_CE_COLOR, label="train")
    ax_acc.plot(it, curves.train_accuracy, color=_CE_COLOR, label="train")
    if curves.test_loss:
        ax_loss.plot(it, curves.test_loss, color=_SE_COLOR, label="test")
        ax_acc.plot(it, curves.test_accuracy, color=_SE_COLOR, label="test")
    ax_loss.set(xlabel="iteration", ylabel="log loss (nats)", yscale="log",
                title="cross-entropy of the predictions")
    ax_acc.set(xlabel="iteration", ylabel="accuracy", title="accuracy")
    _integer_ticks(ax_loss, ax_acc)
    accuracies = curves.train_accuracy + curves.test_accuracy
    if accuracies:
        ax_acc.set_ylim(*accuracy_range(accuracies))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return fig


def accuracy_range(values: list[float]) -> tuple[float, float]:
    """The y range of an accuracy panel: every value shown, with a little room, within
    [0, 1] plus that room."""
    lo, hi = min(values), max(values)
    pad = max(0.01, 0.05 * (hi - lo))
    return max(0.0, lo - pad), min(1.0, hi) + pad


def compare_figure(cross_entropy: LearningCurves, squared_error: LearningCurves,
                   title: str = "") -> Any:
    """Two panels, one curve per loss: the log loss of the predictions, and test accuracy
    (train accuracy dashed), per epoch."""
    fig = _figure(CURVES_INCHES)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for curves, color in ((cross_entropy, _CE_COLOR), (squared_error, _SE_COLOR)):
        has_test = bool(curves.test_loss)
        loss = curves.test_loss if has_test else curves.train_loss
        acc = curves.test_accuracy if has_test else curves.train_accuracy
        ax_loss.plot(curves.iteration, loss, color=color, label=curves.label)
        ax_acc.plot(curves.iteration, acc, color=color, label=f"{curves.label}")
        if has_test:
            ax_acc.plot(curves.iteration, curves.train_accuracy, color=color, ls="--",
                        alpha=0.6, label=f"{curves.label} (train)")
    which = "test" if cross_entropy.test_loss else "train"
    ax_loss.set(xlabel="epoch", ylabel="log loss (nats)", yscale="log",
                title=f"{which} log loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title=f"{which} accuracy")
    accuracies = [a for c in (cross_entropy, squared_error)
                  for a in c.train_accuracy + c.test_accuracy]
    if accuracies:
        ax_acc.set_ylim(*accuracy_range(accuracies))
    _integer_ticks(ax_loss, ax_acc)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------------------------
# The explanatory figures
# --------------------------------------------------------------------------------------------

_P = np.linspace(0.001, 0.999, 999)


def _draw_bce(ax: Any) -> None:
    ones, zeros = np.ones_like(_P), np.zeros_like(_P)
    ax.plot(_P, binary_cross_entropy(_P, ones, reduction="none"), color=_CE_COLOR,
            label="y = 1:  -ln p")
    ax.plot(_P, binary_cross_entropy(_P, zeros, reduction="none"), color=_SE_COLOR,
            label="y = 0:  -ln(1 - p)")
    ax.set(xlabel="predicted probability p of class 1", ylabel="loss (nats)", ylim=(0, 7),
           title="binary cross-entropy")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center")


def _draw_softmax(ax: Any, logits: np.ndarray) -> None:
    p = softmax(logits)
    k = np.arange(len(logits))
    bars = ax.bar(k, p, color=_CE_COLOR)
    for bar, value in zip(bars, p):
        ax.annotate(f"{value:.3f}", (bar.get_x() + bar.get_width() / 2, value),
                    ha="center", va="bottom", fontsize=9)
    ax.set_xticks(k, [f"class {i}\nz = {z:g}" for i, z in enumerate(logits)])
    ax.set(ylabel="probability", ylim=(0, 1.1),
           title="softmax(z) = exp(z) / sum exp(z)")
    ax.grid(alpha=0.3, axis="y")


def _correct_class_curves() -> tuple[np.ndarray, ...]:
    """Losses and ``dloss/dz`` of the correct class, two classes, logits ``[0, z]``."""
    from ._row_losses import cross_entropy_rows, squared_error_rows

    z = np.log(_P) - np.log1p(-_P)  # the logit that gives p = softmax([0, z])[1]
    logits = np.column_stack([np.zeros_like(z), z])
    y = np.ones(len(z), dtype=np.int64)
    rows = np.ones(len(z))
    out = []
    for loss_rows in (cross_entropy_rows, squared_error_rows):
        per_row, grad = loss_rows(logits, y, None, 0.0, rows)
        out += [per_row, grad[:, 1]]
    return tuple(out)


def _draw_losses(ax: Any, curves: tuple[np.ndarray, ...]) -> None:
    ce, _, se, _ = curves
    ax.plot(_P, ce, color=_CE_COLOR, label="cross-entropy  -ln p")
    ax.plot(_P, se, color=_SE_COLOR, label="squared error  sum (p - onehot)^2")
    ax.set(xlabel="probability p of the correct class", ylabel="loss", ylim=(0, 5),
           title="loss")
    ax.grid(alpha=0.3)
    ax.legend()


def _draw_gradients(ax: Any, curves: tuple[np.ndarray, ...]) -> None:
    _, ce_grad, _, se_grad = curves
    ax.plot(_P, -ce_grad, color=_CE_COLOR, label="cross-entropy  1 - p")
    ax.plot(_P, -se_grad, color=_SE_COLOR, label="squared error  4 p (1 - p)^2")
    ax.set(xlabel="probability p of the correct class",
           ylabel="-dloss/dz (push on the correct logit)", ylim=(0, 1.05),
           title="gradient on the correct logit:\nsquared error stops pushing when badly wrong")
    ax.grid(alpha=0.3)
    ax.legend()


def binary_cross_entropy_figure() -> Any:
    """Binary cross-entropy against the predicted probability, for y = 1 and y = 0."""
    fig = _figure(SINGLE_INCHES)
    _draw_bce(fig.subplots())
    return fig


def softmax_figure(logits: Any = (2.0, 4.0, 0.5)) -> Any:
    """The softmax probabilities of a logits vector, as bars."""
    fig = _figure(SINGLE_INCHES)
    _draw_softmax(fig.subplots(), np.asarray(logits, dtype=np.float64))
    return fig


def loss_gradient_figure() -> Any:
    """Cross-entropy and squared error, and their gradients with respect to the correct
    class's logit, against that class's probability (two classes)."""
    fig = _figure(CURVES_INCHES)
    ax_loss, ax_grad = fig.subplots(1, 2)
    curves = _correct_class_curves()
    _draw_losses(ax_loss, curves)
    _draw_gradients(ax_grad, curves)
    return fig


def overview_figure(logits: Any = (2.0, 4.0, 0.5)) -> Any:
    """All of the above on one 2 x 2 page."""
    fig = _figure(OVERVIEW_INCHES)
    axes = fig.subplots(2, 2)
    _draw_bce(axes[0, 0])
    _draw_softmax(axes[0, 1], np.asarray(logits, dtype=np.float64))
    curves = _correct_class_curves()
    _draw_losses(axes[1, 0], curves)
    _draw_gradients(axes[1, 1], curves)
    return fig

"""crossent.plots: every figure is written as a real PNG of the documented size."""

from __future__ import annotations

import io
import struct
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from crossent import plots  # noqa: E402


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the PNG signature."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def render(fig) -> bytes:
    buf = io.BytesIO()
    plots.save_png(fig, buf)
    return buf.getvalue()


@pytest.mark.parametrize(("make", "size"), [
    (plots.binary_cross_entropy_figure, (600, 450)),
    (lambda: plots.softmax_figure([1.0, -2.0, 0.0, 3.0]), (600, 450)),
    (plots.loss_gradient_figure, (1000, 400)),
    (plots.overview_figure, (1100, 800)),
])
def test_explanatory_figures_are_pngs_of_their_size(make, size):
    data = render(make())
    assert png_size(data) == size
    assert 5_000 < len(data) < 300_000  # something was drawn, and it is not huge


def curves(n=30, test=True):
    c = plots.LearningCurves(label="cross-entropy")
    c.iteration = list(range(1, n + 1))
    c.objective = list(np.geomspace(2, 0.1, n))
    c.train_loss = list(np.geomspace(2, 0.05, n))
    c.train_accuracy = list(np.linspace(0.3, 1.0, n))
    if test:
        c.test_loss = list(np.geomspace(2, 0.2, n))
        c.test_accuracy = list(np.linspace(0.3, 0.95, n))
    return c


@pytest.mark.parametrize("test", [True, False])
def test_learning_curves_png(tmp_path, test):
    path = tmp_path / "curves.png"
    plots.save_png(plots.learning_curves_figure(curves(test=test), title="t"), path)
    assert png_size(path.read_bytes()) == (1000, 400)


def test_compare_png():
    se = curves()
    se.label = "squared error"
    assert png_size(render(plots.compare_figure(curves(), se, title="x"))) == (1000, 400)


def test_gradient_curves_come_from_the_library():
    """The loss/gradient figure's data: CE = -ln p, dCE/dz = p - 1, SE = 2 (1 - p)^2 and
    dSE/dz = -4 p (1 - p)^2 for two classes, computed by the classifier's loss functions."""
    pytest.importorskip("sklearn")
    ce, ce_grad, se, se_grad = plots._correct_class_curves()
    p = plots._P
    np.testing.assert_allclose(ce, -np.log(p), rtol=1e-9)
    np.testing.assert_allclose(ce_grad, p - 1, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(se, 2 * (1 - p) ** 2, rtol=1e-9)
    np.testing.assert_allclose(se_grad, -4 * p * (1 - p) ** 2, rtol=1e-7, atol=1e-12)


def test_no_pyplot_and_no_global_backend_change():
    """Figures use the Agg canvas directly: pyplot (and its global backend) is never loaded."""
    code = ("import sys; from crossent import plots; "
            "plots.save_png(plots.overview_figure(), '/dev/null'); "
            "print('matplotlib.pyplot' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def _drawn_texts(fig):
    """Every text the figure draws: titles, labels, legends, annotations, and the tick
    labels inside the axes' view (the others exist but are not drawn)."""
    for ax in fig.axes:
        yield from (ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts)
        legend = ax.get_legend()
        if legend is not None:
            yield from legend.get_texts()
        for axis, ticks in ((ax.xaxis, ax.get_xticklabels()), (ax.yaxis, ax.get_yticklabels())):
            lo, hi = sorted(axis.get_view_interval())
            yield from (t for t, loc in zip(ticks, axis.get_ticklocs())
                        if lo - 1e-9 <= loc <= hi + 1e-9)
    yield from fig.texts


@pytest.mark.parametrize("make", [
    plots.binary_cross_entropy_figure, plots.softmax_figure, plots.loss_gradient_figure,
    plots.overview_figure,
    lambda: plots.learning_curves_figure(curves(), title="a title of a usual length, on digits"),
    lambda: plots.compare_figure(curves(), curves(), title="cross-entropy vs squared error: "
                                 "softmax regression on digits (sgd, same step size)"),
])
def test_every_text_lies_inside_the_figure(make):
    """No title or label is clipped (the right panel's title of the loss/gradient figure
    ran off the edge)."""
    fig = make()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    for text in _drawn_texts(fig):
        if not text.get_text() or not text.get_visible():
            continue
        box = text.get_window_extent(renderer)
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height, (
            text.get_text(), box)


def test_accuracy_axes_show_every_point():
    """The y range comes from the data: early iterations at 10% accuracy are not cut off."""
    c = curves()
    c.train_accuracy[0], c.test_accuracy[0] = 0.1, 0.05
    fig = plots.learning_curves_figure(c)
    lo, hi = fig.axes[1].get_ylim()
    assert lo <= 0.05 and hi >= 1.0
    se = curves()
    se.test_accuracy[0] = 0.02
    lo, _ = plots.compare_figure(curves(), se).axes[1].get_ylim()
    assert lo <= 0.02
    assert plots.accuracy_range([0.9, 0.95]) == (pytest.approx(0.89), pytest.approx(0.96))


@pytest.mark.parametrize(("name", "magic"), [
    ("f.png", b"\x89PNG"), ("f.pdf", b"%PDF-"), ("f.svg", b"<?xml"), ("f.eps", b"%!PS-Adobe"),
    ("f.jpg", b"\xff\xd8\xff"), ("F.TIFF", b"II*\x00"), ("f.webp", b"RIFF"),
])
def test_save_figure_writes_the_format_its_name_says(tmp_path, name, magic):
    path = tmp_path / name
    plots.save_figure(plots.softmax_figure(), path)
    assert path.read_bytes().startswith(magic)


def test_save_figure_refuses_unknown_formats(tmp_path):
    assert plots.figure_format("x.pgf") is None and plots.figure_format("x") is None
    with pytest.raises(ValueError, match=r"cannot write a figure as '.*x.docx': name the file "
                                         r"with one of .png, .pdf"):
        plots.save_figure(plots.softmax_figure(), tmp_path / "x.docx")
    assert not (tmp_path / "x.docx").exists()

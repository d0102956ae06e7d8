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

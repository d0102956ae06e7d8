"""``crossent plot`` end to end (subprocess): every figure is a real PNG of its size."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from cli_support import crossent

pytest.importorskip("matplotlib")


def png_size(path) -> tuple[int, int]:
    with open(path, "rb") as fh:
        data = fh.read(24)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize(("figure", "size"), [
    ("overview", (1100, 800)),
    ("bce", (600, 450)),
    ("softmax", (600, 450)),
    ("losses", (1000, 400)),
])
def test_each_figure(tmp_path, figure, size):
    result = crossent("plot", figure, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"saved to {figure}.png" in result.stdout
    assert png_size(tmp_path / f"{figure}.png") == size


def test_out_logits_and_force(tmp_path):
    out = tmp_path / "s.png"
    assert crossent("plot", "softmax", "--logits", "1", "2", "3", "4", "--out",
                    str(out)).returncode == 0
    before = out.read_bytes()
    again = crossent("plot", "softmax", "--out", str(out))
    assert again.returncode == 2 and again.stdout == ""
    assert again.stderr.strip() == (f"crossent plot: error: --out {out} exists; pass --force "
                                    "to overwrite it")
    assert out.read_bytes() == before
    assert crossent("plot", "softmax", "--out", str(out), "--force").returncode == 0
    assert out.read_bytes() != before


@pytest.mark.parametrize(("args", "fragment"), [
    (["softmax", "--logits", "1"], "--logits must be at least 2 finite numbers, got 1.0"),
    (["softmax", "--logits", "1", "inf"], "--logits must be at least 2 finite numbers"),
    (["nonsense"], "argument figure: invalid choice: 'nonsense'"),
    (["--out", "/no/such/dir/x.png"], "the directory /no/such/dir does not exist"),
])
def test_bad_input(tmp_path, args, fragment):
    result = crossent("plot", *args, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert fragment in lines[0]


def _edge_pixels(path) -> np.ndarray:
    """The outermost two rows and columns of a PNG, as RGB."""
    from matplotlib.image import imread

    image = imread(path)[..., :3]
    return np.concatenate([image[:2].reshape(-1, 3), image[-2:].reshape(-1, 3),
                           image[:, :2].reshape(-1, 3), image[:, -2:].reshape(-1, 3)])


@pytest.mark.parametrize("figure", ["losses", "overview"])
def test_nothing_is_clipped_at_the_edges(tmp_path, figure):
    """Every title and label lies inside the picture: its border is background (the right
    panel's title of 'losses' used to run off the edge)."""
    result = crossent("plot", figure, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    edges = _edge_pixels(tmp_path / f"{figure}.png")
    assert np.all(edges == 1.0), np.argwhere(edges != 1.0)[:5]


def test_other_formats_by_extension(tmp_path):
    result = crossent("plot", "bce", "--out", "bce.svg", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "bce.svg").read_text().lstrip().startswith("<?xml")
    result = crossent("plot", "softmax", "--out", "s.pdf", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "s.pdf").read_bytes()[:5] == b"%PDF-"

"""``crossent compare`` end to end (subprocess): two learning curves and one plot."""

from __future__ import annotations

import re
import struct

import numpy as np
import pytest
from cli_support import crossent

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")


def png_size(path) -> tuple[int, int]:
    with open(path, "rb") as fh:
        data = fh.read(24)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_compare_on_digits_writes_the_default_plot(tmp_path):
    result = crossent("compare", "--epochs", "4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "both models: sgd, 4 epochs, learning rate" in out
    rows = re.findall(r"^(\d+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)"
                      r"\s+([0-9.]+)$", out, re.M)
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4]
    values = np.array(rows, dtype=float)
    assert np.all((values[:, [3, 6]] > 0.5) & (values[:, [3, 6]] <= 1))  # accuracies
    # the measured answer: after one epoch cross-entropy is ahead of squared error
    assert values[0, 3] > values[0, 6]
    assert "plot saved to compare.png" in out
    assert png_size(tmp_path / "compare.png") == (1000, 400)
    again = crossent("compare", "--epochs", "1", cwd=tmp_path)
    assert again.returncode == 2
    assert again.stderr.strip() == ("crossent compare: error: --plot compare.png exists; pass "
                                    "--force to overwrite it")


def test_compare_csv_gd(tmp_path):
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 80)
    X = rng.standard_normal((80, 2)) + y[:, None]
    path = tmp_path / "d.csv"
    path.write_text("u,v,y\n" + "".join(f"{a},{b},{c}\n" for (a, b), c in zip(X, y)))
    result = crossent("compare", "--data", str(path), "--solver", "gd", "--epochs", "3",
                      "--test-size", "0", "--plot", str(tmp_path / "c.png"))
    assert result.returncode == 0, result.stderr
    assert "curves: train set" in result.stdout
    assert re.search(r"^iteration\s+objective", result.stdout, re.M)
    assert png_size(tmp_path / "c.png") == (1000, 400)


def test_compare_bad_input(tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("a,y\n1,0\n2,0\n")
    result = crossent("compare", "--data", str(path), "--plot", str(tmp_path / "c.png"))
    assert result.returncode == 2
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "holds only one class" in result.stderr

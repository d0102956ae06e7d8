"""``crossent compare`` end to end (subprocess): two learning curves and one plot."""

from __future__ import annotations

import re
import struct
from pathlib import Path

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


def curves(out: str) -> np.ndarray:
    """The table's rows: epoch, then objective, log loss, accuracy of each loss."""
    rows = re.findall(r"^(\d+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)"
                      r"\s+([0-9.]+)$", out, re.M)
    return np.array(rows, dtype=float)


def test_compare_on_digits_writes_the_default_plot(tmp_path):
    """The default data (standardised digits): cross-entropy ahead after one epoch, and its
    test log loss the lower at every epoch (the Learn page's why-cross-entropy narrative, whose
    printed numbers tests/test_docs.py checks)."""
    result = crossent("compare", "--epochs", "10", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "both models: sgd, 10 epochs, learning rate" in out
    assert "standardised features; curves: test set" in out
    values = curves(out)
    assert values[:, 0].tolist() == list(range(1, 11))
    assert np.all((values[:, [3, 6]] > 0.5) & (values[:, [3, 6]] <= 1))  # accuracies
    # the measured answer: after one epoch cross-entropy is ahead of squared error, and its
    # test log loss is the lower at every epoch
    assert values[0, 3] > values[0, 6] and np.all(values[:, 2] < values[:, 5])
    assert "plot saved to compare.png" in out
    assert png_size(tmp_path / "compare.png") == (1000, 400)
    again = crossent("compare", "--epochs", "1", cwd=tmp_path)
    assert again.returncode == 2
    assert again.stderr.strip() == ("crossent compare: error: --plot compare.png exists; pass "
                                    "--force to overwrite it")


def test_the_narrative_of_raw_pixels(tmp_path):
    """Unscaled digits: squared error's accuracy falls over its first four epochs while
    cross-entropy's rises, as docs/learn/why-cross-entropy.md says."""
    result = crossent("compare", "--epochs", "4", "--no-standardize", "--plot",
                      str(tmp_path / "raw.svg"))
    assert result.returncode == 0, result.stderr
    values = curves(result.stdout)
    assert values[3, 6] < values[0, 6] and values[3, 3] > values[0, 3]
    page = (Path(__file__).resolve().parents[1] / "docs/learn/why-cross-entropy.md").read_text()
    said = " ".join(page.split())
    assert (f"Squared error's accuracy then *falls* for three more epochs, to "
            f"{values[3, 6]:.4f}, while cross-entropy's climbs to {values[3, 3]:.4f}") in said
    assert (tmp_path / "raw.svg").read_text().lstrip().startswith("<?xml")


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

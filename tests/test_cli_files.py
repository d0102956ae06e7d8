"""Files, large and broken, given to the ``crossent`` command (subprocesses): memory within a
small multiple of the file, progress and the data summary before training, out of memory,
oversized or crafted ``.npz`` files, files that are not models, and outputs that would
overwrite an input."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from cli_support import assert_usage_error, crossent, peak_rss_bytes

pytest.importorskip("sklearn")
pytest.importorskip("pandas")

MiB = 1 << 20


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory):
    """About 18 MiB of CSV: 120,000 rows of 20 numbers (four decimals) and a label."""
    import pandas as pd

    rng = np.random.default_rng(0)
    n, d = 120_000, 20
    frame = pd.DataFrame(np.round(rng.standard_normal((n, d)) * 10, 4),
                         columns=[f"x{j}" for j in range(d)])
    frame["label"] = rng.integers(0, 3, n)
    path = tmp_path_factory.mktemp("big") / "big.csv"
    frame.to_csv(path, index=False, float_format="%.4f")
    return path


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("small") / "small.csv"
    rng = np.random.default_rng(1)
    rows = [f"{a:.3f},{b:.3f},{i % 3}" for i, (a, b) in enumerate(rng.standard_normal((60, 2)))]
    path.write_text("a,b,y\n" + "\n".join(rows) + "\n")
    return path


def test_training_on_a_large_csv_stays_within_a_small_multiple_of_the_file(big_csv, small_csv):
    """The peak memory of ``crossent train`` (the process's own, VmHWM) grows by less than
    three times the file's size on an 18 MiB file: the float64 table, pandas' parse of one
    chunk and the split (crossent's first reader, on the csv module, needed about ten
    times)."""
    base, result = peak_rss_bytes("train", "--data", str(small_csv), "--epochs", "1")
    assert result.returncode == 0, result.stderr
    peak, result = peak_rss_bytes("train", "--data", str(big_csv), "--epochs", "1")
    assert result.returncode == 0, result.stderr
    assert "big.csv: 120000 rows x 20 features, 3 classes" in result.stdout
    size = os.path.getsize(big_csv)
    assert 16 * MiB < size < 24 * MiB
    assert peak - base < 3 * size, (peak - base) / size


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM (Linux)")
@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_applying_a_model_to_a_large_csv_holds_one_copy_of_it(big_csv, tmp_path, command):
    """``evaluate`` and ``predict`` turn the table they read into the feature matrix in place,
    and ``predict`` streams its CSV out: the peak memory grows by what reading the file takes
    (the float64 table and a chunk of pandas' parse: about 2.5 tables of 19 MiB here), not
    also by a second copy of the features (3.4 tables) and the output held twice (5.2)."""
    from crossent.classifier import SoftmaxRegression, save_model

    rng = np.random.default_rng(2)
    names = [f"x{j}" for j in range(20)]
    model = tmp_path / "m.npz"
    save_model(SoftmaxRegression().fit(rng.standard_normal((60, 20)), np.arange(60) % 3),
               model, feature_names=names, metadata={"target": "label"})
    small = tmp_path / "small.csv"
    small.write_text(",".join(names + ["label"]) + "\n" + "".join(
        ",".join(["0.5"] * 20) + f",{i % 3}\n" for i in range(60)))

    def peak(data):
        out = ["--out", str(tmp_path / f"{data.stem}.out")] if command == "predict" else []
        bytes_, result = peak_rss_bytes(command, "--model", str(model), "--data", str(data),
                                        *out)
        assert result.returncode == 0, result.stderr
        return bytes_

    table = 120_000 * 21 * 8
    grown = peak(big_csv) - peak(small)
    assert grown < 3 * table, grown / table


def test_a_large_file_shows_progress_and_the_summary_comes_before_training(big_csv):
    """On a terminal a bar counts the bytes read; the data summary is printed (and flushed)
    while the model still trains: here the run is interrupted after it, with Ctrl-C."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _AS_ON_A_TERMINAL, "train", "--data", str(big_csv),
         "--solver", "gd", "--epochs", "100000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert first.startswith("crossent train: ") and "120000 rows x 20 features" in first
        assert proc.stdout.readline().startswith("model: SoftmaxRegression")
        assert proc.poll() is None  # still training
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "reading big.csv" in err and "B/s" in err  # the byte bar (tqdm, on the "terminal")
    assert err.rstrip().splitlines()[-1].endswith("crossent train: interrupted")
    assert "Traceback" not in err and "\ntest " not in out


# Runs `crossent ARGS` with a standard error that says it is a terminal, as tqdm asks.
_AS_ON_A_TERMINAL = """\
import io, runpy, sys
class Terminal(io.TextIOWrapper):
    def isatty(self):
        return True
sys.stderr = Terminal(sys.stderr.buffer, encoding="utf-8", line_buffering=True)
runpy.run_module("crossent", run_name="__main__", alter_sys=True)
"""


def test_out_of_memory_is_one_line(tmp_path):
    """A real MemoryError: 2**59 calibration bins want 4 EiB, more than any address space
    holds, so the allocation fails on every machine (whatever its overcommit setting)."""
    np.save(tmp_path / "p.npy", np.array([[0.8, 0.2], [0.3, 0.7]]))
    np.save(tmp_path / "y.npy", np.array([0, 1]))
    result = crossent("score", "p.npy", "y.npy", "--bins", str(2**59), cwd=tmp_path)
    assert_usage_error(result, "out of memory (Unable to allocate 4.00 EiB for an array with "
                               "shape (576460752303423488,) and data type int64); use a smaller "
                               "file or a machine with more memory")


# --------------------------------------------------------------------------------------------
# .npz files: refused before anything is allocated
# --------------------------------------------------------------------------------------------


def _npz_with_member(path, name, header_shape, dtype="<f8", data=b"", compress=False):
    """An .npz whose member ``name`` declares ``header_shape`` but holds ``data``."""
    header = {"descr": dtype, "fortran_order": False, "shape": header_shape}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
                         ) as archive:
        archive.writestr(name + ".npy", buf.getvalue() + data)
        small = io.BytesIO()
        np.save(small, np.arange(3))
        archive.writestr("y.npy", small.getvalue())


@pytest.mark.parametrize(("shape", "stored", "message"), [
    # the crafted file: 4.5 GiB declared, 4.6 MB stored
    ((9_437_184, 64), 4_600_000, "declares an array of shape (9437184, 64) (4.5 GiB) but "
                                 "holds only 4.4 MiB of data: the file is truncated or corrupt"),
    ((1 << 24, 1 << 20), 0, "declares an array of shape (16777216, 1048576) (131072.0 GiB) "
                            "but holds only 0 bytes of data"),
])
def test_an_npz_member_larger_than_its_data_is_refused_before_allocating(tmp_path, shape,
                                                                          stored, message):
    path = tmp_path / "crafted.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("X.npy", header.getvalue() + bytes(stored))
        archive.writestr("y.npy", b"")
    assert path.stat().st_size < 50_000  # zeros compress
    assert_usage_error(crossent("train", "--data", str(path)), f"array 'X' {message}")


def test_an_array_larger_than_the_memory_is_refused_before_allocating(tmp_path):
    """A consistent .npy file (a sparse one: no disk used) whose array needs twice the
    memory available."""
    from crossent.datasets import available_memory

    available = available_memory()
    if available is None:
        pytest.skip("the available memory is unknown here")
    rows = 2 * available // (64 * 8)
    path = tmp_path / "huge.npy"
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": "<f8", "fortran_order": False, "shape": (rows, 64)})
        fh.truncate(fh.tell() + rows * 64 * 8)
    if path.stat().st_blocks * 512 > 1 << 20:
        pytest.skip("this file system does not make sparse files")
    result = crossent("train", "--data", str(path))
    assert_usage_error(result, f"{path} (an array of shape ({rows}, 64), float64) needs ")
    assert "GiB of memory, but only" in result.stderr


# --------------------------------------------------------------------------------------------
# Model files that are not crossent models: one line that names the file and the problem
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_arrays(tmp_path_factory):
    """The arrays of a real model file (trained by the command line on a small table)."""
    folder = tmp_path_factory.mktemp("models")
    data = folder / "d.csv"
    rng = np.random.default_rng(2)
    X = rng.standard_normal((60, 2))
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)
    data.write_text("a,b,y\n" + "".join(f"{a:.4f},{b:.4f},{c}\n" for (a, b), c in zip(X, y)))
    model = folder / "model.npz"
    assert crossent("train", "--data", str(data), "--out", str(model)).returncode == 0
    with np.load(model, allow_pickle=False) as saved:
        arrays = dict(saved)
    return folder, data, arrays


@pytest.mark.parametrize(("change", "fragment"), [
    ("csv", "is not a crossent model: it is not an .npz archive"),
    ({"coef": np.array([["a", "b"]] * 3)}, "coef must hold floating-point numbers, got <U1"),
    ({"coef": np.zeros((2, 2))}, "coef (2, 2) and intercept (3,) do not fit 3 classes"),
    ({"classes": np.array([0, 0, 1])}, "classes must be at least 2 distinct labels in sorted "
                                       "order, got [0, 0, 1]"),
    ({"coef": np.full((3, 2), np.nan)}, "coef holds values that are not finite"),
    ({"feature_scale": np.array([1.0, -2.0])}, "feature_scale must be positive"),
    ({"meta": np.array(json.dumps({"format": "other/1"}))}, "is not a crossent model: format "
                                                            "'other/1'"),
    ("pickled", "array 'coef' holds Python objects (pickled), which crossent does not load"),
])
def test_a_file_that_is_not_a_crossent_model(model_arrays, change, fragment):
    folder, data, arrays = model_arrays
    path = folder / "crafted.npz"
    if change == "csv":
        path.write_bytes(data.read_bytes())  # a CSV file renamed to .npz
    elif change == "pickled":
        np.savez(path, **{**arrays, "coef": np.array([object()] * 3, dtype=object)})
    else:
        np.savez(path, **{**arrays, **change})
    result = crossent("predict", "--model", str(path), "--data", str(data))
    assert_usage_error(result, f"{path} ")
    assert fragment in result.stderr
    assert "allow_pickle" not in result.stderr


# --------------------------------------------------------------------------------------------
# Option values and output files
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "fragment"), [
    (["train", "--seed", "-1"], "argument --seed: expected an integer in [0, 4294967295], "
                                "got '-1'"),
    (["train", "--seed", "4294967296"], "argument --seed: expected an integer in"),
    (["compare", "--seed", "1.5"], "argument --seed: expected an integer in"),
    (["train", "--plot", "curves"], "--plot curves: cannot write a figure of that type; name "
                                    "the file with one of .png, .pdf, .svg"),
    (["train", "--plot", "curves.xyz"], "--plot curves.xyz: cannot write a figure"),
    (["plot", "--out", "figure.docx"], "--out figure.docx: cannot write a figure"),
    (["train", "--drop", "id"], "--drop needs --data"),
])
def test_bad_option_values_name_the_option(tmp_path, args, fragment):
    assert_usage_error(crossent(*args, cwd=tmp_path), fragment)


@pytest.mark.parametrize("option", ["--out", "--plot"])
def test_an_output_that_is_the_input_is_refused_even_with_force(small_csv, tmp_path, option):
    link = tmp_path / "same.png"
    os.symlink(small_csv, link)  # the same file under another name
    before = small_csv.read_bytes()
    for target in (small_csv, link):
        result = crossent("train", "--data", str(small_csv), option, str(target), "--force")
        assert_usage_error(result, f"{option} {target} is the input file of --data; choose "
                                   "another name")
    assert small_csv.read_bytes() == before
    predict = crossent("predict", "--model", str(small_csv), "--data", str(small_csv),
                       "--out", str(small_csv), "--force")
    assert_usage_error(predict, "is the input file of --data")

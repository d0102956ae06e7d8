"""``benchmarks/bench_gpu.py`` is ready for its one GPU run: the whole script runs on a CPU
(``--dry-run``: tiny shapes in Triton's interpreter) and checks itself, and its verdicts turn
wrong numbers into a failing exit status and missed targets into a clear line."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_gpu.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_runs_the_whole_script(tmp_path):
    out = tmp_path / "smoke.csv"
    env = {**os.environ, "CROSSENT_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)  # the script sets it itself, before importing triton
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--csv", str(out)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "all self-checks passed (the dry run checks no targets)" in proc.stdout
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert set(_load().FIELDS) == set(rows[0])
    by = {(r["part"], r["provider"], r["dtype"], r["N"]): r for r in rows}
    for name in ("crossent", "crossent[rows]", "crossent[vocab]", "naive",
                 "torch.linear_cross_entropy", "torch.compile"):
        row = next(r for k, r in by.items() if k[:2] == ("linear", name))
        assert row["check"].startswith("ok"), row
        assert float(row["median_ms"]) > 0
    assert "schedule=vocab block=128" in next(
        r for k, r in by.items() if k[:2] == ("linear", "crossent[vocab]"))["plan"]
    for dtype in ("bf16", "fp32"):
        ce = [r for k, r in by.items() if k[0] == "ce" and k[2] == dtype]
        assert {r["provider"] for r in ce} >= {"torch", "crossent", "crossent-kernel[split]"}
        assert all(r["check"].startswith(("ok", "skipped")) for r in ce), ce
        assert all(float(r["median_ms"]) > 0 for r in ce if r["check"].startswith("ok"))


def _rows(crossent_ms=10.0, beyond=900.0, pct=90.0, check="ok loss 1e-3"):
    base = dict(part="linear", dtype="bf16", N=8192, D=4096, V=128256)
    return [
        dict(base, provider="naive", median_ms=40.0, check="ok"),
        dict(base, provider="torch.compile", median_ms=30.0, check="ok"),
        dict(base, provider="liger", check="skipped (liger_kernel not installed)"),
        dict(base, provider="crossent", median_ms=crossent_ms, beyond_grads_mib=beyond,
             check=check),
        dict(part="ce", provider="crossent", dtype="fp32", N=16384, V=131072,
             pct_copy=pct, check="ok"),
        dict(part="ce", provider="torch", dtype="fp32", N=16384, V=131072, pct_copy=20.0,
             check="ok"),
    ]


def test_verdicts_on_a_gpu():
    bench = _load()
    cuda = torch.device("cuda")
    rows = _rows()
    failures, misses = bench.verdicts(rows, cuda)
    assert failures == [] and misses == []
    assert rows[3]["target"] == "met: 0.94 GB <= 1.2 GB, faster than naive, faster than " \
                                "torch.compile"
    # slower than a peer, over the memory target, under 85% of the copy bandwidth
    rows = _rows(crossent_ms=35.0, beyond=1200.0, pct=80.0)
    failures, misses = bench.verdicts(rows, cuda)
    assert failures == []
    assert any("not faster than torch.compile (30.0 ms)" in m for m in misses)
    assert any("1.26 GB beyond the gradients > 1.2 GB" in m for m in misses)
    assert any("80.0% of the copy bandwidth < 85%" in m for m in misses)
    # wrong numbers, or a crossent provider that failed, are failures (also on a CPU)
    rows = _rows(check="FAIL loss 1e-1 dh 2e-1 dW 1e-3")
    rows.append(dict(part="linear", provider="crossent[vocab]", dtype="bf16",
                     error="RuntimeError: boom"))
    rows.append(dict(part="linear", provider="naive", dtype="bf16", error="OutOfMemoryError"))
    failures, _ = bench.verdicts(rows, torch.device("cpu"))
    assert len(failures) == 2
    assert failures[0].startswith("FAIL linear crossent bf16 8192x4096x128256: FAIL loss")
    assert "RuntimeError: boom" in failures[1]

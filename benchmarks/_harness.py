"""What every benchmark script shares: fresh worker processes, peak memory, machine facts,
the table and the CSV.

How memory is measured: each (provider, shape) runs in its own Python process.  After a
warm-up call the worker records its resident set (VmRSS: inputs allocated and touched),
resets the kernel's high-water mark (``/proc/self/clear_refs``, value 5), makes one call and
reads the high-water mark (VmHWM).  Peak extra memory = VmHWM - VmRSS before the call: every
byte the call needed at its peak, the returned gradients included.  Where ``clear_refs`` is
missing (not Linux) it falls back to ``ru_maxrss`` and says so in the ``memory_method`` column.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

MiB = 1 << 20


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_kib_rusage() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux


def peak_extra_bytes(call: Callable[[], object]) -> tuple[int, str, object]:
    """Peak memory growth during one ``call()`` (warm up first): ``(bytes, method, result)``."""
    can_reset = _status_kib("VmHWM") is not None and _reset_peak()
    before = _status_kib("VmRSS") if can_reset else _peak_kib_rusage()
    result = call()
    peak = _status_kib("VmHWM") if can_reset else _peak_kib_rusage()
    return max(0, peak - before) * 1024, ("VmHWM-VmRSS" if can_reset else "ru_maxrss-RSS"), result


def measure(call: Callable[[], object], repeats: int, prepare: Callable[[], None] | None = None
            ) -> dict:
    """Warm up, then time ``repeats`` calls; the first timed call also gives peak memory.

    ``prepare`` runs before every call, outside the clock and before the memory baseline
    (e.g. a fresh copy of logits that the call is allowed to consume).
    """
    def once():
        if prepare is not None:
            prepare()

    once()
    result = call()  # warm-up: lazy imports, thread pools, compilation
    del result
    once()
    start = time.perf_counter()
    extra, method, result = peak_extra_bytes(call)
    times = [time.perf_counter() - start]
    del result
    for _ in range(repeats - 1):
        once()
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
        del result
    return {"times": times, "extra_bytes": extra, "memory_method": method}


def run_worker(script: Path, worker_args: Sequence[str], env: dict | None = None) -> dict:
    """Run ``script --worker ...`` in a fresh interpreter; it prints one JSON line last."""
    cmd = [sys.executable, str(script), "--worker", *worker_args]
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-6:])
        return {"error": f"worker exited {proc.returncode}: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> dict:
    """CPU model, usable cores, memory and OS of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    mem_gib = None
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return {"cpu": cpu, "cores": cores, "memory_gib": mem_gib, "os": platform.platform()}


def versions(dists: Sequence[str] = ("crossent", "numpy", "scipy", "torch")) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in dists:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "-"
    return out


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def copy_bandwidth_gbs(megabytes: int = 512, repeats: int = 5) -> float:
    """This machine's memory copy bandwidth: median GB/s of ``np.copyto`` (read + write)."""
    import numpy as np

    src = np.ones(megabytes * MiB // 4, dtype=np.float32)
    dst = np.zeros_like(src)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    return 2 * src.nbytes / statistics.median(times) / 1e9


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]],
                right: set[int] | None = None) -> None:
    """A Markdown table (the README quotes it as printed)."""
    right = right or set()
    table = [list(header)] + [list(r) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for k, row in enumerate(table):
        cells = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths))]
        print("| " + " | ".join(cells) + " |")
        if k == 0:
            print("|" + "|".join(("-" * (w + 1) + ":") if i in right else "-" * (w + 2)
                                 for i, w in enumerate(widths)) + "|")


def write_csv(path: Path, rows: Sequence[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nwrote {path}")

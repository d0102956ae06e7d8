"""Running the ``crossent`` command in a subprocess, as a user does, and checking the error
policy every sub-command shares (``tests/support`` is on pytest's ``pythonpath``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Run as a script by `python -c`: the packages named in argv[1] (comma-separated) cannot be
# imported, as in an installation without them, then `python -m crossent argv[2:]` runs.
_WITHOUT = """\
import importlib.abc, runpy, sys

class Absent(importlib.abc.MetaPathFinder):
    def __init__(self, names):
        self.names = names

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Absent(set(sys.argv[1].split(","))))
del sys.argv[1]
runpy.run_module("crossent", run_name="__main__", alter_sys=True)
"""


def _result(proc: subprocess.CompletedProcess, args: tuple[str, ...]
            ) -> subprocess.CompletedProcess:
    proc.command = args[0] if args else ""  # the sub-command, for assert_usage_error
    return proc


def crossent(*args: str, cwd=None, timeout: float = 300, env: dict | None = None
             ) -> subprocess.CompletedProcess:
    """``python -m crossent ARGS`` with its output captured."""
    proc = subprocess.run([sys.executable, "-m", "crossent", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd,
                          env=None if env is None else {**os.environ, **env})
    return _result(proc, args)


def crossent_without(packages: tuple[str, ...], *args: str, cwd=None, timeout: float = 120
                     ) -> subprocess.CompletedProcess:
    """``python -m crossent ARGS`` in a process where ``packages`` cannot be imported."""
    proc = subprocess.run([sys.executable, "-c", _WITHOUT, ",".join(packages), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)
    return _result(proc, args)


def python_without(packages: tuple[str, ...], code: str) -> subprocess.CompletedProcess:
    """``python -c CODE`` where ``packages`` cannot be imported."""
    blocker = _WITHOUT.split("del sys.argv[1]")[0]
    return subprocess.run([sys.executable, "-c", blocker + code, ",".join(packages)],
                          capture_output=True, text=True, timeout=120)


# Runs ``crossent ARGS``, then writes the process's own peak resident memory to stderr.
# VmHWM counts this program's memory alone; a child's ru_maxrss (wait4) also keeps the
# high-water mark of the test process it was forked from, so once scikit-learn is loaded in
# pytest every run would read the same peak, the test process's.
_WITH_PEAK = """\
import atexit, runpy, sys
def peak():
    with open("/proc/self/status") as fh:
        kib = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    sys.stderr.write(f"\\npeak {kib}\\n")
atexit.register(peak)
runpy.run_module("crossent", run_name="__main__", alter_sys=True)
"""


def peak_rss_bytes(*args: str, cwd=None) -> tuple[int, subprocess.CompletedProcess]:
    """Run ``python -m crossent ARGS``; its own peak resident memory (VmHWM, Linux) and its
    result (stderr without the line that reported the peak)."""
    proc = subprocess.run([sys.executable, "-c", _WITH_PEAK, *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)
    err, _, kib = proc.stderr.rpartition("\npeak ")
    result = subprocess.CompletedProcess([sys.executable, "-m", "crossent", *args],
                                         proc.returncode, proc.stdout, err)
    return int(kib) * 1024, _result(result, args)


def assert_usage_error(result: subprocess.CompletedProcess, fragment: str, *,
                       after_summary: bool = False) -> None:
    """Exit status 2, nothing on stdout, one readable line on stderr naming the sub-command,
    no traceback.  With ``after_summary`` (an error while training), stdout holds the data
    summary that was printed before training started, and nothing after it."""
    command = getattr(result, "command", None) or result.args[3]
    assert result.returncode == 2, (result.stdout, result.stderr)
    if after_summary:
        lines = result.stdout.splitlines()
        assert lines and lines[0].startswith(f"crossent {command}: "), result.stdout
        assert lines[-1].startswith(("model: ", "both models: ", "columns left out: ")) \
            or len(lines) == 1, result.stdout
    else:
        assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith(f"crossent {command}: error: "), lines[0]
    assert fragment in lines[0], lines[0]


def real_table(name: str, folder: Path, **to_csv) -> Path:
    """scikit-learn's ``wine``, ``breast_cancer``, ``iris`` or ``diabetes`` table, exported
    to ``folder/<name>.csv`` with pandas' ``to_csv(**to_csv)`` (default: no index)."""
    import sklearn.datasets

    frame = getattr(sklearn.datasets, f"load_{name}")(as_frame=True).frame
    path = folder / f"{name}.csv"
    frame.to_csv(path, **{"index": False, **to_csv})
    return path

"""Running the ``crossent`` command in a subprocess, as a user does, and checking the error
policy every sub-command shares (``tests/support`` is on pytest's ``pythonpath``)."""

from __future__ import annotations

import subprocess
import sys


def crossent(*args: str, cwd=None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m crossent ARGS`` with its output captured."""
    return subprocess.run([sys.executable, "-m", "crossent", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


def assert_usage_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    """Exit status 2, nothing on stdout, one readable line on stderr naming the sub-command,
    no traceback."""
    command = result.args[3]  # [python, -m, crossent, COMMAND, ...]
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith(f"crossent {command}: error: "), lines[0]
    assert fragment in lines[0], lines[0]

"""The command-line transcripts in the README and in docs/use/cli.md are what the commands
print.

A page's fenced blocks run in order in one temporary folder: a ```console block's
``$ crossent ...`` lines are run as commands and their output (standard output, then standard
error) compared with the lines under them, where ``...`` stands for any text (fit times);
``$ python -c CODE`` lines and (in the guide) ```python blocks, which write the example
tables, are executed; ``>>>`` examples run as doctests; a block marked
``<!-- not run: ... -->`` is skipped.  These are the
conventions of the documentation site's own test (``tests/test_docs.py``), which runs every
page under ``docs/`` once that test is there; this module then checks only the README.
"""

from __future__ import annotations

import doctest
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
GUIDE = "docs/use/cli.md"
PAGES = ("README.md",) + (() if (ROOT / "tests" / "test_docs.py").exists() else (GUIDE,))
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
NOT_RUN = re.compile(r"<!--\s*not run:.*?-->\s*$")


def blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced block that is run."""
    out = []
    for match in FENCE.finditer(text):
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        if not NOT_RUN.search(before):
            out.append((match.group(1), match.group(2)))
    return out


def matches(expected: str, printed: str) -> bool:
    """Equal but for trailing spaces; ``...`` in ``expected`` matches any text, and so does
    the README's fit time (it shows a real one)."""
    def tidy(text: str) -> str:
        text = re.sub(r"^(fit time\s+)[0-9.]+ s$", r"\1... s", text, flags=re.M)
        return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")

    pattern = ".*?".join(re.escape(part) for part in tidy(expected).split("..."))
    return re.fullmatch(pattern, tidy(printed), re.S) is not None


def run_console(body: str, cwd: Path, monkeypatch, where: str) -> None:
    for chunk in re.split(r"^\$ ", body, flags=re.M)[1:]:
        command, _, expected = chunk.partition("\n")
        argv = shlex.split(command)
        if argv[0] == "python":  # `python -c CODE`: writes an example table
            assert argv[1] == "-c" and len(argv) == 3 and not expected.strip(), command
            run_python(argv[2], cwd, monkeypatch, {})
            continue
        assert argv[0] == "crossent", f"{where}: `{command}` is not a crossent command"
        result = subprocess.run([sys.executable, "-m", "crossent", *argv[1:]], cwd=cwd,
                                capture_output=True, text=True, timeout=300,
                                env={**os.environ, "COLUMNS": "88"})
        printed = result.stdout + result.stderr
        assert ("error:" in expected) == (result.returncode != 0), (command, result.stderr)
        assert matches(expected, printed), (
            f"{where}: $ {command}\n--- the page says ---\n{expected}--- it prints ---\n"
            f"{printed}")


def run_python(source: str, cwd: Path, monkeypatch, namespace: dict) -> None:
    """Run the example's code in the page's folder (in this process: scikit-learn and pandas
    are imported already, which is quicker than a new interpreter)."""
    with monkeypatch.context() as patch:
        patch.chdir(cwd)
        if source.lstrip().startswith(">>>"):
            test = doctest.DocTestParser().get_doctest(source, namespace, "example", None, 0)
            runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS
                                           | doctest.NORMALIZE_WHITESPACE)
            report: list[str] = []
            runner.run(test, out=report.append, clear_globs=False)
            assert runner.failures == 0, "".join(report)
        else:
            exec(compile(source, "<example>", "exec"), namespace)


@pytest.mark.parametrize("page", PAGES)
def test_transcripts_are_what_the_commands_print(page, tmp_path, monkeypatch):
    found = blocks((ROOT / page).read_text())
    consoles = [body for lang, body in found if lang == "console"]
    assert sum(body.count("$ crossent ") for body in consoles) >= 2, f"{page}: no transcripts"
    namespace: dict = {}
    for lang, body in found:
        if lang == "console":
            run_console(body, tmp_path, monkeypatch, page)
        elif lang in ("python", "pycon") and page != "README.md":
            # (the README's Python is test_readme's: doctests, and sketches that are not run)
            run_python(body, tmp_path, monkeypatch, namespace)

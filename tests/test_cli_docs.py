"""The command-line transcripts in the README and in docs/use/cli.md are what the commands
print: every ```console block is run, in order, in one temporary folder per page, and its
output compared with the page's (standard output and standard error together, as a terminal
shows them; only the fit times, which differ from run to run, are left out).  The guide's
Python examples run as doctests."""

from __future__ import annotations

import doctest
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
PAGES = ("README.md", "docs/use/cli.md")
# these commands install or change the environment: shown, not run
NOT_RUN = ("pip ", "make ")


def transcripts(text: str) -> list[tuple[str, str]]:
    """``(command, expected output)`` for every ``$ `` line of every console block."""
    steps = []
    for block in re.findall(r"```console\n(.*?)```", text, re.S):
        for chunk in re.split(r"^\$ ", block, flags=re.M)[1:]:
            command, _, output = chunk.partition("\n")
            steps.append((command, output))
    return steps


def _without_times(text: str) -> str:
    return re.sub(r"^(fit time\s+)[0-9.]+ s$", r"\1<time> s", text, flags=re.M)


def run(command: str, cwd: Path, monkeypatch) -> str:
    """What ``command`` prints, run in ``cwd``.  ``python -c CODE`` lines only write the
    example tables, so they run here, in this process (which has scikit-learn and pandas
    imported already), which is quicker than a fresh interpreter."""
    argv = shlex.split(command)
    if argv[0] == "python":
        assert argv[1] == "-c" and len(argv) == 3, command
        with monkeypatch.context() as patch:
            patch.chdir(cwd)
            exec(compile(argv[2], "<transcript>", "exec"), {})
        return ""
    assert argv[0] == "crossent", command
    result = subprocess.run([sys.executable, "-m", "crossent", *argv[1:]], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=300)
    return result.stdout


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """One folder for both pages, and what each command printed there: the pages show some
    of the same commands (the wine table, the model trained on it), which run once."""
    return tmp_path_factory.mktemp("transcripts"), {}


@pytest.mark.parametrize("page", PAGES)
def test_transcripts_are_what_the_commands_print(page, folder, monkeypatch):
    cwd, printed_by = folder
    steps = transcripts((ROOT / page).read_text())
    assert sum(c.startswith("crossent ") for c, _ in steps) >= 2, f"{page}: no transcripts"
    for command, expected in steps:
        if command.startswith(NOT_RUN):
            assert expected == "", f"{page}: {command!r} is not run, so shows no output"
            continue
        if command not in printed_by:
            printed_by[command] = run(command, cwd, monkeypatch)
        printed = printed_by[command]
        assert _without_times(printed) == _without_times(expected), (
            f"{page}: $ {command}\n--- the page says ---\n{expected}--- it prints ---\n"
            f"{printed}")


def test_the_guide_python_examples():
    result = doctest.testfile(str(ROOT / "docs/use/cli.md"), module_relative=False,
                              optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 8 and result.failed == 0

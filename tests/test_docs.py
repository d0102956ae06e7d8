"""The documentation site builds strictly, and every code block on it runs and prints what the
page says it prints.

Every page under ``docs/`` is collected (a new page is checked without being listed here).
The blocks of a page run in page order, sharing one Python namespace and one temporary
working directory, so a page can create a file in one block and use it in the next.  A
fenced block is checked according to its kind:

``pycon`` or ``python`` starting with ``>>>``
    A doctest: each statement runs, and what it prints must equal the lines under it
    (``ELLIPSIS`` and ``NORMALIZE_WHITESPACE``, as in the docstrings).
``python`` without prompts
    Executed; it must not raise.
``console``
    Each ``$ crossent ...`` (or ``$ python -m crossent ...``) line is run as the command, and
    what it prints (stdout, then stderr) must equal the lines that follow, but for trailing
    spaces.  A ``...`` in the expected text matches any text, for output that legitimately
    varies (timings).  The exit status must be 0 unless the expected output shows an
    ``error:`` line.  Any other command in a console block must be marked (below).
``csv-table``
    Not code: ``docs/_hooks/csv_tables.py`` renders it from a results file during the build,
    which fails if the file or a column is missing.
anything else (``bash``, ``text``, ``yaml``, ...)
    Must be marked as not run, with the reason, on the line just above the fence::

        <!-- not run: needs two processes; tests/torch/test_distributed.py runs it -->

    (an HTML comment: the reader does not see it).

On the Learn pages every decimal number in the prose and formulas must also be one that a
checked block on the same page prints or uses (to the digits shown), so the text cannot
drift from the numbers either.

The docstring examples that the Reference pages show are run too (``test_reference_examples``),
and the command line's reference page, generated from the parser, is compared with what the
command prints.

After a change that legitimately alters what a command prints, rerun with
``CROSSENT_DOCS_UPDATE=1`` to write the new output into the pages (lines with ``...`` that
still match are kept); review the diff.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
HOOKS = DOCS / "_hooks"
UPDATE = os.environ.get("CROSSENT_DOCS_UPDATE") == "1"
DOCTEST_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
#: Columns for the commands' help output (argparse wraps at the terminal's width).
COLUMNS = "88"


# --------------------------------------------------------------------------------------------
# Pages and their blocks
# --------------------------------------------------------------------------------------------


@dataclass
class Block:
    page: Path
    lang: str
    line: int  # 1-based line of the opening fence
    body: list[str]  # the lines between the fences, fence indentation removed
    not_run: str | None = None  # the reason given in a `<!-- not run: ... -->` marker
    indent: str = ""

    @property
    def where(self) -> str:
        page = self.page.relative_to(ROOT) if ROOT in self.page.parents else self.page
        return f"{page}:{self.line}"

    @property
    def kind(self) -> str:
        if self.not_run is not None:
            return "not run"
        text = "\n".join(self.body).lstrip()
        if self.lang in ("pycon", "python", "py") and text.startswith(">>>"):
            return "doctest"
        if self.lang in ("python", "py"):
            return "python"
        if self.lang == "console":
            return "console"
        if self.lang == "csv-table":
            return "csv-table"
        return "unmarked"


FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
NOT_RUN = re.compile(r"^\s*<!--\s*not run:\s*(.*?)\s*-->\s*$")


def pages() -> list[Path]:
    """Every Markdown page under docs/ (the hooks' folder holds no pages), and the README."""
    return sorted(p for p in DOCS.rglob("*.md") if HOOKS not in p.parents) + [ROOT / "README.md"]


def blocks(page: Path) -> list[Block]:
    lines = page.read_text().split("\n")
    found: list[Block] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, lang = match.groups()
        start = i
        i += 1
        body = []
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1  # the closing fence
        marker = NOT_RUN.match(lines[start - 1]) if start else None
        found.append(Block(page, lang.lower(), start + 1, body,
                           marker.group(1) if marker else None, indent))
    return found


# --------------------------------------------------------------------------------------------
# Running a page
# --------------------------------------------------------------------------------------------


@dataclass
class PageRun:
    page: Path
    workdir: Path
    globs: dict = field(default_factory=dict)
    checked_text: list[str] = field(default_factory=list)  # what the page's numbers may cite
    updates: list[tuple[Block, list[str]]] = field(default_factory=list)


def run_doctest(block: Block, run: PageRun) -> None:
    text = "\n".join(block.body) + "\n"
    test = doctest.DocTestParser().get_doctest(
        text, run.globs, name=block.where, filename=str(block.page), lineno=block.line)
    runner = doctest.DocTestRunner(optionflags=DOCTEST_FLAGS)
    report: list[str] = []
    runner.run(test, out=report.append, clear_globs=False)
    run.globs.update(test.globs)  # the DocTest ran on a copy; later blocks see its names
    assert runner.failures == 0, f"{block.where}: a doctest failed\n" + "".join(report)
    run.checked_text.append(text)


def run_python(block: Block, run: PageRun) -> None:
    source = "\n".join(block.body)
    code = compile("\n" * block.line + source, str(block.page), "exec")
    exec(code, run.globs)  # a failure raises here, with the page's line number
    run.checked_text.append(source)


CROSSENT_COMMAND = re.compile(r"^(crossent|python3? -m crossent)(\s|$)")


def console_steps(block: Block) -> list[tuple[str, list[str], int]]:
    """``[(command, expected lines, index of the first expected line in body)]``."""
    steps: list[tuple[str, list[str], int]] = []
    for index, line in enumerate(block.body):
        if line.startswith("$ "):
            steps.append((line[2:].strip(), [], index + 1))
        elif steps:
            steps[-1][1].append(line)
        elif line.strip():
            raise AssertionError(f"{block.where}: a console block starts with a '$ ' command "
                                 f"line, got {line!r}")
    return steps


def output_matches(expected: str, actual: str) -> bool:
    """Exact but for trailing spaces; ``...`` in ``expected`` matches any text."""
    pattern = ".*?".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, actual, re.DOTALL) is not None


def tidy(lines: list[str]) -> str:
    text = "\n".join(line.rstrip() for line in lines)
    return text.strip("\n")


def run_console(block: Block, run: PageRun) -> None:
    steps = console_steps(block)
    assert steps, f"{block.where}: an empty console block"
    env = dict(os.environ, COLUMNS=COLUMNS)
    env.pop("CROSSENT_DOCS_UPDATE", None)
    for command, expected_lines, first in steps:
        match = CROSSENT_COMMAND.match(command)
        assert match, (f"{block.where}: `{command}` is not a crossent command; run it in a "
                       "test of its own and mark the block <!-- not run: REASON -->")
        args = shlex.split(command[match.end(1):])
        result = subprocess.run([sys.executable, "-m", "crossent", *args], cwd=run.workdir,
                                capture_output=True, text=True, timeout=300, env=env)
        actual = tidy((result.stdout + result.stderr).split("\n"))
        expected = tidy(expected_lines)
        run.checked_text += [command, actual]
        if "error:" not in expected:
            assert result.returncode == 0, (
                f"{block.where}: `{command}` exited with {result.returncode}:\n"
                f"{result.stderr}")
        if not output_matches(expected, actual):
            if UPDATE:
                run.updates.append((block, first, expected_lines, actual.split("\n")))
                continue
            raise AssertionError(
                f"{block.where}: `{command}` printed something else.\n--- the page says:\n"
                f"{expected}\n--- the command printed:\n{actual}\n"
                "(rerun with CROSSENT_DOCS_UPDATE=1 to write the new output into the page)")


def _updated_body(body: list[str], first: int, old: list[str], new: list[str]) -> list[str]:
    """``body`` with one command's output (``old``, from line ``first``) replaced by ``new``;
    old lines that still match (such as lines with ``...``) are kept."""
    old_trimmed = [line for line in old]
    while old_trimmed and not old_trimmed[-1].strip():
        old_trimmed.pop()
    if len(old_trimmed) == len(new):
        new = [o if output_matches(o.rstrip(), n) else n for o, n in zip(old_trimmed, new)]
    trailing = len(old) - len(old_trimmed)
    return body[:first] + new + [""] * trailing + body[first + len(old):]


def write_updates(run: PageRun) -> None:
    lines = run.page.read_text().split("\n")
    blocks_by_line: dict[int, tuple[Block, list]] = {}
    for block, first, old, new in run.updates:
        blocks_by_line.setdefault(block.line, (block, []))[1].append((first, old, new))
    # later blocks first, so earlier line numbers stay valid; within a block, later outputs
    # first, so that each command's output is found where the page had it
    for line in sorted(blocks_by_line, reverse=True):
        block, changes = blocks_by_line[line]
        body = list(block.body)
        for first, old, new in sorted(changes, key=lambda c: -c[0]):
            body = _updated_body(body, first, old, new)
        lines[line:line + len(block.body)] = [block.indent + b if b else b for b in body]
    run.page.write_text("\n".join(lines))


# --------------------------------------------------------------------------------------------
# The numbers in a Learn page's text
# --------------------------------------------------------------------------------------------

NUMBER = re.compile(r"(?<![\w.])-?\d+\.\d+(?![\w.]*\d)")


def prose(page: Path) -> str:
    """The page without its fenced blocks and HTML comments."""
    text = page.read_text()
    text = re.sub(r"<!--.*?-->", "", text, flags=re.DOTALL)
    return re.sub(r"^(\s*)(`{3,}|~{3,}).*?^\1\2\s*$", "", text, flags=re.DOTALL | re.MULTILINE)


def unbacked_numbers(page_text: str, checked: str) -> list[str]:
    """Decimal numbers of ``page_text`` that no number of ``checked`` rounds to."""
    cited = {float(x) for x in re.findall(r"-?\d+\.\d+(?:e[-+]?\d+)?", checked)}
    missing = []
    for number in NUMBER.findall(page_text):
        decimals = len(number.split(".")[1])
        if not any(f"{x:.{decimals}f}" in (number, number.lstrip("-")) or
                   f"{-x:.{decimals}f}" == number.lstrip("-") for x in cited):
            missing.append(number)
    return missing


# --------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_site(tmp_path_factory) -> Path:
    """``mkdocs build --strict`` into a temporary folder, once for this module."""
    site = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr}"
    return site


def test_site_builds_strictly(built_site):
    assert (built_site / "index.html").is_file()
    assert (built_site / "reference" / "cli" / "index.html").is_file()
    for figure in ("bce", "softmax", "losses"):
        assert (built_site / "figures" / f"{figure}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_page_blocks_run(page: Path, tmp_path, monkeypatch):
    """Every block of the page runs and prints what the page shows (module docstring)."""
    monkeypatch.chdir(tmp_path)
    run = PageRun(page, tmp_path, globs={"__name__": "__docs__"})
    for block in blocks(page):
        kind = block.kind
        if kind == "unmarked":
            raise AssertionError(
                f"{block.where}: a ```{block.lang or '(no language)'} block is neither run nor "
                "marked; make it a doctest or a console block, or put <!-- not run: REASON --> "
                "on the line above it")
        if kind == "not run":
            assert block.not_run, f"{block.where}: <!-- not run: --> needs a reason"
        elif kind == "doctest":
            run_doctest(block, run)
        elif kind == "python":
            run_python(block, run)
        elif kind == "console":
            run_console(block, run)
    if run.updates:
        write_updates(run)
    if "learn" in page.relative_to(ROOT).parts:
        missing = unbacked_numbers(prose(page), "\n".join(run.checked_text))
        assert not missing, (f"{page.relative_to(ROOT)}: these numbers of the text are not "
                             f"computed by any block of the page: {missing}")


def _reference_objects() -> list[tuple[str, object]]:
    """Every object a Reference page documents with ``::: identifier``, with its members."""
    found: dict[str, object] = {}
    for page in sorted((DOCS / "reference").rglob("*.md")):
        text = page.read_text()
        for ident, options in re.findall(r"^::: ([\w.]+)\n((?:[ \t]+.*\n?)*)", text, re.M):
            module = importlib.import_module(ident)
            members = re.findall(r"^\s+- (\w+)\s*$", options, re.M) or getattr(
                module, "__all__", [n for n in vars(module) if not n.startswith("_")])
            found[ident] = module
            for name in members:
                obj = getattr(module, name)
                if callable(obj):
                    found[f"{ident}.{name}"] = obj
    return sorted(found.items())


#: Docstring examples that print something else than they show, found when this test was
#: written, in modules other work is rewriting; each is to be fixed in its docstring, and the
#: test fails as soon as one of them passes, so that it is then removed from this list.
KNOWN_WRONG_EXAMPLES: set[str] = set()


def test_reference_examples():
    """The docstring examples shown on the Reference pages run and print what they show."""
    finder = doctest.DocTestFinder(exclude_empty=True)
    failed: dict[str, str] = {}
    tries = 0
    seen = set()
    for name, obj in _reference_objects():
        module = sys.modules[getattr(obj, "__module__", None) or obj.__name__]
        recurse = not isinstance(obj, type(sys))  # a module: its own docstring only
        for test in finder.find(obj, name, module=False, globs=vars(module)):
            if test.name in seen or (not recurse and test.name != name):
                continue
            seen.add(test.name)
            runner = doctest.DocTestRunner(optionflags=DOCTEST_FLAGS)
            report: list[str] = []
            runner.run(test, out=report.append)
            tries += runner.tries
            if runner.failures:
                failed[test.name] = "".join(report)
    assert tries >= 10, "the reference pages' examples were not found"
    unexpected = {k: v for k, v in failed.items() if k not in KNOWN_WRONG_EXAMPLES}
    assert not unexpected, "".join(unexpected.values())
    fixed = KNOWN_WRONG_EXAMPLES - set(failed)
    assert not fixed, f"these examples pass now: remove them from KNOWN_WRONG_EXAMPLES: {fixed}"


def _losses() -> list[tuple[str, object]]:
    """Every public loss (and softmax helper) of the NumPy and torch APIs, the distributed
    losses included."""
    import crossent.functional
    import crossent.torch
    import crossent.torch.distributed

    found = []
    for module, names in ((crossent.functional, crossent.functional.__all__),
                          (crossent.torch, crossent.torch.__all__),
                          (crossent.torch.distributed, ["vocab_parallel_cross_entropy",
                                                        "vocab_parallel_linear_cross_entropy"])):
        found += [(f"{module.__name__}.{name}", getattr(module, name)) for name in names]
    return found


def test_loss_docstrings_carry_maths_shapes_and_an_example():
    """DESIGN.md example 6: each loss's docstring has a ``.. math::`` line, shapes written
    as ``(N, C)`` (or ``(N, D)``, ``(..., V_local)``) and a doctest with printed output
    (run by ``test_reference_examples``)."""
    import inspect

    lacking = {}
    for name, obj in _losses():
        doc = inspect.getdoc(obj) or ""
        missing = [what for what, ok in (
            ("maths", ".. math::" in doc),
            ("shapes", re.search(r"``\((?:N|B|\.\.\.), ", doc) is not None),
            ("an example", re.search(r"^>>> .*\n(?!>>>)\S", doc, re.M) is not None),
        ) if not ok]
        if missing:
            lacking[name] = missing
    assert not lacking, f"docstrings without maths, shapes or a printed example: {lacking}"


#: Returns sections that griffe splits into several returned values (a continuation line not
#: indented under the first), in a module other work owns; to be fixed in its docstring.
KNOWN_SPLIT_RETURNS: set[str] = set()


def test_returns_sections_describe_one_value_each():
    """A Google ``Returns:`` item that runs over several lines must indent its continuation
    lines, or the Reference page shows each line as another returned value; several items
    belong only to a function that returns a tuple."""
    import logging

    import griffe

    logging.getLogger("griffe").setLevel(logging.ERROR)  # missing types: not this test's
    package = griffe.load("crossent", search_paths=[str(ROOT / "src")])
    split = set()
    for name, _ in _reference_objects():
        if name == "crossent":
            continue
        obj = package[name.removeprefix("crossent.")]
        obj = obj.final_target if obj.is_alias else obj
        if not obj.is_function or not obj.docstring:
            continue
        for section in obj.docstring.parse("google"):
            if (section.kind.value == "returns" and len(section.value) > 1
                    and not str(obj.returns).startswith("tuple")):
                split.add(name)
    unexpected = split - KNOWN_SPLIT_RETURNS
    assert not unexpected, f"Returns sections read as several values: {sorted(unexpected)}"
    fixed = KNOWN_SPLIT_RETURNS - split
    assert not fixed, f"these pass now: remove them from KNOWN_SPLIT_RETURNS: {fixed}"


def _load_hook(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_hook_{name}", HOOKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_what_the_command_prints(built_site, monkeypatch):
    """The generated page shows, for every sub-command, what ``--help`` prints."""
    import contextlib
    import io

    from crossent.cli import main

    hook = _load_hook("cli_reference")
    texts = hook.help_texts(int(COLUMNS))
    assert "crossent train" in texts and "crossent explain" in texts
    page = (built_site / "reference" / "cli" / "index.html").read_text()
    monkeypatch.setenv("COLUMNS", COLUMNS)
    for name, text in texts.items():
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
            main([*name.split()[1:], "--help"])  # what `python -m crossent ...` runs
        assert exit_.value.code == 0
        assert out.getvalue() == text, f"{name} --help differs from the generated reference"
        first_option = re.search(r"^\s+(-[-\w]+)", text, re.M)
        assert first_option and first_option.group(1) in page
    # and once through the real entry point, as a user types it
    result = subprocess.run([sys.executable, "-m", "crossent", "train", "--help"],
                            capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, COLUMNS=COLUMNS))
    assert result.returncode == 0 and result.stdout == texts["crossent train"]


def test_readme_links_lead_somewhere():
    """Every relative link or image of the README (not a page of the site, so mkdocs checks
    none of its links) names a file of the repository."""
    readme = ROOT / "README.md"
    text = re.sub(r"<!--.*?-->", "", readme.read_text(), flags=re.DOTALL)
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [t.split("#")[0] for t in targets if not re.match(r"^[a-z]+:", t)]
    assert local, "no relative link found"
    missing = [t for t in local if t and not (ROOT / t).exists()]
    assert not missing, f"{readme.name} links to files that do not exist: {missing}"


# --------------------------------------------------------------------------------------------
# The checker checks (its own rules, on small pages of their own)
# --------------------------------------------------------------------------------------------


def _page(tmp_path: Path, text: str) -> Path:
    page = tmp_path / "page.md"
    page.write_text(text)
    return page


def test_blocks_are_classified(tmp_path):
    page = _page(tmp_path, "\n".join([
        "```pycon", ">>> 1 + 1", "2", "```",
        "```python", "x = 1", "```",
        "```console", "$ crossent --version", "crossent ...", "```",
        "<!-- not run: needs two processes -->", "```bash", "torchrun x.py", "```",
        "```text", "a diagram", "```",
        "- a list", "    ```py", "    >>> 2", "    2", "    ```",
    ]))
    kinds = [b.kind for b in blocks(page)]
    assert kinds == ["doctest", "python", "console", "not run", "unmarked", "doctest"]
    assert blocks(page)[3].not_run == "needs two processes"


def test_output_matching():
    assert output_matches("fit time    ... s", "fit time    0.07 s")
    assert not output_matches("fit time    0.07 s", "fit time    0.08 s")
    assert output_matches("a\n...\nz", "a\nb\nc\nz")
    assert not output_matches("loss 1.0314", "loss 1.0314 nats")


def test_numbers_in_the_text_must_be_computed():
    checked = ">>> print(round(x, 4))\n1.6094\n>>> ce([2, 4, 0.5])\n2.153178207"
    assert unbacked_numbers("ln 5 = 1.6094, and 2.1532 and 0.5", checked) == []
    assert unbacked_numbers("the loss is 1.6095", checked) == ["1.6095"]
    assert unbacked_numbers("version 0.1.0 and x1.5", checked) == []


def test_a_failing_doctest_fails_the_page(tmp_path):
    page = _page(tmp_path, "```pycon\n>>> 1 + 1\n3\n```\n")
    run = PageRun(page, tmp_path)
    with pytest.raises(AssertionError, match="doctest failed"):
        run_doctest(blocks(page)[0], run)


def test_a_wrong_console_output_fails_the_page(tmp_path):
    page = _page(tmp_path, "```console\n$ crossent --version\ncrossent 9.9.9\n```\n")
    with pytest.raises(AssertionError, match="printed something else"):
        run_console(blocks(page)[0], PageRun(page, tmp_path))
    page = _page(tmp_path, "```console\n$ ls\n```\n")
    with pytest.raises(AssertionError, match="not a crossent command"):
        run_console(blocks(page)[0], PageRun(page, tmp_path))


def test_update_rewrites_a_console_output(tmp_path, monkeypatch):
    import crossent

    page = _page(tmp_path, "text\n\n```console\n$ crossent --version\ncrossent 0.0\n```\nend\n")
    monkeypatch.setattr(sys.modules[__name__], "UPDATE", True)
    run = PageRun(page, tmp_path)
    run_console(blocks(page)[0], run)
    write_updates(run)
    assert page.read_text() == (f"text\n\n```console\n$ crossent --version\n"
                                f"crossent {crossent.__version__}\n```\nend\n")
    # two outputs of one block, both wrong: both are rewritten
    page = _page(tmp_path, "```console\n$ crossent --version\nold\n$ crossent --version\n"
                           "older\nolder still\n```\n")
    run = PageRun(page, tmp_path)
    run_console(blocks(page)[0], run)
    write_updates(run)
    version = f"crossent {crossent.__version__}"
    assert page.read_text() == (f"```console\n$ crossent --version\n{version}\n"
                                f"$ crossent --version\n{version}\n```\n")


def test_docstrings_become_markdown():
    convert = _load_hook("rst_docstrings").convert
    text = convert("\n".join([
        "Loss of :func:`~crossent.functional.cross_entropy` and :class:`Dataset`.",
        "",
        ".. math:: \\ell = -\\log p_y",
        "    + z",
        "",
        "Args:",
        "    a, b: as in PyTorch",
        "        (second line).",
        "",
        ">>> f(1)  # doctest: +ELLIPSIS",
        "2...",
        "",
        "Per chunk::",
        "",
        "    x = 1",
        "",
        "after",
    ]))
    assert text.split("\n") == [
        "Loss of `cross_entropy` and `Dataset`.",
        "",
        "$$", "\\ell = -\\log p_y", "+ z", "$$",
        "",
        "Args:",
        "    a: as in PyTorch", "        (second line).",
        "    b: as in PyTorch", "        (second line).",
        "",
        "```pycon", ">>> f(1)", "2...", "```",
        "",
        "Per chunk:", "", "```text", "x = 1", "```", "",
        "after",
    ]


def test_csv_tables_render_from_the_file(tmp_path):
    hook = _load_hook("csv_tables")
    (tmp_path / "r.csv").write_text("N,provider,ms,note\n8,crossent,1.25,\n8,torch,5.5,x\n")
    spec = {"source": "r.csv", "labels": {"provider": {"torch": "F.cross_entropy"}},
            "bold": {"provider": "crossent"},
            "columns": {"N": "{N}", "provider": "{provider}", "ms": "{ms:.1f}",
                        "note": "{note}"},
            "caption": "{N} rows"}
    assert hook.render(spec, tmp_path, "t").split("\n") == [
        "| N | provider | ms | note |",
        "|--:|---|--:|---|",
        "| **8** | **crossent** | **1.2** | – |",
        "| 8 | F.cross_entropy | 5.5 | x |",
        "",
        "8 rows",
    ]
    from mkdocs.exceptions import PluginError

    with pytest.raises(PluginError, match="no column 'seconds'"):
        hook.render({"source": "r.csv", "columns": {"s": "{seconds}"}}, tmp_path, "t")
    with pytest.raises(PluginError, match="does not exist"):
        hook.render({"source": "gone.csv", "columns": {"s": "{N}"}}, tmp_path, "t")

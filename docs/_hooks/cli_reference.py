"""MkDocs hook: the command line's reference page, generated from the argparse parser.

``reference/cli.md`` is not a file in the repository: while the site is built this hook asks
:func:`crossent.cli.build_parser` for the parser that ``crossent`` itself runs and writes the
``--help`` text of the command and of every sub-command into the page.  The reference can
therefore never drift from the command (a stale committed page and a test that compares it
would catch drift only when the tests run; here there is nothing to go stale).

The help is rendered at a fixed width so the page does not depend on the terminal of whoever
builds the site.  ``tests/test_docs.py`` checks that each block equals what
``crossent <command> --help`` prints at that width.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator

from mkdocs.structure.files import File, Files

PAGE = "reference/cli.md"
#: Columns the help is wrapped at (argparse reads ``COLUMNS``).
WIDTH = 88


@contextlib.contextmanager
def _columns(width: int) -> Iterator[None]:
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def sub_commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-command parsers, in the order ``crossent --help`` lists them."""
    for action in parser._actions:  # argparse keeps sub-parsers only here
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def help_texts(width: int = WIDTH) -> dict[str, str]:
    """``{"crossent": ..., "crossent train": ...}``: each parser's ``--help`` output."""
    from crossent.cli import build_parser

    with _columns(width):
        parser = build_parser()
        texts = {"crossent": parser.format_help()}
        for name, sub in sub_commands(parser).items():
            texts[f"crossent {name}"] = sub.format_help()
    return texts


def render(width: int = WIDTH) -> str:
    texts = help_texts(width)
    lines = [
        "# Command line reference",
        "",
        "Generated from the `crossent` command's own argument parser each time this site is "
        "built, so it is always the help of the version documented here. Each block is what "
        "`crossent <command> --help` prints.",
        "",
    ]
    names = [name for name in texts if name != "crossent"]
    lines += [f"- [`{name}`](#{name.replace(' ', '-')})" for name in names]
    lines.append("")
    for name, text in texts.items():
        lines += [f"## {name} {{#{name.replace(' ', '-')}}}", "", "```text",
                  f"$ {name} --help", text.rstrip("\n"), "```", ""]
    return "\n".join(lines)


def on_files(files: Files, config, **kwargs) -> Files:
    files.append(File.generated(config, PAGE, content=render()))
    return files

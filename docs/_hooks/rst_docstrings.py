"""Griffe extension: crossent's docstrings, written for both ``help()`` and this site.

The docstrings use Google-style sections (``Args:``, ``Returns:``) with a few reStructuredText
habits that read well in a terminal.  Before mkdocstrings renders them, this extension turns
those habits into the Markdown the site uses:

* ``.. math:: <formula>`` (and its indented continuation lines) -> a ``$$`` display formula;
* ``:func:`x```, ``:class:`~a.b.C```, ``:mod:``, ``:data:``, ``:attr:``, ``:meth:`` roles ->
  inline code (``~`` keeps only the last name, as in Sphinx);
* bare doctest examples (``>>>`` lines and their output, outside an ``Examples:`` section)
  -> a fenced ``pycon`` block, with ``# doctest:`` directives removed;
* a paragraph ending in ``::`` before an indented literal block -> ``:`` and a fenced block;
* an ``Args:`` entry that documents several parameters at once (``a, b: as in PyTorch``) ->
  one entry per parameter, each with that text (Google style has one name per entry).

The docstrings' doctests themselves are run by ``tests/test_docs.py``.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|class|mod|data|attr|meth|obj|exc):`(~?)([^`]+)`")
_DOCTEST_DIRECTIVE = re.compile(r"\s*#\s*doctest:.*$")
_GROUPED_ARG = re.compile(r"^(\s+)(\w+(?:,\s*\w+)+):(.*)$")


def _role(match: re.Match) -> str:
    tilde, target = match.groups()
    name = target.rsplit(".", 1)[-1] if tilde else target.lstrip(".")
    return f"`{name}`"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def convert(text: str) -> str:
    """reST habits -> Markdown (see the module docstring)."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    in_fence = False
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("```"):
            in_fence = not in_fence
            out.append(line)
            i += 1
            continue
        if in_fence:
            out.append(line)
            i += 1
            continue
        if stripped.startswith(".. math::"):
            base = _indent(line)
            formula = [stripped[len(".. math::"):].strip()]
            i += 1
            while i < len(lines) and lines[i].strip() and _indent(lines[i]) > base:
                formula.append(lines[i].strip())
                i += 1
            pad = " " * base
            out += [f"{pad}$$", *[pad + f for f in formula if f], f"{pad}$$"]
            continue
        if stripped.startswith(">>>") and not _in_examples_section(out):
            base = _indent(line)
            pad = " " * base
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(_DOCTEST_DIRECTIVE.sub("", lines[i][base:]))
                i += 1
            out += [f"{pad}```pycon", *[pad + b for b in block], f"{pad}```"]
            continue
        if stripped.endswith("::") and not stripped.startswith(".."):
            # a literal block follows (after a blank line), indented deeper than this line
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines) and _indent(lines[j]) > _indent(line):
                out.append(_ROLE.sub(_role, line.rstrip()[:-1]))
                base = _indent(lines[j])
                block = []
                k = j
                while k < len(lines) and (not lines[k].strip() or _indent(lines[k]) >= base):
                    block.append(lines[k])
                    k += 1
                while block and not block[-1].strip():
                    block.pop()
                pad = " " * _indent(line)
                body = textwrap.dedent("\n".join(block)).split("\n")
                out += ["", f"{pad}```text", *[pad + b for b in body], f"{pad}```", ""]
                i = k
                continue
        grouped = _GROUPED_ARG.match(line)
        if grouped and _in_section(out, ("Args:", "Arguments:", "Parameters:")):
            pad, names, first = grouped.groups()
            i += 1
            rest = []
            while i < len(lines) and lines[i].strip() and _indent(lines[i]) > len(pad):
                rest.append(lines[i])
                i += 1
            for name in re.split(r",\s*", names):
                out += [_ROLE.sub(_role, f"{pad}{name}:{first}"),
                        *[_ROLE.sub(_role, r) for r in rest]]
            continue
        out.append(_ROLE.sub(_role, line))
        i += 1
    return "\n".join(out)


def _in_section(previous: list[str], titles: tuple[str, ...]) -> bool:
    """Whether the last Google section the lines so far opened is one of ``titles``."""
    for line in reversed(previous):
        if re.match(r"^\s*[A-Z][A-Za-z ]*:\s*$", line):
            return line.strip() in titles
    return False


def _in_examples_section(previous: list[str]) -> bool:
    """In an ``Examples:`` section griffe renders the doctests itself."""
    return _in_section(previous, ("Examples:", "Example:"))


class RstToMarkdown(griffe.Extension):
    """Convert each docstring once, when griffe has loaded the object."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)

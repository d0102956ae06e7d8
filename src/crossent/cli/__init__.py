"""The ``crossent`` command line: one module per sub-command, one error policy for all.

Every sub-command module defines ``add_parser(subparsers)`` and a ``run(args)`` that returns
an exit status.  Bad input raises :class:`UsageError` (or ValueError/TypeError/OSError from
the library); :func:`main` turns it into one line on stderr and exit status 2, never a
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Sequence

# Sub-commands in the order ``crossent --help`` lists them; each names its module.
COMMANDS = ("train", "evaluate", "predict", "score", "compare", "plot", "explain")


class UsageError(Exception):
    """A problem with what the user asked for, reported as one line with exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line (``crossent train: error: ...``) and exit 2, and
    negative numbers in any notation (``-1e30``, ``-inf``) are values, not options."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # argparse's own pattern knows only -3 and -.5; logits are often -1e30 or -inf
        self._negative_number_matcher = re.compile(
            r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-inf(inity)?$", re.IGNORECASE)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="crossent",
        description="Cross-entropy loss: train and evaluate classifiers, score predictions, "
        "and see the maths step by step.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"crossent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except BrokenPipeError:
        # the reader went away (`crossent train | head`): not an error of ours; stop quietly
        # and keep Python from complaining again when it flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (UsageError, ValueError, TypeError, IndexError, OSError) as exc:
        message = str(exc) or type(exc).__name__
        if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
            message = f"{exc.strerror}: {exc.filename}"
        print(f"crossent {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"crossent {args.command}: interrupted", file=sys.stderr)
        return 130

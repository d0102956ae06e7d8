"""The ``crossent`` command line: one module per sub-command, one error policy for all.

Every sub-command module defines ``add_parser(subparsers)``, a ``run(args)`` that returns
an exit status, and ``REQUIRES`` (or ``requires(args)``): the optional packages it needs,
checked before it starts.  Bad input raises :class:`UsageError` (or ValueError/TypeError/
OSError from the library); :func:`main` turns it, a missing optional package, and running out
of memory into one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Sequence

from .._optional import PACKAGES, MissingDependency, install_line, is_installed

# Sub-commands in the order ``crossent --help`` lists them; each names its module.
COMMANDS = ("train", "evaluate", "predict", "score", "compare", "plot", "explain")
# Every sub-command's packages come with this extra.
EXTRA = "cli"


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


def _requirements(module) -> tuple[str, ...]:
    return tuple(getattr(module, "REQUIRES", ()))


def _extras_epilog(modules: dict) -> str:
    """Which command needs which package, and which of those are missing here."""
    lines = [f"what the commands need beyond NumPy (all of it comes with {install_line(EXTRA)};",
             f'from a checkout: pip install -e ".[{EXTRA}]"):']
    width = max(map(len, COMMANDS))
    for name, module in modules.items():
        # threadpoolctl comes with scikit-learn: not worth a word here
        needs = getattr(module, "NEEDS_TEXT", None) or ", ".join(
            PACKAGES[p][0] for p in _requirements(module) if p != "threadpoolctl"
        ) or "nothing more"
        lines.append(f"  {name.ljust(width)}  {needs}")
    wanted = sorted({p for m in modules.values() for p in getattr(m, "MAY_NEED", ())
                     + _requirements(m)})
    absent = [PACKAGES[p][0] for p in wanted if not is_installed(p)]
    if absent:  # (said only when it matters: the help stays the same everywhere else)
        lines.append("not installed here: " + ", ".join(absent))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    modules = {name: importlib.import_module(f"{__name__}.{name}") for name in COMMANDS}
    parser = _Parser(
        prog="crossent",
        description="Cross-entropy loss: train and evaluate classifiers, score predictions, "
        "and see the maths step by step.",
        epilog=_extras_epilog(modules),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"crossent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in modules.values():
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # plain `crossent`: show what there is
        parser.print_help()
        return 0
    module = importlib.import_module(f"{__name__}.{args.command}")
    try:
        needs = module.requires(args) if hasattr(module, "requires") else _requirements(module)
        _require(needs, args.command)
        return int(args.run(args) or 0)
    except BrokenPipeError:
        # the reader went away (`crossent train | head`): not an error of ours; stop quietly
        # and keep Python from complaining again when it flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (UsageError, ValueError, TypeError, IndexError, OSError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
            message = f"{exc.strerror}: {exc.filename}"
        return _fail(args.command, message)
    except MemoryError as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return _fail(args.command, "out of memory" + (f" ({detail})" if detail else "")
                     + "; use a smaller file or a machine with more memory")
    except ImportError as exc:
        package = (exc.name or "").split(".")[0]
        if not isinstance(exc, MissingDependency) and (package not in PACKAGES
                                                       or is_installed(package)):
            raise  # a broken installation or a bug: the traceback is what helps
        return _fail(args.command, _missing_message(package, args.command))
    except KeyboardInterrupt:
        print(f"crossent {args.command}: interrupted", file=sys.stderr)
        return 130


def _missing_message(package: str, command: str) -> str:
    return (f"{PACKAGES[package][0]} is not installed, and 'crossent {command}' needs it: "
            f"{install_line(EXTRA)}")


def _require(packages: Sequence[str], command: str) -> None:
    for package in packages:
        if not is_installed(package):
            raise MissingDependency(_missing_message(package, command), package=package,
                                    extra=EXTRA)


def _fail(command: str, message: str) -> int:
    print(f"crossent {command}: error: {message}", file=sys.stderr)
    return 2

"""The ``crossent`` command line: one module per sub-command, one error policy for all.

Every sub-command module defines ``add_parser(subparsers)``, a ``run(args)`` that returns
an exit status, and ``NEEDS`` (a :class:`Needs`): the optional packages it needs, which
``crossent --help`` lists and :func:`main` checks before the command starts.  Bad input
raises :class:`UsageError` (or ValueError/TypeError/OSError from the library); :func:`main`
turns it, a missing optional package, and running out of memory into one line on stderr and
exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .._optional import PACKAGES, MissingDependency, install_line, is_installed, not_installed
from .._optional import require as _require

# Sub-commands in the order ``crossent --help`` lists them; each names its module.
COMMANDS = ("train", "evaluate", "predict", "score", "compare", "plot", "explain")
# Every sub-command's packages come with this extra.
EXTRA = "cli"


class UsageError(Exception):
    """A problem with what the user asked for, reported as one line with exit status 2."""


@dataclass(frozen=True)
class Sometimes:
    """Packages a command needs only in some runs: ``when`` says which in ``--help``
    (``"for --plot"``), ``applies(args)`` whether this run is one."""

    packages: tuple[str, ...]
    when: str
    applies: Callable[[argparse.Namespace], bool]


@dataclass(frozen=True)
class Needs:
    """What a command needs beyond NumPy (importable names, keys of
    ``crossent._optional.PACKAGES``): ``always``, and each of ``sometimes`` in its runs."""

    always: tuple[str, ...] = ()
    sometimes: tuple[Sometimes, ...] = ()

    def packages(self, args: argparse.Namespace | None = None) -> tuple[str, ...]:
        """What the run ``args`` needs; every package named, without ``args``."""
        more = [p for s in self.sometimes if args is None or s.applies(args)
                for p in s.packages]
        return self.always + tuple(dict.fromkeys(p for p in more if p not in self.always))

    def describe(self) -> str:
        """``scikit-learn, SciPy, pandas, tqdm; matplotlib for --plot``, as ``--help`` says it."""
        def names(packages: tuple[str, ...]) -> str:
            # threadpoolctl comes with scikit-learn: not worth a word here
            return ", ".join(PACKAGES[p][0] for p in packages if p != "threadpoolctl")

        parts = ([names(self.always)] if self.always else []) + [
            f"{names(s.packages)} {s.when}" for s in self.sometimes]
        return "; ".join(parts) or "nothing more"


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


def _extras_epilog(modules: dict) -> str:
    """Which command needs which package, and which of those are missing here."""
    lines = [f"what the commands need beyond NumPy (all of it comes with {install_line(EXTRA)};",
             f'from a checkout: pip install -e ".[{EXTRA}]"):']
    width = max(map(len, COMMANDS))
    for name, module in modules.items():
        lines.append(f"  {name.ljust(width)}  {module.NEEDS.describe()}")
    wanted = sorted({p for m in modules.values() for p in m.NEEDS.packages()})
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
    feature = f"'crossent {args.command}'"
    try:
        _require(module.NEEDS.packages(args), feature, EXTRA, command=True)
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
        # (a library's MissingDependency is reworded: the command's line names the command)
        return _fail(args.command, str(not_installed(package, feature, EXTRA, command=True)))
    except KeyboardInterrupt:
        print(f"crossent {args.command}: interrupted", file=sys.stderr)
        return 130


def _fail(command: str, message: str) -> int:
    print(f"crossent {command}: error: {message}", file=sys.stderr)
    return 2

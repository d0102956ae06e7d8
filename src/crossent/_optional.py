"""Optional dependencies: which extra provides which package, and the error when one is missing.

``import crossent`` needs only NumPy.  Everything else comes with an extra (see
``pyproject.toml``); code that needs an optional package checks it with :func:`require`
(the command line, before a command starts), imports it with :func:`import_module`, or
turns the ``ImportError`` of a plain import into :class:`MissingDependency` with
:func:`missing`, so that the user reads which ``pip install`` line fixes it instead of a
bare ``No module named 'sklearn'``.  :func:`not_installed` words that error, in one place.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

# importable name -> (the name a user knows it by, the extra that installs it)
PACKAGES: dict[str, tuple[str, str]] = {
    "sklearn": ("scikit-learn", "sklearn"),
    "scipy": ("SciPy", "sklearn"),
    "threadpoolctl": ("threadpoolctl", "sklearn"),
    "matplotlib": ("matplotlib", "plot"),
    "pandas": ("pandas", "cli"),
    "tqdm": ("tqdm", "cli"),
    "torch": ("PyTorch", "torch"),
}


class MissingDependency(ImportError):
    """An optional package is not installed; the message names the extra that installs it.

    ``package`` is the importable name (``"sklearn"``), ``extra`` the extra named in the
    message (``"sklearn"``, ``"cli"``, ...).
    """

    def __init__(self, message: str, *, package: str, extra: str) -> None:
        super().__init__(message, name=package)
        self.package = package
        self.extra = extra


def install_line(extra: str) -> str:
    return f'pip install "crossent[{extra}]"'


def not_installed(package: str, feature: str, extra: str | None = None, *,
                  command: bool = False) -> MissingDependency:
    """The error for ``package`` (a key of :data:`PACKAGES`), which ``feature`` needs and
    which is not installed; it names the extra to install (``extra``, else the package's
    own).  Python code reads ``crossent.SoftmaxRegression needs SciPy, which is not
    installed: ...``; a ``command`` (``feature`` is then ``'crossent train'``) reads
    ``SciPy is not installed, and 'crossent train' needs it: ...``, the package first, as
    the one line a command prints."""
    known_as, own_extra = PACKAGES[package]
    extra = extra or own_extra
    if command:
        message = f"{known_as} is not installed, and {feature} needs it: {install_line(extra)}"
    else:
        message = f"{feature} needs {known_as}, which is not installed: {install_line(extra)}"
    return MissingDependency(message, package=package, extra=extra)


def missing(exc: ImportError, feature: str, extra: str | None = None) -> ImportError:
    """The error to raise for ``exc``, the ImportError of importing an optional package.

    When ``exc`` is about a package crossent knows (``exc.name`` is ``sklearn.base``, say)
    and that package is not installed, this is :func:`not_installed`'s error: ``feature``
    needs it, and which extra installs it; otherwise (an installed package that fails to
    import, a bug) ``exc`` itself, unchanged: its own message is what helps then.
    """
    if isinstance(exc, MissingDependency):
        return exc
    top = (exc.name or "").split(".")[0]
    if top not in PACKAGES or is_installed(top):
        return exc
    return not_installed(top, feature, extra)


def is_installed(package: str) -> bool:
    """Whether ``package`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def require(packages: tuple[str, ...] | list[str], feature: str, extra: str | None = None,
            *, command: bool = False) -> None:
    """Raise :func:`not_installed`'s error for the first of ``packages`` that is not
    installed (checked without importing, so that a command fails before it starts
    working)."""
    for package in packages:
        if not is_installed(package):
            raise not_installed(package, feature, extra, command=command)


def import_module(name: str, feature: str, extra: str | None = None) -> ModuleType:
    """``importlib.import_module(name)``, with :func:`missing`'s error when it fails."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise missing(exc, feature, extra) from exc

"""Optional dependencies: which extra provides which package, and the error when one is missing.

``import crossent`` needs only NumPy.  Everything else comes with an extra (see
``pyproject.toml``); code that needs an optional package imports it through
:func:`require` or turns the ``ImportError`` of a plain import into
:class:`MissingDependency` with :func:`missing`, so that the user reads which ``pip install``
line fixes it instead of a bare ``No module named 'sklearn'``.
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
    "triton": ("Triton", "triton"),
    "transformers": ("transformers", "transformers"),
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


def missing(exc: ImportError, feature: str, extra: str | None = None) -> ImportError:
    """The error to raise for ``exc``, the ImportError of importing an optional package.

    When ``exc`` is about a package crossent knows (``exc.name`` is ``sklearn.base``, say)
    and that package is not installed, this is a :class:`MissingDependency` saying that
    ``feature`` needs it and which extra to install (``extra``, else the package's own);
    otherwise (an installed package that fails to import, a bug) ``exc`` itself, unchanged:
    its own message is what helps then.
    """
    if isinstance(exc, MissingDependency):
        return exc
    top = (exc.name or "").split(".")[0]
    if top not in PACKAGES or is_installed(top):
        return exc
    known_as, own_extra = PACKAGES[top]
    extra = extra or own_extra
    return MissingDependency(f"{feature} needs {known_as}, which is not installed: "
                             f"{install_line(extra)}", package=top, extra=extra)


def is_installed(package: str) -> bool:
    """Whether ``package`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def require(packages: tuple[str, ...] | list[str], feature: str, extra: str | None = None
            ) -> None:
    """Raise :class:`MissingDependency` for the first of ``packages`` that is not installed
    (checked without importing, so that a command fails before it starts working)."""
    for package in packages:
        if not is_installed(package):
            known_as, own_extra = PACKAGES[package]
            extra_ = extra or own_extra
            raise MissingDependency(f"{feature} needs {known_as}, which is not installed: "
                                    f"{install_line(extra_)}", package=package, extra=extra_)


def import_module(name: str, feature: str, extra: str | None = None) -> ModuleType:
    """``importlib.import_module(name)``, with :func:`missing`'s error when it fails."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise missing(exc, feature, extra) from exc

"""Packaging: the version, the light import, the typed marker, the declared dependencies."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import subprocess
import sys

import crossent

HEAVY = ("torch", "scipy", "sklearn", "matplotlib", "triton", "pandas")


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)


def test_version_matches_installed_metadata():
    assert crossent.__version__ == importlib.metadata.version("crossent")


def test_version_on_the_command_line():
    result = subprocess.run([sys.executable, "-m", "crossent", "--version"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.strip() == f"crossent {crossent.__version__}"


def test_import_loads_no_heavy_dependency():
    """``import crossent`` (and using the NumPy API) must not import torch, scipy, ..."""
    result = run_python(
        "import sys, numpy as np, crossent, crossent.info, crossent.functional\n"
        "crossent.cross_entropy_with_grad(np.zeros((2, 3)), [0, 1])\n"
        "crossent.info.entropy([0.5, 0.5])\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_import_works_with_only_numpy():
    """With every optional dependency made unimportable, the NumPy API still works."""
    result = run_python(
        "import sys\n"
        f"for name in {HEAVY!r}:\n"
        "    sys.modules[name] = None  # 'import name' now raises ImportError\n"
        "import numpy as np, crossent\n"
        "print(float(crossent.cross_entropy(np.array([[2.0, 4.0, 0.5]]), [0])))\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("2.15317820")


def test_py_typed_is_shipped():
    assert importlib.resources.files("crossent").joinpath("py.typed").is_file()


def test_only_numpy_is_required():
    """Everything but NumPy is an extra (torch, triton, scipy, scikit-learn, matplotlib)."""
    requires = importlib.metadata.requires("crossent") or []
    unconditional = [r for r in requires if "extra ==" not in r]
    assert [r.split(">")[0].split("=")[0].strip() for r in unconditional] == ["numpy"]


def test_public_names_exist():
    for name in crossent.__all__:
        assert getattr(crossent, name) is not None
    assert set(crossent.functional.__all__) <= set(crossent.__all__)

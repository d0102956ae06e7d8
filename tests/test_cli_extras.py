"""Extras: what each command needs, and what a user sees when it is not installed.

"Not installed" is simulated without uninstalling anything: the command runs in a process
whose import system refuses the packages (a meta-path finder, see ``cli_support``), as a
NumPy-only installation would.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from cli_support import assert_usage_error, crossent, crossent_without, python_without

ROOT = Path(__file__).resolve().parents[1]
# everything the cli extra brings; `import crossent` needs none of it
OPTIONAL = ("sklearn", "scipy", "threadpoolctl", "pandas", "matplotlib", "tqdm")
INSTALL = 'pip install "crossent[cli]"'


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("extras")
    (folder / "d.csv").write_text("a,b,y\n1,2,0\n3,4,1\n5,7,0\n")
    np.save(folder / "p.npy", np.array([[0.8, 0.2], [0.3, 0.7]]))
    np.save(folder / "y.npy", np.array([0, 1]))
    return folder


@pytest.mark.parametrize(("args", "package"), [
    (["train"], "scikit-learn"),
    (["train", "--data", "d.csv"], "scikit-learn"),
    (["evaluate", "--model", "m.npz", "--data", "d.csv"], "scikit-learn"),
    (["predict", "--model", "m.npz", "--data", "d.csv"], "scikit-learn"),
    (["compare", "--data", "d.csv"], "scikit-learn"),
    (["score", "p.csv", "d.csv"], "pandas"),
    (["plot", "softmax"], "matplotlib"),
])
def test_every_command_names_the_extra_in_a_numpy_only_install(files, args, package):
    result = crossent_without(OPTIONAL, *args, cwd=files)
    assert_usage_error(result, f"{package} is not installed, and 'crossent {args[0]}' needs "
                               f"it: {INSTALL}")
    assert not (files / "softmax.png").exists()


def test_numpy_only_install_still_explains_and_scores_npy_files(files):
    result = crossent_without(OPTIONAL, "explain", "--logits", "2", "-inf", "0.5")
    assert result.returncode == 0, result.stderr
    assert "L = -ln p[0] = 0.201413 nats" in result.stdout
    result = crossent_without(OPTIONAL, "score", "p.npy", "y.npy", cwd=files)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^log loss\s+0.2899", result.stdout, re.M)  # (-ln 0.8 - ln 0.7) / 2


def test_score_needs_pandas_for_csv_files_only(files):
    """An .npz file (the arrays of a data set: X and the labels y) is NumPy's too."""
    np.savez(files / "d.npz", X=np.zeros((2, 2)), y=np.array([0, 1]))
    result = crossent_without(OPTIONAL, "score", "p.npy", "d.npz", cwd=files)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^log loss\s+0.2899", result.stdout, re.M)
    assert_usage_error(crossent_without(OPTIONAL, "score", "p.npy", "d.csv", cwd=files),
                       f"pandas is not installed, and 'crossent score' needs it: {INSTALL}")


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_reading_progress_is_required_before_the_command_starts(files, command):
    """evaluate and predict draw a bar while they read a large CSV file: tqdm is checked
    before they start, as for train."""
    result = crossent_without(("tqdm",), command, "--model", "m.npz", "--data", "d.csv",
                              cwd=files)
    assert_usage_error(result, f"tqdm is not installed, and 'crossent {command}' needs it: "
                               f"{INSTALL}")


def test_a_package_missing_deep_inside_is_named_too(files):
    """Only matplotlib missing: `train --plot` says so before training (not after)."""
    result = crossent_without(("matplotlib",), "train", "--data", "d.csv", "--plot", "c.png",
                              cwd=files)
    assert_usage_error(result, f"matplotlib is not installed, and 'crossent train' needs it: "
                               f"{INSTALL}")


def test_help_says_which_command_needs_which_extra():
    result = crossent("--help")
    assert result.returncode == 0
    text = result.stdout
    assert f"all of it comes with {INSTALL}" in text and 'pip install -e ".[cli]"' in text
    assert re.search(r"^  train +scikit-learn, SciPy, pandas, tqdm; matplotlib for --plot$",
                     text, re.M)
    assert re.search(r"^  plot +matplotlib$", text, re.M)
    assert re.search(r"^  explain +nothing more$", text, re.M)
    assert "not installed here" not in text
    without = crossent_without(("sklearn", "tqdm"), "--help")
    assert without.stdout.rstrip().endswith("not installed here: scikit-learn, tqdm")


def test_no_arguments_prints_the_usage():
    result = crossent()
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("usage: crossent [-h] [--version] COMMAND ...")
    for command in ("train", "evaluate", "predict", "score", "compare", "plot", "explain"):
        assert re.search(rf"^    {command} ", result.stdout, re.M)


# --------------------------------------------------------------------------------------------
# The Python API names its extras too
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["sklearn", "scipy"])
def test_softmax_regression_without_its_extra(missing):
    result = python_without((missing,), "import crossent\ncrossent.SoftmaxRegression()\n")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("crossent._optional.MissingDependency: crossent.SoftmaxRegression "
                           "needs ")
    assert last.endswith('which is not installed: pip install "crossent[sklearn]"')


def test_crossent_torch_without_torch():
    result = python_without(("torch",), "import crossent.torch\n")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "crossent._optional.MissingDependency: crossent.torch needs PyTorch, which is not "
        'installed: pip install "crossent[torch]"')
    # and the NumPy API is untouched
    result = python_without(("torch",), "import crossent\nprint(crossent.softmax([0.0, 0.0]))\n")
    assert result.returncode == 0 and result.stdout.strip() == "[0.5 0.5]"


# --------------------------------------------------------------------------------------------
# Installing from a checkout
# --------------------------------------------------------------------------------------------


def _install_lines(text: str) -> list[str]:
    blocks = re.findall(r"```(?:bash|console|sh)\n(.*?)```", text, re.S)
    return [line.strip().removeprefix("$ ") for block in blocks for line in block.splitlines()
            if re.match(r"(\$ )?(python -m )?pip install", line.strip())]


@pytest.mark.parametrize("page", ["README.md", "docs/use/cli.md"])
def test_install_commands_work_from_a_checkout(page):
    """Every ``pip install`` command shown installs this checkout (``-e .`` or ``.``, never a
    name the package index does not have yet), with extras pyproject.toml declares, through
    constraints.txt."""
    section = (ROOT / "pyproject.toml").read_text().split(
        "[project.optional-dependencies]")[1].split("\n[")[0]
    extras = set(re.findall(r"^([a-z]+) = \[", section, re.M))
    assert {"cli", "torch", "dev"} <= extras
    lines = _install_lines((ROOT / page).read_text())
    assert lines, f"{page} shows no pip install command"
    for line in lines:
        line = line.split("#")[0].strip()
        match = re.search(r'-e "\.\[([a-z,]+)\]"$', line)
        assert match, f"{page}: {line!r} does not install the checkout with -e \".[extra]\""
        assert set(match.group(1).split(",")) <= extras, line
        assert "-c constraints.txt" in line, line


def test_an_import_error_while_running_is_one_line_only_when_the_package_is_absent(
        monkeypatch, capsys):
    """The check before a command starts has a safety net: an ImportError of a package that
    is not installed, raised while the command runs, is the same one line; one of a package
    that is installed but broken is left as it is (its traceback is what helps)."""
    import crossent._optional as optional
    import crossent.cli as cli
    from crossent.cli import explain

    def fail(args):
        raise ModuleNotFoundError("No module named 'scipy.optimize'", name="scipy.optimize")

    monkeypatch.setattr(explain, "run", fail)
    monkeypatch.setattr(cli, "is_installed", lambda name: name != "scipy")
    monkeypatch.setattr(optional, "is_installed", lambda name: name != "scipy")
    assert cli.main(["explain"]) == 2
    assert capsys.readouterr().err == (
        f"crossent explain: error: SciPy is not installed, and 'crossent explain' needs it: "
        f"{INSTALL}\n")
    monkeypatch.setattr(cli, "is_installed", lambda name: True)
    with pytest.raises(ModuleNotFoundError, match="scipy.optimize"):
        cli.main(["explain"])

"""``crossent explain``: run as a user runs it (``python -m crossent explain ...``)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from crossent.cli import main


def explain(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crossent", "explain", *args],
                          capture_output=True, text=True, timeout=60)


def number_after(label: str, text: str) -> float:
    match = re.search(re.escape(label) + r"\s*(-?[0-9.]+|inf)", text)
    assert match, f"{label!r} not in output:\n{text}"
    return float(match.group(1))


def test_default_example():
    """logits 2 4 0.5, target 0: loss 2.153178 nats, gradient p - onehot (case 7)."""
    result = explain()
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    assert number_after("L = -ln p[0] =", out) == 2.153178
    assert "2.153178 nats" in out
    assert "p - onehot(y) = [-0.883885, 0.857977, 0.025909]" in out
    assert "p = softmax(z) = exp(z - m) / sum = [0.116115, 0.857977, 0.025909]" in out


def test_probabilities_input():
    """--probs 0.6 0.2 0.2 --target 2: -ln 0.2 = ln 5 = 1.609438 (case 4)."""
    result = explain("--probs", "0.6", "0.2", "0.2", "--target", "2")
    assert result.returncode == 0, result.stderr
    assert number_after("L = -ln p[2] =", result.stdout) == 1.609438
    assert "1.609438 nats" in result.stdout


def test_bits():
    """--bits divides by ln 2: 2.153178 / ln 2 = 3.106380 bits; log2 5 = 2.321928 bits."""
    result = explain("--bits")
    assert result.returncode == 0, result.stderr
    assert "3.106380 bits" in result.stdout
    assert "log2 p" in result.stdout and "nats" not in result.stdout
    result = explain("--probs", "0.6", "0.2", "0.2", "--target", "2", "--bits")
    assert "2.321928 bits" in result.stdout


@pytest.mark.parametrize(("args", "fragment"), [
    (["--target", "5"], "--target must be a class index in [0, 2], got 5"),
    (["--probs", "0.5", "0.6"], "--probs must sum to 1, got a sum of 1.1"),
    (["--logits", "abc"], "invalid float value: 'abc'"),
])
def test_bad_input_is_one_line_on_stderr_and_exit_2(args, fragment):
    result = explain(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0]
    assert "Traceback" not in result.stderr


# The same command in-process (fast): more inputs, same error policy.

@pytest.mark.parametrize(("args", "expected"), [
    (["--logits", "0", "0", "0", "0", "--target", "3"], "L = -ln p[3] = 1.386294 nats"),  # ln 4
    (["--logits", "1000", "0", "--target", "1"], "L = -ln p[1] = 1000.000000 nats"),  # stable
    (["--probs", "0", "1", "--target", "0"], "L = -ln p[0] = inf nats"),  # p = 0: infinite
    (["--logits", "2", "4", "0.5", "--target", "1"], "L = -ln p[1] = 0.153178 nats"),  # case 2
    # negative numbers in scientific notation are values, not options
    (["--logits", "1", "-2.5e3", "--target", "1"], "L = -ln p[1] = 2501.000000 nats"),
])
def test_more_examples(capsys, args, expected):
    assert main(["explain", *args]) == 0
    assert expected in capsys.readouterr().out


@pytest.mark.parametrize(("args", "fragment"), [
    (["--logits", "1"], "need at least 2 classes, got 1"),
    (["--logits", "nan", "1"], "--logits must be numbers or -inf (PyTorch's loss is NaN for "
                               "NaN and +inf logits)"),
    (["--logits", "inf", "1"], "--logits must be numbers or -inf"),
    (["--logits", "1", "nan", "2", "inf"], "+inf logits), got nan inf"),
    (["--logits", "-inf", "-inf"], "--logits must not all be -inf"),
    (["--probs", "0.5", "1.5", "nan"], "--probs must be probabilities in [0, 1], got 1.5 nan"),
    (["--probs", "-0.5", "1.5"], "--probs must be probabilities in [0, 1]"),
    (["--target", "-1"], "--target must be a class index in [0, 2], got -1"),
])
def test_more_bad_inputs(capsys, args, fragment):
    assert main(["explain", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and fragment in captured.err
    assert captured.err.startswith("crossent explain: error: ")


def test_mutually_exclusive_inputs(capsys):
    with pytest.raises(SystemExit) as info:
        main(["explain", "--probs", "0.5", "0.5", "--logits", "1", "2"])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_minus_infinity_logits_as_pytorch_takes_them():
    """A -inf logit is a class with probability 0: the loss is PyTorch's, finite for the
    others, inf when it is the target; the gradient is p - onehot."""
    torch = pytest.importorskip("torch")
    logits = [2.0, float("-inf"), 0.5]
    for target in (0, 1):
        result = explain("--logits", "2", "-inf", "0.5", "--target", str(target))
        assert result.returncode == 0, result.stderr
        expected = torch.nn.functional.cross_entropy(torch.tensor([logits], dtype=torch.float64),
                                                     torch.tensor([target])).item()
        printed = number_after(f"L = -ln p[{target}] =", result.stdout)
        assert printed == pytest.approx(expected, abs=5e-7)
        assert "z = [2, -inf, 0.5]" in result.stdout
        assert "z - m = [0, -inf, -1.5]" in result.stdout
        assert "the components sum to 0:" in result.stdout


def test_large_values_are_printed_readably():
    result = explain("--logits", "1e30", "-1e30", "0", "--target", "1")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "z = [1e+30, -1e+30, 0]" in out
    assert "m = max(z) = 1e+30;  z - m = [0, -2e+30, -1e+30]" in out
    assert "L = -ln p[1] = 2e+30 nats" in out
    assert max(len(token) for token in out.split()) < 30  # no 31-digit numbers

"""``crossent explain``: one example of cross-entropy, step by step, as it is taught.

logits -> softmax (after the max-shift) -> log -> pick the target -> loss, then the gradient
``softmax - onehot``.  The intermediate steps are spelled out with NumPy for reading; the
loss and gradient printed are the library's own (:func:`crossent.cross_entropy_with_grad`,
:func:`crossent.nll_loss_with_grad`), so the walk-through cannot drift from the library.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from ..functional import cross_entropy_with_grad, log_softmax, nll_loss_with_grad, softmax
from . import Needs, UsageError

DEFAULT_LOGITS = (2.0, 4.0, 0.5)
NEEDS = Needs()


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain",
        help="walk through the cross-entropy of one example, step by step",
        description="Walk through cross-entropy for one example: logits -> softmax -> log -> "
        "pick the target -> loss, and the gradient softmax - onehot. Logits may be -inf (a "
        "class that gets probability 0), as in PyTorch. "
        "Default: logits 2 4 0.5, target 0 (loss 2.153178).",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--logits", type=float, nargs="+", metavar="Z",
                     help="raw scores, one per class; -inf allowed (default: 2 4 0.5)")
    src.add_argument("--probs", type=float, nargs="+", metavar="P",
                     help="predicted probabilities instead of logits (must sum to 1)")
    p.add_argument("--target", type=int, default=0, metavar="K",
                   help="index of the true class, counted from 0 (default: 0)")
    p.add_argument("--bits", action="store_true",
                   help="measure in bits (log base 2) instead of nats (natural log)")
    p.set_defaults(run=run)


def _num(x: float) -> str:
    """Six decimals without trailing zeros (2, 0.5, -2.153178), or six significant digits in
    scientific notation for magnitudes from 1e6 and below 1e-6 (-1e+30, 2.5e-09); ``-inf``."""
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    if x != 0 and not 1e-6 <= abs(x) < 1e6:
        return f"{x:.6g}"
    text = f"{x:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _rounding_zero(x: float) -> float:
    """A sum that is 0 but for rounding (1e-17) shows as 0."""
    return 0.0 if abs(x) < 1e-12 else x


def _fixed(x: float) -> str:
    """Exactly six decimals (the loss, as PyTorch users read it), or :func:`_num`'s notation
    where six decimals would be unreadable."""
    x = float(x)
    if math.isfinite(x) and x != 0 and not 1e-6 <= abs(x) < 1e6:
        return _num(x)
    return f"{x:.6f}"


def _fmt(v: np.ndarray | float) -> str:
    if np.ndim(v) == 0:
        return _num(v)
    return "[" + ", ".join(_num(x) for x in v) + "]"


def run(args: argparse.Namespace) -> int:
    unit, log_unit = ("bits", math.log(2.0)) if args.bits else ("nats", 1.0)
    log_name = "log2" if args.bits else "ln"
    if args.probs is not None:
        lines = _explain_probabilities(np.array(args.probs), args.target, log_unit, log_name,
                                       unit)
    else:
        logits = np.array(args.logits if args.logits is not None else DEFAULT_LOGITS)
        lines = _explain_logits(logits, args.target, log_unit, log_name, unit)
    print("\n".join(lines))
    return 0


def _check_target(target: int, classes: int) -> None:
    if classes < 2:
        raise UsageError(f"need at least 2 classes, got {classes}")
    if not 0 <= target < classes:
        raise UsageError(f"--target must be a class index in [0, {classes - 1}], got {target}")


def _explain_logits(z: np.ndarray, y: int, log_unit: float, log_name: str,
                    unit: str) -> list[str]:
    _check_target(y, z.size)
    bad = np.isnan(z) | (z == np.inf)
    if bad.any():
        raise UsageError("--logits must be numbers or -inf (PyTorch's loss is NaN for NaN and "
                         f"+inf logits), got {' '.join(_num(x) for x in z[bad])}")
    if np.all(z == -np.inf):
        raise UsageError("--logits must not all be -inf: no class would have a probability "
                         "(PyTorch's loss is NaN)")
    m = z.max()
    shifted = z - m
    e = np.exp(shifted)
    p = softmax(z)
    logp = log_softmax(z) / log_unit
    loss, grad = cross_entropy_with_grad(z, np.array(y))
    loss, grad = loss / log_unit, grad / log_unit
    onehot = np.eye(z.size)[y]
    grad_formula = "(p - onehot(y)) / ln 2" if unit == "bits" else "p - onehot(y)"
    return [
        f"Cross-entropy of one example, step by step ({unit}: {log_name}).",
        "",
        f"  logits          z = {_fmt(z)}      true class y = {y}",
        f"1 shift by max    m = max(z) = {_num(m)};  z - m = {_fmt(shifted)}",
        "                  (softmax is unchanged by a shift, and exp can no longer overflow)",
        f"2 exponentiate    exp(z - m) = {_fmt(e)};  sum = {_num(e.sum())}",
        f"3 normalise       p = softmax(z) = exp(z - m) / sum = {_fmt(p)}",
        f"4 take the log    {log_name} p = {_fmt(logp)}",
        f"5 pick the target {log_name} p[{y}] = {_fixed(logp[y])}",
        f"6 loss            L = -{log_name} p[{y}] = {_fixed(loss)} {unit}",
        "",
        f"  gradient        dL/dz = {grad_formula} = {_fmt(grad)}",
        f"                  with onehot(y) = {_fmt(onehot)}; the components sum to "
        f"{_num(_rounding_zero(grad.sum()))}:",
        "                  raising the true logit lowers the loss, raising any other raises it",
    ]


def _explain_probabilities(p: np.ndarray, y: int, log_unit: float, log_name: str,
                           unit: str) -> list[str]:
    _check_target(y, p.size)
    bad = ~np.isfinite(p) | (p < 0) | (p > 1)
    if bad.any():
        raise UsageError("--probs must be probabilities in [0, 1], got "
                         f"{' '.join(_num(x) for x in p[bad])}")
    if abs(p.sum() - 1) > 1e-6:
        raise UsageError(f"--probs must sum to 1, got a sum of {p.sum():.6g}")
    with np.errstate(divide="ignore"):
        logp = np.log(p)
    loss, grad = nll_loss_with_grad(logp, np.array(y))
    loss, grad = loss / log_unit, grad / log_unit
    with np.errstate(divide="ignore"):
        grad_p = -1.0 / (p[y] * log_unit)
    return [
        f"Cross-entropy of one prediction, step by step ({unit}: {log_name}).",
        "",
        f"  probabilities   p = {_fmt(p)}      true class y = {y}",
        f"1 take the log    {log_name} p = {_fmt(logp / log_unit)}",
        f"2 pick the target {log_name} p[{y}] = {_fixed(logp[y] / log_unit)}",
        f"3 loss            L = -{log_name} p[{y}] = {_fixed(loss)} {unit}",
        "",
        f"  gradient        dL/dp[{y}] = -1 / ({'ln 2 * ' if unit == 'bits' else ''}p[{y}]) = "
        f"{_fixed(grad_p)} (the other probabilities do not enter the loss)",
        f"                  dL/d(log p) = {_fmt(grad)}",
    ]

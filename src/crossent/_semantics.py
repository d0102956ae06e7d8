"""The one definition of every loss's rules, shared by all executors.

Everything here decides *what* a loss means (PyTorch's definition, see
``reference/semantics.md``); nothing here decides *how fast* it is computed.  The NumPy
executor (:mod:`crossent._kernel`, :mod:`crossent.functional`), the torch executor and the
Triton kernels all take their shape rules, argument checks, reduction denominators and
label-smoothing coefficients from this module, so a rule is changed in exactly one place.

The functions work on shapes, dtypes names and small per-row vectors.  Functions that take
arrays use only operators and ``.sum()``, so they accept NumPy arrays and torch tensors alike.

The unifying formula
--------------------
Every cross-entropy variant (index or probability targets, class weights, label smoothing,
``ignore_index``) is, per element ``n`` with logits ``z`` and log-probabilities
``l = log_softmax(z)``, a weighted sum over classes with *target coefficients* ``a``::

    loss_n = -sum_c a_c * l_c = A * logsumexp(z) - a . z,        A = sum_c a_c
    d loss_n / d z = A * softmax(z) - a

* index target ``y``: ``a = (1 - eps) * w[y] * onehot(y) + (eps / C) * w``  (0 if ignored)
* probability target ``t``: ``a = w * ((1 - eps) * t + eps / C)``

(``w`` is all ones without class weights).  z-loss adds ``z_loss * w_n * logsumexp(z)**2``,
whose gradient is ``2 * z_loss * w_n * logsumexp(z) * softmax(z)``; softcap replaces ``z`` by
``s * tanh(x / s)`` and multiplies the gradient by ``1 - tanh(x / s)**2``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

REDUCTIONS = ("none", "mean", "sum")
KL_REDUCTIONS = ("none", "batchmean", "mean", "sum")

# Binary cross-entropy on probabilities clamps each log at -100 (so an exact 0 or 1 costs at
# most 100 per element) and the gradient's denominator x (1 - x) at 1e-12.  PyTorch's 1e-12
# is a float32 constant in every dtype: float(np.float32(1e-12)), which makes its float64
# gradient at x = 0, y = 1 equal to -1000000003995.8029, not -1e12.
BCE_LOG_CLAMP = -100.0
BCE_GRAD_EPS = 9.999999960041972e-13


# --------------------------------------------------------------------------------------------
# Exceptions: the natural Python type, and also the type PyTorch raises for the same mistake,
# so NumPy users catch ValueError/TypeError and drop-in torch code keeps catching RuntimeError.
# --------------------------------------------------------------------------------------------


class ArgumentError(ValueError, RuntimeError):
    """A bad argument value or shape (PyTorch raises RuntimeError for these)."""


class ArgumentTypeError(TypeError, RuntimeError):
    """An argument of the wrong dtype (PyTorch raises RuntimeError for these)."""


class LogitsTypeError(TypeError, NotImplementedError):
    """Non-floating logits (PyTorch raises NotImplementedError: no kernel for 'Long')."""


class EmptyClassesError(ValueError, IndexError):
    """An input with zero classes (PyTorch raises IndexError: 'Target 0 is out of bounds')."""


# --------------------------------------------------------------------------------------------
# Scalar arguments
# --------------------------------------------------------------------------------------------


def check_reduction(reduction: Any, allowed: tuple[str, ...] = REDUCTIONS) -> str:
    """Return ``reduction`` if it names one of ``allowed``; raise ``ValueError`` otherwise."""
    if not isinstance(reduction, str) or reduction not in allowed:
        raise ValueError(
            f"reduction must be one of {', '.join(repr(r) for r in allowed)}, got {reduction!r}"
        )
    return reduction


def check_label_smoothing(label_smoothing: Any) -> float:
    """Label smoothing must be a real number in [0, 1].

    PyTorch silently treats a negative value as 0 (pytorch#134767); we refuse it, because a
    negative smoothing is always a mistake and ignoring it hides that.
    """
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real):
        raise TypeError(
            f"label_smoothing must be a float in [0, 1], got {type(label_smoothing).__name__} "
            f"{label_smoothing!r}"
        )
    value = float(label_smoothing)
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise ArgumentError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    return value


def check_ignore_index(ignore_index: Any) -> int:
    """``ignore_index`` is a Python or NumPy integer that fits in 64 bits, as in PyTorch
    (whose default is -100)."""
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(
            f"ignore_index must be an int, got {type(ignore_index).__name__} {ignore_index!r}"
        )
    value = int(ignore_index)
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"ignore_index must fit in a 64-bit signed integer (as in PyTorch), "
                         f"got {value}")
    return value


def check_z_loss(z_loss: Any) -> float:
    """z-loss coefficient: a finite real number >= 0 (PaLM uses 1e-4)."""
    if isinstance(z_loss, bool) or not isinstance(z_loss, numbers.Real):
        raise TypeError(f"z_loss must be a float >= 0, got {type(z_loss).__name__} {z_loss!r}")
    value = float(z_loss)
    if not (0.0 <= value < math.inf):  # comparisons, not math.isfinite: they trace symbolically
        raise ValueError(f"z_loss must be a finite float >= 0, got {z_loss!r}")
    return value


def check_softcap(softcap: Any) -> float | None:
    """Softcap: ``None`` (off) or a finite real number > 0 (Gemma 2 uses 30)."""
    if softcap is None:
        return None
    if isinstance(softcap, bool) or not isinstance(softcap, numbers.Real):
        raise TypeError(
            f"softcap must be None or a float > 0, got {type(softcap).__name__} {softcap!r}"
        )
    value = float(softcap)
    if not (0.0 < value < math.inf):  # comparisons, not math.isfinite: they trace symbolically
        raise ValueError(f"softcap must be None or a finite float > 0, got {softcap!r}")
    return value


# --------------------------------------------------------------------------------------------
# Shapes of the softmax cross-entropy family
# --------------------------------------------------------------------------------------------


def _shape_str(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ("," if len(shape) == 1 else "") + ")"


@dataclass(frozen=True)
class ClassLayout:
    """Where the classes are in an input of shape ``(C,)``, ``(N, C)`` or ``(N, C, d1..dK)``.

    ``batch_shape`` is the shape of one loss per element (the index target's shape): ``()``,
    ``(N,)`` or ``(N, d1, ..., dK)``; ``rows`` is its size, the number of softmax rows.
    """

    input_shape: tuple[int, ...]
    num_classes: int
    class_axis: int  # 0 for an unbatched (C,) input, else 1
    batch_shape: tuple[int, ...]

    @property
    def rows(self) -> int:
        return math.prod(self.batch_shape)

    @property
    def spatial(self) -> bool:
        """True when the classes are not the last axis, i.e. ``(N, C, d1..dK)`` with K >= 1."""
        return len(self.input_shape) > 2


def class_layout(input_shape: tuple[int, ...], name: str = "input") -> ClassLayout:
    """Resolve PyTorch's class axis: dim 1, or dim 0 for an unbatched ``(C,)`` input.

    An empty class dimension is refused, unless there are no elements either (``(0, 0)``,
    ``(0, 0, d1)``), which PyTorch accepts (an empty loss, ``'mean'`` NaN, ``'sum'`` 0).
    """
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) == 0:
        raise ArgumentError(
            f"{name} must have shape (C,), (N, C) or (N, C, d1, ..., dK), got a 0-d array"
        )
    class_axis = 0 if len(input_shape) == 1 else 1
    num_classes = input_shape[class_axis]
    no_elements = math.prod(input_shape[:class_axis] + input_shape[class_axis + 1:]) == 0
    if num_classes == 0 and not no_elements:
        raise EmptyClassesError(
            f"{name} has an empty class dimension (axis {class_axis} of shape "
            f"{_shape_str(input_shape)}); cross-entropy needs at least one class"
        )
    batch_shape = input_shape[:class_axis] + input_shape[class_axis + 1 :]
    return ClassLayout(input_shape, num_classes, class_axis, batch_shape)


def is_probability_target(input_shape: tuple[int, ...], target_shape: tuple[int, ...]) -> bool:
    """PyTorch's rule: a target of the input's own shape holds class probabilities."""
    return tuple(input_shape) == tuple(target_shape)


def check_target_batch(input_shape: tuple[int, ...], target_shape: tuple[int, ...]) -> None:
    """PyTorch compares the batch sizes before anything else about the target (its dtype
    included): a mismatch is a ``ValueError`` whatever kind of target it is."""
    m = int(target_shape[0]) if len(target_shape) else 0  # a 0-d target: PyTorch says 0
    if len(input_shape) >= 2 and m != int(input_shape[0]):
        n = int(input_shape[0])
        raise ValueError(
            f"target batch size {m} does not match input batch size {n} (PyTorch: expected "
            f"input batch_size ({n}) to match target batch_size ({m})): the target's leading "
            f"dimension must have shape ({n},) for input of shape "
            f"{_shape_str(tuple(input_shape))}, got {_shape_str(tuple(target_shape))}"
        )


def check_index_target_shape(layout: ClassLayout, target_shape: tuple[int, ...]) -> None:
    """An index target has the input's shape without the class axis."""
    target_shape = tuple(int(s) for s in target_shape)
    if target_shape == layout.batch_shape:
        return
    expected = _shape_str(layout.batch_shape)
    got = _shape_str(target_shape)
    check_target_batch(layout.input_shape, target_shape)
    raise ArgumentError(
        f"target must have shape {expected} (class indices) or {_shape_str(layout.input_shape)} "
        f"(class probabilities) for input of shape {_shape_str(layout.input_shape)}, got {got}"
    )


def check_class_weight(weight_shape: tuple[int, ...] | None, num_classes: int) -> None:
    """Class weights: one number per class, shape ``(C,)``."""
    if weight_shape is None:
        return
    if tuple(weight_shape) != (num_classes,):
        raise ArgumentError(
            f"weight must have shape ({num_classes},), one weight per class, "
            f"got shape {_shape_str(tuple(weight_shape))}"
        )


def check_class_weight_dtype(weight_dtype: Any, input_dtype: Any, probability: bool) -> None:
    """PyTorch's dtype rule for class weights (NumPy dtypes and torch dtypes alike).

    With class-index targets the weight must have the input's dtype (PyTorch: "expected
    scalar type Float but found Double"); with probability targets any floating dtype is
    accepted and promotes the loss, as PyTorch's probability path does.
    """
    if probability or weight_dtype == input_dtype:
        return
    want, got = (str(dtype).replace("torch.", "") for dtype in (input_dtype, weight_dtype))
    raise ArgumentTypeError(
        f"weight must have the input's dtype {want} for class-index targets (as in "
        f"PyTorch), got {got}; convert it with .astype or .to"
    )


def check_probability_ignore_index(ignore_index: int) -> None:
    """PyTorch refuses a non-negative ``ignore_index`` with probability targets."""
    if ignore_index >= 0:
        raise ArgumentError(
            "ignore_index is not supported for probability targets (a target of the input's "
            f"shape): expected a negative ignore_index (the default -100), got {ignore_index}"
        )


def out_of_range_message(value: int, position: tuple[int, ...], num_classes: int,
                         ignore_index: int) -> str:
    """The one wording of a bad class index, naming the value and where it is."""
    where = "[" + ", ".join(str(int(i)) for i in position) + "]" if position else ""
    return (
        f"target{where} = {int(value)} is out of range: expected a class index in "
        f"[0, {num_classes - 1}] or ignore_index ({ignore_index})"
    )


# --------------------------------------------------------------------------------------------
# Reductions and the target coefficients (the maths every executor shares)
# --------------------------------------------------------------------------------------------


def index_row_weights(target: Any, ignore_index: int, weight: Any | None) -> tuple[Any, Any]:
    """``(valid, w_y)`` for class-index targets, as arrays of the target's shape.

    ``valid`` is 1 where the target is not ``ignore_index`` (0 elsewhere), and ``w_y`` is the
    weight of each element's target class times ``valid`` (so ignored elements weigh 0).
    ``target`` must already be range-checked; ignored positions may hold any value.
    Works for NumPy arrays and torch tensors (``weight`` must be of the same kind).
    """
    valid = target != ignore_index
    if weight is None:
        return valid, valid
    safe = target * valid  # ignored positions read class 0, then are zeroed by `valid`
    return valid, weight[safe] * valid


def mean_denominator_index(w_y: Any) -> Any:
    """``'mean'`` of index targets divides by the total weight of the non-ignored elements.

    ``w_y`` comes from :func:`index_row_weights`.  With every element ignored (or weighing 0)
    this is 0 and the mean is 0/0 = nan, exactly as PyTorch does (pytorch#70348).
    """
    return w_y.sum()


def mean_denominator_probability(elements: int) -> int:
    """``'mean'`` of probability targets divides by the element count ``N*d1*...*dK``.

    It never divides by the class weights (unlike index targets; pytorch#61044).
    """
    return elements


def smoothing_terms(label_smoothing: float, num_classes: int) -> tuple[float, float]:
    """``(on_target, uniform)``: the index target's coefficient on its class is
    ``on_target * w[y]`` and every class ``c`` also gets ``uniform * w[c]``."""
    return 1.0 - label_smoothing, label_smoothing / num_classes


def smoothed_probabilities(target: Any, label_smoothing: float, num_classes: int) -> Any:
    """Probability targets are smoothed as ``(1 - eps) * t + eps / C``."""
    if label_smoothing == 0.0:
        return target
    on_target, uniform = smoothing_terms(label_smoothing, num_classes)
    return target * on_target + uniform


def index_coefficient_sum(w_y: Any, valid: Any, label_smoothing: float, num_classes: int,
                          weight_sum: Any) -> Any:
    """``A = sum_c a_c`` for index targets: ``(1-eps) w[y] + (eps/C) sum(w)``, 0 if ignored.

    Pass ``w_y`` and ``valid`` in the compute dtype: in torch a bool ``valid`` times a Python
    float is float32, which would round the smoothing term of a float64 loss.
    """
    if label_smoothing == 0.0:
        return w_y
    on_target, uniform = smoothing_terms(label_smoothing, num_classes)
    return w_y * on_target + valid * (uniform * weight_sum)


def reduce_loss(per_element: Any, reduction: str, denominator: Any) -> Any:
    """Apply ``reduction`` to per-element losses: ``'none'`` keeps them, ``'sum'`` adds them,
    ``'mean'`` divides the sum by ``denominator`` (see the ``mean_denominator_*`` rules)."""
    if reduction == "none":
        return per_element
    total = per_element.sum()
    if reduction == "sum":
        return total
    return total / denominator


def reduce_loss_grad(grad_output: Any, reduction: str, denominator: Any) -> Any:
    """``d reduced loss / d loss_n`` times the upstream gradient: ``grad_output`` divided by
    the ``'mean'`` denominator, as it is for ``'sum'`` and ``'none'`` (one factor per
    element there)."""
    return grad_output / denominator if reduction == "mean" else grad_output


def kl_div_denominator(input_shape: tuple[int, ...], reduction: str,
                       output_shape: tuple[int, ...] | None = None) -> int | None:
    """``'batchmean'`` divides by ``input.shape[0]``; ``'mean'`` by the element count.

    The target may broadcast against the input: ``output_shape`` is then the shape of the
    pointwise loss, whose element count ``'mean'`` divides by, while ``'batchmean'`` still
    divides by the input's first dimension (PyTorch's rule; a 0-d input divides by 1).
    """
    if reduction == "batchmean":
        return int(input_shape[0]) if len(input_shape) else 1
    if reduction == "mean":
        return math.prod(input_shape if output_shape is None else output_shape)
    return None

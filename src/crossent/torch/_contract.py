"""What every crossent.torch op promises inside a training stack, in one home.

A loss that is exact alone but wrong inside a training loop is wrong.  The ops of
:mod:`crossent.torch` compute their gradients in the forward pass, which puts them at risk
exactly where PyTorch's own autograd contract is subtle; the rules that keep them inside it
live here, and every op (``cross_entropy``, ``linear_cross_entropy``, the distributed ops)
takes them from here:

* **Arguments**: tensors, dtypes and class-index targets are checked with errors that name
  the argument (:func:`check_tensor`, :func:`check_float_dtype`, :func:`check_target_dtype`,
  :func:`index_target_as_int64`).
* **Autocast and dtypes**: under ``torch.autocast`` PyTorch runs cross-entropy in float32
  (:func:`autocast_dtype`) and a linear layer in lower precision
  (:func:`linear_autocast_dtype`, :func:`autocast_linear_inputs`); the ops return a float32
  loss there too, and elsewhere the dtype PyTorch's would (:func:`loss_dtype`).
* **Handing out gradients**: a gradient tensor given to autograd is never changed afterwards
  (:func:`scale_into` scales a kept gradient in place only when the op will not use it again).
* **Consuming logits** (``inplace_backward=True``): only memory nothing else needs
  (:func:`check_consumable`).
* **Transforms**: first derivatives work everywhere (``backward``, ``torch.autograd.grad``
  repeated, ``torch.func.grad``/``jacrev``/``jvp``/``jacfwd``/``vmap``, forward-mode AD);
  higher derivatives raise (:func:`refuse_double_backward`, :func:`refuse_higher_order`).
  Ops that support reverse mode only (the distributed ones) refuse the rest by name
  (:func:`refuse_transforms`, :func:`refuse_vmapped_backward`).
"""

from __future__ import annotations

from typing import Any

import torch

from .. import _semantics as sem
from .._semantics import out_of_range_message

#: Floating dtypes every executor computes (half precision is computed in float32).
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(value: Any, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def dtype_name(t: torch.Tensor | torch.dtype) -> str:
    dtype = t.dtype if isinstance(t, torch.Tensor) else t
    return str(dtype).replace("torch.", "")


def check_float_dtype(t: torch.Tensor, name: str, what: str = "logits") -> None:
    """``t`` must be float16, bfloat16, float32 or float64: integer logits are a
    ``NotImplementedError`` in PyTorch, and so are float8 and other floating dtypes that no
    executor computes; both are also ``TypeError`` here."""
    if t.dtype in FLOAT_DTYPES:
        return
    supported = ", ".join(dtype_name(d) for d in FLOAT_DTYPES)
    kind = "a floating-point" if not t.is_floating_point() else "a"
    raise sem.LogitsTypeError(
        f"{name} must be {kind} tensor of {what} in one of {supported}, got dtype "
        f"{dtype_name(t)}"
    )


def check_target_dtype(target: torch.Tensor, probability: bool, index_shape: tuple[int, ...],
                       probability_shape: tuple[int, ...]) -> None:
    """Class probabilities (a target of ``probability_shape``) are floating point, in one of
    :data:`FLOAT_DTYPES`; class indices (of ``index_shape``) are integers of any dtype
    (floating, complex and bool are refused, as PyTorch refuses them)."""
    if probability:
        if not target.is_floating_point():
            raise sem.ArgumentTypeError(
                f"target of shape {sem._shape_str(tuple(probability_shape))} holds class "
                f"probabilities as floats, so it must be floating point, got "
                f"{dtype_name(target)}; class indices have shape "
                f"{sem._shape_str(tuple(index_shape))}")
        check_float_dtype(target, "target", "class probabilities")
    elif target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise sem.ArgumentTypeError(
            f"target must hold integer class indices of shape "
            f"{sem._shape_str(tuple(index_shape))} (or probabilities of shape "
            f"{sem._shape_str(tuple(probability_shape))}), got dtype {dtype_name(target)}")


def autocast_dtype(device: torch.device, *dtypes: torch.dtype) -> torch.dtype | None:
    """float32 when ``torch.autocast`` is active on ``device`` and would cast these dtypes.

    PyTorch lists cross-entropy among the ops autocast runs in float32: float16, bfloat16
    and float32 arguments are cast to float32 (float64 is left alone, and then a float32
    class weight is an error, as in PyTorch).  The executors already compute half
    precision in float32 from the exact widened values, so no cast is needed: only the
    loss's dtype (and the weight's accepted dtype) change.
    """
    if not torch.is_autocast_enabled(device.type):
        return None
    if any(d == torch.float64 for d in dtypes):
        return None
    return torch.float32


def check_class_weight_dtype(weight: torch.Tensor, input_dtype: torch.dtype,
                             probability: bool, autocast: torch.dtype | None) -> None:
    """PyTorch's rule (:func:`crossent._semantics.check_class_weight_dtype`): with class
    indices the weight has the input's dtype; probability targets accept any and promote
    the loss.  Under autocast both are cast to float32, so any castable dtype is accepted."""
    if autocast is not None:
        if weight.dtype not in FLOAT_DTYPES or weight.dtype == torch.float64:
            raise sem.ArgumentTypeError(
                f"weight must be float16, bfloat16 or float32 under torch.autocast, got "
                f"{dtype_name(weight)}"
            )
        return
    sem.check_class_weight_dtype(weight.dtype, input_dtype, probability)


def probability_target_dtype(target: torch.Tensor, weight: torch.Tensor | None
                             ) -> torch.dtype:
    """The dtype probability targets are computed in: a class weight of higher precision
    promotes them (and so the loss and its precision), as in PyTorch."""
    if weight is None:
        return target.dtype
    return torch.promote_types(target.dtype, weight.dtype)


def loss_dtype(input_dtype: torch.dtype, target: torch.Tensor, weight: torch.Tensor | None,
               probability: bool, autocast: torch.dtype | None) -> torch.dtype:
    """The dtype of the loss, PyTorch's rule: ``autocast`` (float32) under
    ``torch.autocast`` (:func:`autocast_dtype`); else the input's dtype, promoted for
    probability targets by theirs and the class weight's (:func:`probability_target_dtype`)."""
    if autocast is not None:
        return autocast
    if not probability:
        return input_dtype
    return torch.promote_types(input_dtype, probability_target_dtype(target, weight))


def linear_autocast_dtype(input: torch.Tensor, linear_weight: torch.Tensor,
                          linear_bias: torch.Tensor | None = None) -> torch.dtype | None:
    """The loss's autocast dtype for a linear + cross-entropy op, or None.

    Under ``torch.autocast`` PyTorch runs ``F.linear`` in autocast's lower precision (its
    float16, bfloat16 and float32 arguments cast, whatever their mix) and the cross-entropy
    in float32, which is returned; float64 arguments are left alone, and then the dtypes
    must agree, as they must without autocast (``F.linear`` refuses a mix): checked here,
    with errors naming the argument.  :func:`autocast_linear_inputs` makes the casts.
    """
    dtypes = (input.dtype, linear_weight.dtype) + \
        ((linear_bias.dtype,) if linear_bias is not None else ())
    autocast = autocast_dtype(input.device, *dtypes)
    if autocast is not None:
        return autocast
    if input.dtype != linear_weight.dtype:
        raise sem.ArgumentTypeError(
            f"input and linear_weight must have the same dtype, got {dtype_name(input)} and "
            f"{dtype_name(linear_weight)}"
        )
    if linear_bias is not None and linear_bias.dtype != input.dtype:
        raise sem.ArgumentTypeError(
            f"linear_bias must have the input's dtype {dtype_name(input)}, got "
            f"{dtype_name(linear_bias)}"
        )
    return None


def autocast_linear_inputs(
    autocast: torch.dtype | None, input: torch.Tensor, linear_weight: torch.Tensor,
    linear_bias: torch.Tensor | None, weight: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(input, linear_weight, linear_bias, weight)`` as the op computes them: under
    autocast (``autocast`` from :func:`linear_autocast_dtype`) the head's matrix products
    in autocast's lower-precision dtype, as ``F.linear`` runs them, and the class weight in
    the loss's dtype (after :func:`check_class_weight_dtype`); otherwise unchanged."""
    if autocast is None:
        return input, linear_weight, linear_bias, weight
    low = torch.get_autocast_dtype(input.device.type)
    return (input.to(low), linear_weight.to(low),
            linear_bias.to(low) if linear_bias is not None else None,
            weight.to(autocast) if weight is not None else None)


def index_target_as_int64(target: torch.Tensor, num_classes: int, ignore_index: int,
                          target_shape: tuple[int, ...]) -> torch.Tensor:
    """Class indices of any integer dtype as int64, without letting a value change.

    Every executor indexes with int64.  uint16/uint32 convert exactly.  A uint64 index of
    2**63 or more has no int64 value: it would wrap to a negative number (2**64 - 100 to
    -100, the ignore_index) and be silently ignored, so it is refused as out of range, by
    value and position (on CPU; elsewhere by an asynchronous device assertion, like the
    other range checks, without a host synchronisation).
    """
    if target.dtype == torch.int64:
        return target
    if target.dtype != torch.uint64:
        return target.to(torch.int64)
    signed = target.view(torch.int64)  # same bits: values >= 2**63 read as negative
    wrapped = signed < 0
    if target.device.type == "cpu":
        if bool(wrapped.any()):
            flat = int(wrapped.reshape(-1).nonzero()[0, 0])
            pos = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), target_shape))
            value = int(signed.reshape(-1)[flat]) + 2**64
            raise IndexError(out_of_range_message(value, pos, num_classes, ignore_index))
    else:
        torch._assert_async(~wrapped.any(), "crossent: target class index out of range")
    return signed


def _saved_by_producer(t: torch.Tensor) -> bool:
    """True when the op that produced ``t`` (or its base) saved it for its own backward."""
    storage = t.untyped_storage().data_ptr()
    for node in {t.grad_fn, t._base.grad_fn if t._base is not None else None}:
        if node is None:
            continue
        for name in dir(node):
            if not name.startswith("_saved_"):
                continue
            try:
                saved = getattr(node, name)
            except RuntimeError:  # already freed by a backward
                continue
            if isinstance(saved, torch.Tensor) and saved.numel() and \
                    saved.untyped_storage().data_ptr() == storage:
                return True
    return False


def check_consumable(input: torch.Tensor, op: str) -> None:
    """``inplace_backward=True`` writes the gradient over ``input``: refuse memory that
    anything else still needs, before a single value is overwritten."""
    prefix = f"crossent.torch.{op}(..., inplace_backward=True) overwrites the logits with " \
             "their gradient, so it cannot take "
    suffix = "; pass inplace_backward=False (or a tensor nothing else uses)"
    if input.requires_grad and input.is_leaf:
        raise sem.ArgumentError(prefix + "a leaf tensor that requires grad (such as an "
                                "nn.Parameter): its .grad would alias its data" + suffix)
    base = input._base
    if base is not None and base.requires_grad and base.is_leaf:
        raise sem.ArgumentError(prefix + "a view of a leaf tensor that requires grad"
                                + suffix)
    if torch._debug_has_internal_overlap(input) != 0:
        raise sem.ArgumentError(prefix + "logits whose elements overlap in memory "
                                "(broadcast rows with stride 0, or overlapping rows): "
                                f"strides {tuple(input.stride())}" + suffix)
    if input.requires_grad and _saved_by_producer(input):
        raise sem.ArgumentError(prefix + "logits that the op which produced them saved for "
                                f"its own backward ({type(input.grad_fn).__name__})" + suffix)
    # one reference is the caller's tensor; any other is a view of it or a tensor another
    # autograd op saved for its backward (pow, mul by a tensor, ...), which would read the
    # gradient instead of the logits
    if input._use_count() > 1:
        raise sem.ArgumentError(prefix + "logits that another tensor still uses (a view of "
                                "them, or an autograd op that saved them for its backward)"
                                + suffix)


def functorch_levels() -> list[Any]:
    """The active ``torch.func`` transforms, outermost first (none while ``torch.compile``
    traces: Dynamo runs the transforms itself and cannot trace this query)."""
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    if torch.compiler.is_compiling():
        return []
    return list(retrieve_all_functorch_interpreters())


def refuse_higher_order(op: str, inplace: bool) -> None:
    """First derivatives through ``torch.func`` work; a second one (``hessian``,
    ``jacfwd(jacrev(...))``, ``grad(grad(...))``) would silently be 0, because the gradient
    is computed in the forward pass: refuse it.  ``inplace_backward`` refuses transforms."""
    from torch._C._functorch import TransformType

    levels = functorch_levels()
    if inplace and levels:
        raise RuntimeError(
            f"crossent.torch.{op}(..., inplace_backward=True) cannot run under torch.func "
            "transforms (grad, vmap, jvp, ...); use inplace_backward=False"
        )
    differentiating = [lv for lv in levels if lv.key() in (TransformType.Grad,
                                                             TransformType.Jvp)]
    if len(differentiating) > 1:
        raise RuntimeError(
            f"crossent.torch.{op} supports first derivatives only (torch.func.grad, jacrev, "
            "jvp, jacfwd, vmap of them); a second derivative (hessian, jacfwd(jacrev(...)), "
            "grad(grad(...))) is not supported: use the plain PyTorch op for it"
        )


def _outer_requires_grad(t: torch.Tensor | None) -> bool:
    """Whether the autograd outside every ``torch.func`` transform tracks ``t`` (the plain
    tensor under functorch's wrappers requires grad)."""
    from torch._C._functorch import get_unwrapped, is_functorch_wrapped_tensor

    if t is None:
        return False
    while is_functorch_wrapped_tensor(t):
        t = get_unwrapped(t)
    return t.requires_grad


def refuse_transforms(op: str, *tensors: torch.Tensor | None) -> None:
    """For an op that supports reverse-mode AD only (``backward``, ``torch.autograd.grad``,
    ``torch.func.grad``, ``torch.compile``): ``vmap``, forward-mode AD and a second
    derivative raise before anything runs, rather than return a wrong value.

    The distributed ops are such: their collectives have no batching rule and their
    statistics no tangent, and an autograd Function that defined ``jvp`` or ``vmap`` itself
    could not be traced by Dynamo.  A second derivative is nested ``torch.func.grad``, or one
    ``grad`` whose inputs the outer autograd also tracks (the gradient computed in the
    forward pass would be differentiated as a constant).
    """
    from torch._C._functorch import TransformType
    from torch.autograd import forward_ad

    keys = [level.key() for level in functorch_levels()]  # none while compiling
    what = None
    if TransformType.Vmap in keys:
        what = "torch.func.vmap"
    elif keys.count(TransformType.Grad) > 1 or (
            TransformType.Grad in keys and any(map(_outer_requires_grad, tensors))):
        what = "double backward (nested torch.func.grad, hessian)"
    elif TransformType.Jvp in keys or (
            not torch.compiler.is_compiling() and forward_ad._current_level >= 0
            and any(t is not None and forward_ad.unpack_dual(t).tangent is not None
                    for t in tensors)):
        what = "forward-mode AD (torch.func.jvp, jacfwd, torch.autograd.forward_ad)"
    if what is not None:
        raise RuntimeError(
            f"crossent.torch.{op} does not support {what}; it supports backward "
            "(reverse-mode) AD, torch.func.grad and torch.compile")


def refuse_vmapped_backward(op: str) -> None:
    """The backward of an op under :func:`refuse_transforms` has no batching rule either:
    ``torch.func.jacrev`` and ``vmap`` over a ``vjp`` raise."""
    from torch._C._functorch import TransformType

    if any(level.key() == TransformType.Vmap for level in functorch_levels()):
        raise RuntimeError(
            f"crossent.torch.{op} does not support a vmapped backward (torch.func.jacrev, "
            "vmap over vjp); use torch.func.grad or backward()")


def differentiating(*tensors: torch.Tensor | None) -> bool:
    """Whether any derivative of the op's result can be taken: reverse mode (grad enabled
    and an argument requires grad), forward mode (an argument carries a tangent), or a
    ``torch.func`` transform.  Only then does the op go through its autograd Function; a
    bare custom op would silently give a zero tangent."""
    from torch.autograd.forward_ad import unpack_dual

    present = [t for t in tensors if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in present):
        return True
    if torch.compiler.is_compiling():
        return False
    if any(unpack_dual(t).tangent is not None for t in present):
        return True
    return bool(functorch_levels())


def may_differentiate(t: torch.Tensor | None) -> bool:
    """Whether a derivative with respect to ``t`` may be asked for (see
    :func:`differentiating`); an op computes that gradient in its forward pass then."""
    from torch.autograd.forward_ad import unpack_dual

    if t is None:
        return False
    if t.requires_grad and torch.is_grad_enabled():
        return True
    if torch.compiler.is_compiling():
        return False
    return unpack_dual(t).tangent is not None or bool(functorch_levels())


def refuse_double_backward(op: str) -> None:
    """The gradient was computed in the forward pass, so there is no graph to differentiate
    again: say so instead of returning a wrong second derivative.  (Under ``torch.func``
    backward always runs with grad enabled; nested transforms were refused in forward by
    :func:`refuse_higher_order`.)"""
    if torch.is_grad_enabled() and not functorch_levels():
        raise RuntimeError(
            f"crossent.torch.{op} computes its gradient in the forward pass and does not "
            "support double backward (create_graph=True); use the plain PyTorch op for "
            "higher-order gradients"
        )


def pure_backward() -> bool:
    """True when backward must not touch state (torch.compile traces it as a pure function;
    torch.func may run it under vmap): kept gradients are then scaled out of place."""
    return torch.compiler.is_compiling() or bool(functorch_levels())


def is_unit(scale: torch.Tensor) -> bool:
    """``scale`` is exactly 1, known without a device synchronisation (CPU only)."""
    return scale.device.type == "cpu" and scale.numel() == 1 and scale.item() == 1.0


def rows_factor(scale: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """One factor per softmax row (``reduction='none'``), shaped to broadcast against
    logits ``(M, C)`` (as ``(M, 1)``) or ``(N, C, S)`` (as ``(N, 1, S)``); a 0-d factor as
    it is."""
    if scale.ndim == 0:
        return scale
    if logits.ndim == 3:
        return scale.reshape(logits.shape[0], 1, logits.shape[2])
    return scale.reshape(-1, *([1] * (logits.ndim - 1)))


def scale_into(grad: torch.Tensor, factor: torch.Tensor, dtype: torch.dtype | None = None
               ) -> torch.Tensor:
    """``grad * factor`` written over ``grad`` (which the caller gives up), in ``dtype``.

    ``factor`` broadcasts against ``grad`` (0-d, or :func:`rows_factor`).  The product is
    taken in the factor's precision and rounded once.
    """
    if not is_unit(factor):
        grad.mul_(factor)
    return grad if dtype is None or grad.dtype == dtype else grad.to(dtype)


def scaled(grad: torch.Tensor, factor: torch.Tensor, dtype: torch.dtype | None = None
           ) -> torch.Tensor:
    """``grad * factor`` as a new tensor (``grad`` is kept for a later backward)."""
    return (grad * factor).to(dtype if dtype is not None else grad.dtype)

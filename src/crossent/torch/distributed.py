r"""Cross-entropy over a vocabulary sharded across processes, exact at any number of them.

When a language model's output layer is split over tensor-parallel ranks, each rank holds
the logits of a slice of the classes.  Every variant of the loss is ``A lse - a.z`` per row
(:mod:`crossent._semantics`), so a rank needs from the others only four numbers per row
(the shard pass, :mod:`crossent.torch._shard`): its local max, sum of exponentials, target
dot and coefficient sum, merged by the online-softmax rule.  Each rank then finishes its
own slice of the gradient.  The loss on every rank equals ``crossent.torch.cross_entropy``
(hence ``F.cross_entropy``) of the gathered logits, for every option: class weights with
label smoothing, ``ignore_index``, every reduction, probability targets, z-loss, softcap and
padded vocabularies.

* :func:`vocab_parallel_cross_entropy`: the loss of this rank's ``(..., V_local)`` logits.
* :func:`vocab_parallel_linear_cross_entropy`: the same from hidden states and this rank's
  rows of the head, never holding more than a chunk of logits; ``sequence_parallel=True``
  gathers row-split inputs in forward and reduce-scatters ``d input``.
* :func:`global_mean_scale`: the factor that turns per-micro-batch ``'sum'`` losses into
  exactly the gradient of the mean over the whole global batch (every data-parallel rank,
  every micro-batch) under DDP/FSDP gradient averaging, reduced on the device.

Communication (tested by counting): forward, one all-gather of the ``(4, M)`` statistics
(``combine="all_gather"``) or a MAX all-reduce of ``M`` values and a SUM all-reduce of
``3 M`` (``combine="all_reduce"``); backward, none for the loss and one reduction of
``d input`` for the linear op.  The collectives are functional collectives
(``torch.distributed._functional_collectives``), so ``torch.compile(fullgraph=True)`` traces
them, and nothing synchronises the host with the device (except the one-off exchange of
shard sizes when neither ``vocab_start`` nor a DTensor says where the shard starts).

Memory per rank: the local logits and their gradient (none with ``inplace_backward``) plus
``O(M)`` statistics; the forward keeps no float32 copy of the shard.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

from .. import _semantics as sem
from . import _contract as contract
from . import _shard
from ._impl import resolve_impl
from ._ops import _new_gradient
from ._params import CrossEntropyParams
from ._rows import check_class_indices, check_targets_and_scale, mean_denominator
from .linear import _accumulate_dtype, _HeadGradients, _logits_chunks, rows_per_chunk

__all__ = [
    "COMBINES",
    "global_mean_scale",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_linear_cross_entropy",
]

#: Ways to exchange the statistics: ``"auto"``, ``"all_gather"``, ``"all_reduce"``, or a
#: callable ``(4, M) local -> (4, M) combined`` (an injected exchange, e.g. in tests).
COMBINES = ("auto", "all_gather", "all_reduce")
#: ``combine="auto"`` gathers the statistics (one collective, ``4 (K-1) M`` values received)
#: up to this many ranks, and beyond it uses MAX + SUM all-reduces (two collectives of a size
#: that does not grow with ``K``).
GATHER_MAX_RANKS = 8

Group = Any  # a ProcessGroup, a 1-D DeviceMesh, or None (the default group)


# --------------------------------------------------------------------------------------------
# Groups and the exchange of statistics
# --------------------------------------------------------------------------------------------


def _dtensor_module():
    try:
        import torch.distributed.tensor as dtensor
    except ImportError:  # pragma: no cover - torch built without distributed
        return None
    return dtensor


def _is_dtensor(t: Any) -> bool:
    dtensor = _dtensor_module()
    return dtensor is not None and isinstance(t, dtensor.DTensor)


def _require_group(group: Group) -> Group:
    if not dist.is_available():
        raise RuntimeError("crossent.torch.distributed needs torch.distributed, which this "
                           "torch build does not have")
    if group is None:
        if not dist.is_initialized():
            raise RuntimeError(
                "crossent.torch.distributed: torch.distributed is not initialized; call "
                "torch.distributed.init_process_group (torchrun does the setup) or pass "
                "group=..., or combine=<a callable> to exchange the statistics yourself"
            )
        return dist.group.WORLD
    dtensor = _dtensor_module()
    if dtensor is not None and isinstance(group, dtensor.DeviceMesh):
        if group.ndim != 1:
            raise ValueError(
                f"group must be a ProcessGroup or a 1-D DeviceMesh, got a {group.ndim}-D "
                "DeviceMesh; pass mesh[<tensor-parallel dim name>]"
            )
        return group
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"group must be a ProcessGroup, a 1-D DeviceMesh or None, got "
                        f"{type(group).__name__}")
    return group


def _group_size_and_rank(group: Group) -> tuple[int, int]:
    dtensor = _dtensor_module()
    if dtensor is not None and isinstance(group, dtensor.DeviceMesh):
        return group.size(), group.get_local_rank()
    return dist.get_world_size(group), dist.get_rank(group)


def _exchange_all_gather(stats: torch.Tensor, group: Group, size: int) -> torch.Tensor:
    """One all-gather of the ``(4, M)`` statistics, merged locally."""
    gathered = funcol.all_gather_single(stats.contiguous(), 0, group)
    return _shard.combine(gathered.view(size, _shard.NUM_STATS, -1))


def _exchange_all_reduce(stats: torch.Tensor, group: Group) -> torch.Tensor:
    """A MAX all-reduce of the maxima, then a SUM all-reduce of the rebased statistics."""
    new_max = funcol.all_reduce(stats[_shard.MAX].contiguous(), "max", group)
    rebased = _shard.rebase(stats, new_max)
    sums = funcol.all_reduce(rebased[_shard.SUM_EXP:].contiguous(), "sum", group)
    return torch.cat([new_max.unsqueeze(0), sums])


@dataclass(frozen=True)
class _Exchange:
    """How this call merges its statistics with the other ranks' (a callable value)."""

    how: str  # "local" (one rank), "all_gather", "all_reduce" or "injected"
    group: Group = None
    size: int = 1
    injected: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __call__(self, stats: torch.Tensor) -> torch.Tensor:
        if stats.shape[-1] == 0 or self.how == "local":  # no rows (every rank agrees): no call
            return stats
        if self.how == "all_gather":
            return _exchange_all_gather(stats, self.group, self.size)
        if self.how == "all_reduce":
            return _exchange_all_reduce(stats, self.group)
        out = self.injected(stats)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(stats.shape):
            raise ValueError(
                f"combine must return the merged statistics of shape {tuple(stats.shape)}, "
                f"got {tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}"
            )
        return out


def _make_exchange(combine: Any, group: Group) -> tuple[_Exchange, int | None, int | None]:
    """The exchange, and this rank's ``(size, rank)`` in its group (None when injected)."""
    if callable(combine):
        if group is not None:
            raise ValueError(f"pass either group=... or a combine callable, not both: got "
                             f"group={group!r} and combine={combine!r}")
        return _Exchange("injected", injected=combine), None, None
    if not isinstance(combine, str) or combine not in COMBINES:
        raise ValueError(f"combine must be one of {', '.join(map(repr, COMBINES))} or a "
                         f"callable, got {combine!r}")
    group = _require_group(group)
    size, rank = _group_size_and_rank(group)
    how = combine
    if how == "auto":  # one rank needs no collective; an explicit choice is kept
        how = ("local" if size == 1 else "all_gather" if size <= GATHER_MAX_RANKS
               else "all_reduce")
    return _Exchange(how, group, size), size, rank


def _shard_layout(local_columns: int, exchange: _Exchange, rank: int | None,
                  device: torch.device) -> tuple[int, int]:
    """``(vocab_start, total columns)`` from every rank's shard size, in rank order: one
    all-gather of one integer, read on the host (the only host synchronisation here)."""
    if exchange.how == "injected":
        raise ValueError("vocab_start must be given with an injected combine (it cannot ask "
                         "the other ranks for their shard sizes)")
    if exchange.how == "local":
        return 0, local_columns
    if torch.compiler.is_compiling():
        raise RuntimeError(
            "crossent.torch.distributed: under torch.compile pass vocab_start and num_classes "
            "(or a DTensor): deriving them exchanges the shard sizes and reads them on the "
            "host"
        )
    sizes = funcol.all_gather_single(
        torch.tensor([local_columns], dtype=torch.int64, device=device), 0, exchange.group)
    sizes = [int(s) for s in sizes.tolist()]
    return sum(sizes[:rank]), sum(sizes)


# --------------------------------------------------------------------------------------------
# Custom ops (opaque to torch.compile): statistics and gradients of this rank's shard
# --------------------------------------------------------------------------------------------


def _checked_statistics(logits, target, weight, reduction, params, col_start, num_classes,
                        impl, target_shape):
    """Range check, the 'mean' denominator and gradient scale, then the statistics."""
    cd = _shard.shard_compute_dtype(logits, target, params, impl)
    w = weight.to(cd) if weight is not None else None
    denominator, scale = check_targets_and_scale(target, params, w, num_classes, reduction, cd,
                                                 tuple(target_shape))
    stats = _shard.shard_statistics(logits, target, params, w, col_start, num_classes,
                                    impl=impl)
    return stats, denominator.to(cd), scale.to(cd)


@torch.library.custom_op("crossent::vocab_parallel_statistics", mutates_args=())
def _statistics_op(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, reduction: str,
    probability: bool, ignore_index: int, label_smoothing: float, z_loss: float,
    softcap: float | None, col_start: int, num_classes: int, impl: str, target_shape: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    params = CrossEntropyParams(probability, ignore_index, label_smoothing, z_loss, softcap)
    return _checked_statistics(logits, target, weight, reduction, params, col_start,
                               num_classes, impl, target_shape)


@_statistics_op.register_fake
def _(logits, target, weight, reduction, probability, ignore_index, label_smoothing, z_loss,
      softcap, col_start, num_classes, impl, target_shape):
    cd = _shard.shard_compute_dtype(logits, target, CrossEntropyParams(probability), impl)
    return (logits.new_empty((_shard.NUM_STATS, logits.shape[0]), dtype=cd),
            logits.new_empty((), dtype=cd), logits.new_empty((), dtype=cd))


@torch.library.custom_op("crossent::vocab_parallel_gradient", mutates_args=())
def _gradient_op(
    logits: torch.Tensor, combined: torch.Tensor, target: torch.Tensor,
    weight: torch.Tensor | None, row_scale: torch.Tensor, probability: bool,
    ignore_index: int, label_smoothing: float, z_loss: float, softcap: float | None,
    col_start: int, num_classes: int, impl: str,
) -> torch.Tensor:
    params = CrossEntropyParams(probability, ignore_index, label_smoothing, z_loss, softcap)
    grad = _new_gradient(logits, impl)
    w = weight.to(combined.dtype) if weight is not None else None
    return _shard.shard_gradient(logits, combined, target, params, w, col_start, num_classes,
                                 row_scale, grad, impl=impl)


@_gradient_op.register_fake
def _(logits, combined, target, weight, row_scale, probability, ignore_index, label_smoothing,
      z_loss, softcap, col_start, num_classes, impl):
    return torch.empty_like(logits)


@torch.library.custom_op("crossent::vocab_parallel_gradient_", mutates_args=("logits",))
def _gradient_inplace_op(
    logits: torch.Tensor, combined: torch.Tensor, target: torch.Tensor,
    weight: torch.Tensor | None, row_scale: torch.Tensor, probability: bool,
    ignore_index: int, label_smoothing: float, z_loss: float, softcap: float | None,
    col_start: int, num_classes: int, impl: str,
) -> None:
    params = CrossEntropyParams(probability, ignore_index, label_smoothing, z_loss, softcap)
    w = weight.to(combined.dtype) if weight is not None else None
    _shard.shard_gradient(logits, combined, target, params, w, col_start, num_classes,
                          row_scale, logits, impl=impl)


@_gradient_inplace_op.register_fake
def _(logits, combined, target, weight, row_scale, probability, ignore_index, label_smoothing,
      z_loss, softcap, col_start, num_classes, impl):
    return None


# --------------------------------------------------------------------------------------------
# The loss: autograd
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Setup:
    """Everything a call decided besides the tensors (one frozen value through autograd)."""

    params: CrossEntropyParams
    reduction: str
    col_start: int
    num_classes: int
    impl: str
    exchange: _Exchange
    inplace: bool
    loss_dtype: torch.dtype
    target_shape: tuple[int, ...]

    def op_args(self) -> tuple:
        return (*self.params.op_args(), self.col_start, self.num_classes, self.impl)


def _forward_loss(logits, target, weight, setup: _Setup):
    p = setup.params
    stats, denominator, scale = _statistics_op(
        logits, target, weight, setup.reduction, *setup.op_args(), list(setup.target_shape))
    combined = setup.exchange(stats)
    per_row = _shard.finish_loss(combined, target, p, weight)
    loss = sem.reduce_loss(per_row, setup.reduction, denominator).to(setup.loss_dtype)
    return loss, combined, scale


def _row_scale(scale: torch.Tensor, grad_loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """``d loss / d loss_n`` with the upstream gradient folded in (0-d, or one per row)."""
    upstream = grad_loss.to(scale.dtype)
    return scale * (upstream.reshape(-1) if reduction == "none" else upstream)


def _reverse_mode_only(op: str):
    """A backward that refuses what the contract refuses (a vmapped backward, a graph of
    the gradient: ``create_graph=True``) and builds no graph itself (under
    ``torch.func.grad`` backward runs with grad enabled; its custom ops have no autograd)."""

    def decorate(backward):
        @functools.wraps(backward)
        def wrapper(ctx, *grads):
            contract.refuse_vmapped_backward(op)
            contract.refuse_double_backward(op)
            with torch.no_grad():
                return backward(ctx, *grads)

        return wrapper

    return decorate


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Forward: statistics, exchange, loss.  Backward: this shard's gradient from the saved
    logits and merged statistics, in one pass, with no collective."""

    @staticmethod
    def forward(logits, target, weight, setup):
        return _forward_loss(logits, target, weight, setup)

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, target, weight, setup = inputs
        _, combined, scale = output
        ctx.mark_non_differentiable(combined, scale)
        ctx.save_for_backward(logits, target, weight, combined, scale)
        ctx.setup = setup
        ctx.consumed = False

    @staticmethod
    @_reverse_mode_only("distributed.vocab_parallel_cross_entropy")
    def backward(ctx, grad_loss, _grad_combined, _grad_scale):
        setup = ctx.setup
        if setup.inplace:
            if ctx.consumed:
                raise RuntimeError(
                    "crossent.torch.distributed.vocab_parallel_cross_entropy(..., "
                    "inplace_backward=True) wrote its gradient over the logits in the first "
                    "backward; a second backward through the same graph needs "
                    "inplace_backward=False"
                )
            ctx.consumed = True
        logits, target, weight, combined, scale = ctx.saved_tensors
        row_scale = _row_scale(scale, grad_loss, setup.reduction)
        args = (combined, target, weight, row_scale, *setup.op_args())
        if setup.inplace:
            _gradient_inplace_op(logits, *args)
            grad = logits
        else:
            grad = _gradient_op(logits, *args)
        return grad, None, None, None


# --------------------------------------------------------------------------------------------
# Argument checks shared by both ops
# --------------------------------------------------------------------------------------------


def _check_options(reduction, ignore_index, label_smoothing, z_loss, softcap, probability
                   ) -> tuple[str, CrossEntropyParams]:
    """``(reduction, params)``, each option checked by its rule in :mod:`crossent._semantics`."""
    reduction = sem.check_reduction(reduction)
    ignore_index = sem.check_ignore_index(ignore_index)
    if probability:
        sem.check_probability_ignore_index(ignore_index)
    return reduction, CrossEntropyParams(
        probability, ignore_index, sem.check_label_smoothing(label_smoothing),
        sem.check_z_loss(z_loss), sem.check_softcap(softcap))


def _check_layout_args(vocab_start, num_classes):
    for name, value, low in (("vocab_start", vocab_start, 0), ("num_classes", num_classes, 1)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low} or None, got {value!r}")


def _full_weight(weight):
    """The class weights as a plain tensor (a DTensor's full value), or None."""
    if weight is None:
        return None
    weight = contract.check_tensor(weight, "weight")
    return weight.full_tensor() if _is_dtensor(weight) else weight


def _check_weight(weight, input_name, device, input_dtype, probability, autocast):
    """The class weights by crossent.torch's rules (their length is checked with the layout,
    :func:`_resolve_layout`); they are not differentiated here."""
    weight = _full_weight(weight)
    if weight is None:
        return None
    if not weight.is_floating_point():
        raise sem.ArgumentTypeError(
            f"weight must be a floating-point tensor, got dtype {contract.dtype_name(weight)}")
    if weight.device != device:
        raise sem.ArgumentError(f"weight must be on the device of {input_name} ({device}), "
                                f"got {weight.device}")
    contract.check_class_weight_dtype(weight, input_dtype, probability, autocast)
    if weight.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(
            "crossent.torch.distributed does not differentiate with respect to weight (the "
            "class weights); pass weight.detach()")
    return weight


def _resolve_layout(local_columns, vocab_start, num_classes, weight, exchange, rank, device):
    """``(vocab_start, num_classes)``: given, from the weight, or from the shard sizes."""
    if num_classes is None and weight is not None and weight.ndim == 1:
        num_classes = weight.shape[0]
    if weight is not None and num_classes is not None:  # before any collective
        sem.check_class_weight(tuple(weight.shape), num_classes)
    if vocab_start is None:
        vocab_start, total = _shard_layout(local_columns, exchange, rank, device)
        if num_classes is None:
            num_classes = total
        elif num_classes > total:
            raise sem.ArgumentError(
                f"num_classes={num_classes} is more than the {total} columns the ranks hold "
                "together")
    elif num_classes is None:
        raise ValueError(
            "num_classes must be given with vocab_start (or pass weight, whose length it is, "
            "or neither, to derive both from the shard sizes)")
    if weight is not None:
        sem.check_class_weight(tuple(weight.shape), num_classes)
    return vocab_start, num_classes


def _check_target(target, logits_shape, probability, logits_of):
    """The target's dtype (crossent.torch's rule) and shape for this rank's logits
    ``logits_shape`` (``logits_of`` names what they are made of, for the messages)."""
    contract.check_target_dtype(target, probability, logits_shape[:-1], logits_shape)
    if probability:
        if target.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(
                "crossent.torch.distributed does not differentiate with respect to "
                "probability targets; pass target.detach()")
    elif tuple(target.shape) != tuple(logits_shape[:-1]):
        raise sem.ArgumentError(
            f"target must have shape {tuple(logits_shape[:-1])} (global class indices) or "
            f"{tuple(logits_shape)} (this rank's slice of probabilities) for {logits_of}, "
            f"got {tuple(target.shape)}")


def _resolve_shard_impl(impl: str, like: torch.Tensor, columns: int) -> str:
    """The executor (crossent.torch's rule); a rank holding no class (a shard of 0 columns
    when there are more ranks than classes) runs the portable one, which takes 0 columns."""
    resolved = resolve_impl(impl, like.device, like.dtype)
    if columns == 0 and resolved == "triton" and impl == "auto":
        return "torch"
    return resolved


def _prepare(target, weight, probability, autocast, options, *, logits_shape, logits_of,
             input_name, like, exchange, rank, vocab_start, num_classes, impl, inplace):
    """What both ops decide alike, once each has checked its own tensors: the options, the
    target, the class weights, the executor and the shard's place in the vocabulary.

    ``logits_shape`` is the shape of this rank's logits ``(..., V_local)`` (for the linear
    op, those of the gathered input rows), ``logits_of`` says what they are made of and
    ``input_name`` names the op's first argument in messages; ``like`` is the tensor whose
    device and dtype the shard is computed in, ``autocast`` the loss's autocast dtype
    (:mod:`crossent.torch._contract`), ``options`` the tuple ``(reduction, ignore_index,
    label_smoothing, z_loss, softcap)`` as passed.  Returns ``(setup, rows_target,
    weight)``: the frozen decisions, the target as ``(M,)`` int64 class indices or
    ``(M, V_local)`` probabilities, and the weights in the dtype they are computed in.
    """
    reduction, params = _check_options(*options, probability)
    _check_layout_args(vocab_start, num_classes)
    _check_target(target, logits_shape, probability, logits_of)
    device = like.device
    if target.device != device:
        raise sem.ArgumentError(f"target must be on the device of {input_name} ({device}), "
                                f"got {target.device}")
    weight = _check_weight(weight, input_name, device, like.dtype, probability, autocast)
    local_columns = logits_shape[-1]
    impl = _resolve_shard_impl(impl, like, local_columns)
    vocab_start, num_classes = _resolve_layout(local_columns, vocab_start, num_classes, weight,
                                               exchange, rank, device)
    rows = math.prod(logits_shape[:-1])
    if probability:  # a class weight of higher precision promotes them, as in PyTorch
        rows_target = target.reshape(rows, local_columns).to(
            contract.probability_target_dtype(target, weight))
        if local_columns > 1 and rows_target.stride(-1) != 1:
            rows_target = rows_target.contiguous()
    else:  # int64, what gather and the kernels index with, whatever the integer dtype
        rows_target = contract.index_target_as_int64(target.reshape(rows), num_classes,
                                                     params.ignore_index, tuple(target.shape))
    setup = _Setup(
        params=params, reduction=reduction, col_start=vocab_start, num_classes=num_classes,
        impl=impl, exchange=exchange, inplace=inplace,
        loss_dtype=contract.loss_dtype(like.dtype, target, weight, probability, autocast),
        target_shape=tuple(logits_shape[:-1]) or (1,))
    if autocast is not None and weight is not None:
        weight = weight.to(autocast)
    return setup, rows_target, weight


# --------------------------------------------------------------------------------------------
# Public: the loss
# --------------------------------------------------------------------------------------------


def vocab_parallel_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    group: Group = None,
    vocab_start: int | None = None,
    num_classes: int | None = None,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    inplace_backward: bool = False,
    impl: str = "auto",
    combine: str | Callable[[torch.Tensor], torch.Tensor] = "auto",
) -> torch.Tensor:
    r"""Cross-entropy of logits whose class dimension is sharded over the ranks of ``group``.

    .. math:: \ell_n = A_n \operatorname{lse}(z_n) - a_n^\top z_n
        + \text{z\_loss}\; w_n \operatorname{lse}(z_n)^2,
        \qquad \operatorname{lse}(z_n) = \log \sum_{k} \sum_{c \in \text{shard}_k} e^{z_{nc}}

    On every rank the loss equals ``crossent.torch.cross_entropy`` (and ``F.cross_entropy``)
    of the logits gathered along the last dimension, ``target`` and the other options; the
    gradient of ``logits`` is this shard's slice of that loss's gradient.

    Args:
        logits: this rank's shard ``(..., V_local)``, classes last (as a language model's head
            gives them); shards may be uneven and as small as one column.  A ``DTensor``
            sharded on its last dimension over a 1-D mesh, or over one dimension of a
            data x tensor mesh, brings its own group and offset (see the docs).
        target: identical on every rank: global class indices ``(...)`` (any integer dtype),
            or this rank's ``(..., V_local)`` slice of class probabilities.
        group: the tensor-parallel group (a ``ProcessGroup`` or a 1-D ``DeviceMesh``);
            None: the default group.
        vocab_start: global index of this rank's first class.  None: derived from every
            rank's shard size in rank order (one small all-gather, read on the host; pass it
            to avoid that).  Given, it needs ``num_classes`` (or ``weight``).
        num_classes: the real vocabulary size ``C``; columns at or past it (padding of the
            last shards) take no part in the softmax, get a zero gradient and do not count in
            label smoothing's ``eps / C``.  None: ``len(weight)``, or every column.
        weight: the full ``(C,)`` class weights, as ``F.cross_entropy`` takes them (the
            same on every rank): the logits' dtype for class indices, any floating dtype for
            probabilities (it promotes the loss's); not differentiated (a weight that
            requires grad is refused: pass ``weight.detach()``).
        ignore_index: as in ``F.cross_entropy``: a class index whose rows add nothing.
        reduction: ``'none'``, ``'sum'`` or ``'mean'`` (``F.cross_entropy``'s denominator:
            the total class weight of the non-ignored rows).
        label_smoothing: as in ``F.cross_entropy``; ``eps / C`` counts the real classes of
            every rank (``num_classes``), never the local shard's.
        z_loss: as in :func:`crossent.torch.cross_entropy`, with the global log-sum-exp.
        softcap: as in :func:`crossent.torch.cross_entropy`.
        inplace_backward: as in :func:`crossent.torch.cross_entropy`: backward writes the
            gradient over ``logits``.
        impl: as in :func:`crossent.torch.cross_entropy`: the executor of this rank's shard.
        combine: how the statistics are exchanged: ``"auto"`` (``"all_gather"`` up to 8
            ranks, else ``"all_reduce"``), ``"all_gather"`` (one collective),
            ``"all_reduce"`` (MAX then SUM), or a callable taking this rank's ``(4, M)``
            statistics (per row: the shard's max, its sum of exponentials, target dot and
            coefficient sum) and returning them merged over every rank, for an exchange of
            your own or in-process tests; then ``group`` must be None and ``vocab_start``
            given (the linear op also needs its ``all_reduce(tensor)`` method, the sum over
            the ranks, for ``d input``).

    Returns:
        The loss (0-d, or the target's batch shape ``(...)`` for ``reduction='none'``), the
            same on every rank; float32 under autocast, as ``F.cross_entropy``.

    Over a real group every rank calls it with its own shard (see the distributed page of
    the docs).  In one process, a group of one rank needs no exchange: the injected combine
    is the identity, and the result is ``F.cross_entropy`` of the real classes (here one
    padding column, which takes no part and gets a zero gradient):

    >>> import torch
    >>> import torch.nn.functional as F
    >>> x = torch.tensor([[2.0, 4.0, 0.5, 30.0], [1.0, 1.0, 1.0, 30.0]], requires_grad=True)
    >>> y = torch.tensor([0, 2])
    >>> loss = vocab_parallel_cross_entropy(x, y, vocab_start=0, num_classes=3,
    ...                                     label_smoothing=0.1, combine=lambda stats: stats)
    >>> round(loss.item(), 6), round(F.cross_entropy(x[:, :3], y, label_smoothing=0.1).item(), 6)
    (1.617562, 1.617562)
    >>> loss.backward(); x.grad[:, 3]
    tensor([0., 0.])
    """
    if _is_dtensor(logits):
        return _dtensor_cross_entropy(
            logits, target, group=group, vocab_start=vocab_start, num_classes=num_classes,
            weight=weight, ignore_index=ignore_index, reduction=reduction,
            label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
            inplace_backward=inplace_backward, impl=impl, combine=combine)
    logits = contract.check_tensor(logits, "logits")
    target = contract.check_tensor(target, "target")
    contract.refuse_transforms("distributed.vocab_parallel_cross_entropy", logits)
    contract.check_float_dtype(logits, "logits")
    if logits.ndim == 0:
        raise sem.ArgumentError("logits must have shape (..., V_local), got a 0-d tensor")
    if not isinstance(inplace_backward, bool):
        raise TypeError(f"inplace_backward must be a bool, got {inplace_backward!r}")
    probability = sem.is_probability_target(tuple(logits.shape), tuple(target.shape))
    autocast = contract.autocast_dtype(
        logits.device, logits.dtype, *((target.dtype,) if probability else ()))
    exchange, _, rank = _make_exchange(combine, group)
    setup, rows_target, weight = _prepare(
        target, weight, probability, autocast,
        (reduction, ignore_index, label_smoothing, z_loss, softcap),
        logits_shape=tuple(logits.shape), logits_of=f"logits of shape {tuple(logits.shape)}",
        input_name="logits", like=logits, exchange=exchange, rank=rank,
        vocab_start=vocab_start, num_classes=num_classes, impl=impl, inplace=inplace_backward)
    if inplace_backward and logits.requires_grad and torch.is_grad_enabled():
        contract.check_consumable(logits, "distributed.vocab_parallel_cross_entropy")

    local_columns = logits.shape[-1]
    rows = logits.reshape(math.prod(logits.shape[:-1]), local_columns)
    if local_columns > 1 and rows.stride(-1) != 1:
        rows = rows.contiguous()
    with torch.autocast(logits.device.type, enabled=False):
        if torch.is_grad_enabled() and logits.requires_grad:
            loss, _, _ = _VocabParallelCrossEntropy.apply(rows, rows_target, weight, setup)
        else:
            loss, _, _ = _forward_loss(rows, rows_target, weight, setup)
    if setup.reduction == "none":
        loss = loss.reshape(logits.shape[:-1])
    return loss


# --------------------------------------------------------------------------------------------
# Linear + cross-entropy over a sharded head
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LinearSetup:
    base: _Setup
    chunk: int
    sequence_parallel: bool


def _linear_statistics(h, w, b, target, weight, reduction, params, col_start, num_classes,
                       chunk, impl, target_shape):
    rows = h.shape[0]
    cd = _shard.shard_compute_dtype(h, target, params, impl)
    wcls = weight.to(cd) if weight is not None else None
    denominator, scale = check_targets_and_scale(target, params, wcls, num_classes, reduction,
                                                 cd, tuple(target_shape))
    stats = torch.empty((_shard.NUM_STATS, rows), dtype=cd, device=h.device)
    for s, e, logits in _logits_chunks(h, w, b, chunk):
        stats[:, s:e] = _shard.shard_statistics(logits, target[s:e], params, wcls, col_start,
                                                num_classes, impl=impl)
    return stats, denominator.to(cd), scale.to(cd)


@torch.library.custom_op("crossent::vocab_parallel_linear_statistics", mutates_args=())
def _linear_statistics_op(
    h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, target: torch.Tensor,
    weight: torch.Tensor | None, reduction: str, probability: bool, ignore_index: int,
    label_smoothing: float, z_loss: float, softcap: float | None, col_start: int,
    num_classes: int, impl: str, chunk: int, target_shape: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    params = CrossEntropyParams(probability, ignore_index, label_smoothing, z_loss, softcap)
    with torch.no_grad():
        return _linear_statistics(h, w, b, target, weight, reduction, params, col_start,
                                  num_classes, chunk, impl, target_shape)


@_linear_statistics_op.register_fake
def _(h, w, b, target, weight, reduction, probability, ignore_index, label_smoothing, z_loss,
      softcap, col_start, num_classes, impl, chunk, target_shape):
    cd = _shard.shard_compute_dtype(h, target, CrossEntropyParams(probability), impl)
    return (h.new_empty((_shard.NUM_STATS, h.shape[0]), dtype=cd), h.new_empty((), dtype=cd),
            h.new_empty((), dtype=cd))


@torch.library.custom_op("crossent::vocab_parallel_linear_gradient", mutates_args=())
def _linear_gradient_op(
    h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, target: torch.Tensor,
    weight: torch.Tensor | None, combined: torch.Tensor, row_scale: torch.Tensor,
    probability: bool, ignore_index: int, label_smoothing: float, z_loss: float,
    softcap: float | None, col_start: int, num_classes: int, impl: str, chunk: int,
    need_dh: bool, need_dw: bool, need_db: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``d input`` (this shard's part, before the reduction across ranks; float32 for half
    inputs), ``d linear_weight`` and ``d linear_bias`` (float32 for half weights)."""
    params = CrossEntropyParams(probability, ignore_index, label_smoothing, z_loss, softcap)
    wcls = weight.to(combined.dtype) if weight is not None else None
    # d input stays float32 for half inputs until it is summed over the ranks
    grads = _HeadGradients(h, w, chunk, need_dh, need_dw, need_db,
                           dh_dtype=_accumulate_dtype(h.dtype))
    with torch.no_grad():
        for s, e, g in _logits_chunks(h, w, b, chunk):
            scale = row_scale[s:e] if row_scale.ndim else row_scale
            _shard.shard_gradient(g, combined[:, s:e], target[s:e], params, wcls, col_start,
                                  num_classes, scale, g, impl=impl)
            grads.add(s, e, g)
    return grads.dh, grads.dw, grads.db


@_linear_gradient_op.register_fake
def _(h, w, b, target, weight, combined, row_scale, probability, ignore_index, label_smoothing,
      z_loss, softcap, col_start, num_classes, impl, chunk, need_dh, need_dw, need_db):
    acc = _accumulate_dtype(w.dtype)
    return (h.new_empty(h.shape, dtype=_accumulate_dtype(h.dtype)) if need_dh
            else h.new_empty((0,)),
            w.new_empty(w.shape, dtype=acc) if need_dw else w.new_empty((0,)),
            w.new_empty((w.shape[0],), dtype=acc) if need_db else w.new_empty((0,)))


def _gather_rows(h: torch.Tensor, exchange: _Exchange) -> torch.Tensor:
    """Sequence parallelism: the input's pieces along dim 0, concatenated in rank order."""
    if exchange.how in ("local", "injected"):
        return h
    return funcol.all_gather_single(h.contiguous(), 0, exchange.group)


def _reduce_input_grad(dh: torch.Tensor, exchange: _Exchange, sequence_parallel: bool):
    """Sum the ranks' partial ``d input``: all-reduce, or reduce-scatter along dim 0."""
    if exchange.how == "local":
        return dh
    if exchange.how == "injected":
        return exchange.injected.all_reduce(dh)
    if sequence_parallel:
        return funcol.reduce_scatter_single(dh.contiguous(), "sum", 0, exchange.group)
    return funcol.all_reduce(dh.contiguous(), "sum", exchange.group)


class _VocabParallelLinearCrossEntropy(torch.autograd.Function):
    """Forward: chunked logits -> statistics, one exchange, the loss.  Backward: chunks
    recomputed, the shard's gradient, then ``d input`` reduced across the ranks."""

    @staticmethod
    def forward(h, w, b, target, weight, lsetup):
        setup = lsetup.base
        p = setup.params
        h_full = _gather_rows(h, setup.exchange) if lsetup.sequence_parallel else h
        h_rows = h_full.reshape(-1, h.shape[-1])
        stats, denominator, scale = _linear_statistics_op(
            h_rows, w, b, target, weight, setup.reduction, *setup.op_args(), lsetup.chunk,
            list(setup.target_shape))
        combined = setup.exchange(stats)
        per_row = _shard.finish_loss(combined, target, p, weight)
        loss = sem.reduce_loss(per_row, setup.reduction, denominator).to(setup.loss_dtype)
        kept = h_rows if lsetup.sequence_parallel else h_rows.new_empty((0,))
        return loss, combined, scale, kept

    @staticmethod
    def setup_context(ctx, inputs, output):
        h, w, b, target, weight, lsetup = inputs
        _, combined, scale, kept = output
        ctx.mark_non_differentiable(combined, scale, kept)
        ctx.save_for_backward(h, w, b, target, weight, combined, scale, kept)
        ctx.lsetup = lsetup

    @staticmethod
    @_reverse_mode_only("distributed.vocab_parallel_linear_cross_entropy")
    def backward(ctx, grad_loss, _gc, _gs, _gk):
        lsetup = ctx.lsetup
        setup = lsetup.base
        h, w, b, target, weight, combined, scale, kept = ctx.saved_tensors
        h_rows = kept if lsetup.sequence_parallel else h.reshape(-1, h.shape[-1])
        need_dh, need_dw, need_db = ctx.needs_input_grad[:3]
        row_scale = _row_scale(scale, grad_loss, setup.reduction)
        dh, dw, db = _linear_gradient_op(
            h_rows, w, b, target, weight, combined, row_scale, *setup.op_args(), lsetup.chunk,
            need_dh, need_dw, bool(need_db and b is not None))
        grad_h = grad_w = grad_b = None
        if need_dh:
            gathered_shape = (-1, *h.shape[1:])
            dh = _reduce_input_grad(dh.reshape(gathered_shape), setup.exchange,
                                    lsetup.sequence_parallel)
            grad_h = dh.reshape(h.shape).to(h.dtype)
        if need_dw:
            grad_w = dw.to(w.dtype)
        if need_db and b is not None:
            grad_b = db.to(b.dtype)
        return grad_h, grad_w, grad_b, None, None, None


def vocab_parallel_linear_cross_entropy(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    group: Group = None,
    linear_bias: torch.Tensor | None = None,
    vocab_start: int | None = None,
    num_classes: int | None = None,
    sequence_parallel: bool = False,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_size: int | None = None,
    impl: str = "auto",
    combine: str | Callable[[torch.Tensor], torch.Tensor] = "auto",
) -> torch.Tensor:
    r"""Cross-entropy of ``input @ W.T + b`` where the head's rows (classes) are sharded.

    .. math:: \ell = \operatorname{CE}\big([h W_1^\top + b_1, \dots, h W_K^\top + b_K],\; y\big)

    Same loss on every rank, and the same gradients, as
    ``crossent.torch.linear_cross_entropy`` of the gathered head (hence ``F.cross_entropy``
    of ``F.linear``), without ever holding more than a ``(chunk, V_local)`` block of logits.

    Args:
        input: hidden states ``(..., D)``, the same on every rank; with
            ``sequence_parallel=True``, this rank's piece along dim 0 (equal pieces), which
            is gathered in forward; ``d input`` then leaves through a reduce-scatter.
            ``d input`` is the full gradient (summed over the ranks): do not sum it again.
        linear_weight: this rank's ``(V_local, D)`` rows of the head (a DTensor sharded on
            dim 0 brings its group and offset).
        target: class indices ``(...)`` of the (gathered) input's rows, identical on every
            rank, or this rank's ``(..., V_local)`` slice of probabilities.
        linear_bias: this rank's ``(V_local,)`` slice of the bias.
        group: the tensor-parallel group, as in :func:`vocab_parallel_cross_entropy`.
        vocab_start: global index of this rank's first class, as in
            :func:`vocab_parallel_cross_entropy`.
        num_classes: the real vocabulary size, as in :func:`vocab_parallel_cross_entropy`.
        sequence_parallel: ``input`` is this rank's piece along dim 0 (see ``input``).
        weight: the full ``(C,)`` class weights, as in :func:`vocab_parallel_cross_entropy`
            (the input's dtype for class indices).
        ignore_index: as in ``F.cross_entropy``.
        reduction: as in ``F.cross_entropy``.
        label_smoothing: as in ``F.cross_entropy`` (over the real classes of every rank).
        z_loss: as in :func:`crossent.torch.cross_entropy`.
        softcap: as in :func:`crossent.torch.cross_entropy`.
        chunk_size: rows per chunk; None chooses it as ``crossent.torch.linear_cross_entropy``
            does, from ``V_local``.
        impl: the executor of each chunk, as in :func:`crossent.torch.cross_entropy`.
        combine: as in :func:`vocab_parallel_cross_entropy`; an injected one needs an
            ``all_reduce(tensor)`` method (the sum over the ranks) for ``d input``.

    Returns:
        The loss (0-d, or the input's leading shape ``(...)`` for ``reduction='none'``), the
            same on every rank.

    In one process, a group of one rank exchanges nothing (both methods of the injected
    combine are the identity), and the result is ``F.cross_entropy(F.linear(h, W), y)``:

    >>> import torch
    >>> import torch.nn.functional as F
    >>> class OneRank:
    ...     def __call__(self, stats):      # merge the statistics over the ranks
    ...         return stats
    ...     def all_reduce(self, tensor):   # sum d input over the ranks
    ...         return tensor
    >>> h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])   # (N, D)
    >>> W = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.5, 0.5]])   # (V_local, D)
    >>> y = torch.tensor([0, 1, 2])
    >>> loss = vocab_parallel_linear_cross_entropy(h, W, y, vocab_start=0, num_classes=3,
    ...                                            combine=OneRank())
    >>> round(loss.item(), 6), round(F.cross_entropy(h @ W.T, y).item(), 6)
    (0.846023, 0.846023)
    """
    if _is_dtensor(linear_weight) or _is_dtensor(input):
        return _dtensor_linear_cross_entropy(
            input, linear_weight, target, group=group, linear_bias=linear_bias,
            vocab_start=vocab_start, num_classes=num_classes,
            sequence_parallel=sequence_parallel, weight=weight, ignore_index=ignore_index,
            reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss,
            softcap=softcap, chunk_size=chunk_size, impl=impl, combine=combine)
    input = contract.check_tensor(input, "input")
    linear_weight = contract.check_tensor(linear_weight, "linear_weight")
    target = contract.check_tensor(target, "target")
    if linear_bias is not None:
        linear_bias = contract.check_tensor(linear_bias, "linear_bias")
    contract.refuse_transforms("distributed.vocab_parallel_linear_cross_entropy", input,
                               linear_weight, linear_bias)
    contract.check_float_dtype(input, "input", "hidden states")
    contract.check_float_dtype(linear_weight, "linear_weight", "weights")
    if input.ndim < 1:
        raise sem.ArgumentError("input must have shape (..., D), got a 0-d tensor")
    if linear_weight.ndim != 2:
        raise sem.ArgumentError(
            f"linear_weight must have shape (V_local, D), got {tuple(linear_weight.shape)}")
    local_columns, features = linear_weight.shape
    if input.shape[-1] != features:
        raise sem.ArgumentError(
            f"input's last dimension must equal linear_weight's D={features}, got input of "
            f"shape {tuple(input.shape)} and linear_weight of shape "
            f"{tuple(linear_weight.shape)}")
    autocast = contract.linear_autocast_dtype(input, linear_weight, linear_bias)
    if linear_bias is not None and tuple(linear_bias.shape) != (local_columns,):
        raise sem.ArgumentError(f"linear_bias must have shape ({local_columns},), got "
                                f"{tuple(linear_bias.shape)}")
    for name, t in (("linear_weight", linear_weight), ("linear_bias", linear_bias)):
        if t is not None and t.device != input.device:
            raise sem.ArgumentError(
                f"{name} must be on the device of input ({input.device}), got {t.device}")
    if not isinstance(sequence_parallel, bool):
        raise TypeError(f"sequence_parallel must be a bool, got {sequence_parallel!r}")
    exchange, size, rank = _make_exchange(combine, group)
    if exchange.how == "injected":
        if sequence_parallel:
            raise ValueError("sequence_parallel=True gathers the input over a process group; "
                             "it cannot run with an injected combine")
        if input.requires_grad and not callable(getattr(combine, "all_reduce", None)):
            raise ValueError(
                "an injected combine for vocab_parallel_linear_cross_entropy must also have "
                "an all_reduce(tensor) method (the sum over the ranks) for d input")
    if sequence_parallel and input.ndim < 2:
        raise sem.ArgumentError("sequence_parallel=True needs an input of shape (S, ..., D) "
                                "split along dim 0")
    gathered = ((input.shape[0] * (size or 1), *input.shape[1:]) if sequence_parallel
                else tuple(input.shape))
    logits_shape = (*gathered[:-1], local_columns)
    probability = sem.is_probability_target(logits_shape, tuple(target.shape))
    setup, rows_target, weight = _prepare(
        target, weight, probability, autocast,
        (reduction, ignore_index, label_smoothing, z_loss, softcap),
        logits_shape=logits_shape,
        logits_of=(f"input of shape {tuple(input.shape)}"
                   f"{' (gathered: ' + str(gathered) + ')' if sequence_parallel else ''} and "
                   f"linear_weight of shape {tuple(linear_weight.shape)}"),
        input_name="input", like=input, exchange=exchange, rank=rank,
        vocab_start=vocab_start, num_classes=num_classes, impl=impl, inplace=False)
    chunk = rows_per_chunk(rows_target.shape[0], local_columns, chunk_size)
    input, linear_weight, linear_bias, weight = contract.autocast_linear_inputs(
        autocast, input, linear_weight, linear_bias, weight)
    w = linear_weight if linear_weight.stride(-1) == 1 else linear_weight.contiguous()
    lsetup = _LinearSetup(setup, chunk, sequence_parallel)
    with torch.autocast(input.device.type, enabled=False):
        loss, *_ = _VocabParallelLinearCrossEntropy.apply(input, w, linear_bias, rows_target,
                                                          weight, lsetup)
    if setup.reduction == "none":
        loss = loss.reshape(gathered[:-1])
    return loss


# --------------------------------------------------------------------------------------------
# DTensor inputs
# --------------------------------------------------------------------------------------------


def _class_mesh_dim(placements, dim: int, what: str) -> int:
    """The one mesh dimension that shards tensor dimension ``dim``; the others must be
    Replicate or shard another dimension."""
    shard_dims = [i for i, p in enumerate(placements) if p.is_shard(dim)]
    if len(shard_dims) != 1:
        raise ValueError(
            f"{what} must be sharded on dimension {dim} over exactly one mesh dimension, got "
            f"placements {tuple(placements)}")
    for i, p in enumerate(placements):
        if i != shard_dims[0] and not (p.is_replicate() or p.is_shard()):
            raise ValueError(
                f"{what}'s other mesh dimensions must be Replicate or Shard, got placements "
                f"{tuple(placements)}")
    return shard_dims[0]


def _local_rows(t, mesh, placements, name):
    """A DTensor's local tensor (placements checked against the loss's), or a plain tensor."""
    if t is None or not _is_dtensor(t):
        return t
    if t.device_mesh != mesh:
        raise ValueError(f"{name} must be on the logits' device mesh {mesh}, got "
                         f"{t.device_mesh}")
    if tuple(t.placements) != tuple(placements):
        raise ValueError(f"{name} must have placements {tuple(placements)}, got "
                         f"{tuple(t.placements)}")
    return t.to_local()


def _dtensor_output(loss, reduction, mesh, tp_dim, placements, global_shape, batch_dims):
    """Wrap this rank's loss as a DTensor whose global value is the loss of the global tensor:
    'none' is sharded like the target, 'sum'/'mean' are Partial over batch-sharded dims."""
    dtensor = _dtensor_module()
    if reduction == "none":
        out_placements = [dtensor.Replicate() if i == tp_dim else p
                          for i, p in enumerate(placements)]
        return dtensor.DTensor.from_local(loss, mesh, out_placements, shape=global_shape,
                                          stride=torch.empty(global_shape, device="meta")
                                          .stride())
    out_placements = [dtensor.Partial() if i in batch_dims else dtensor.Replicate()
                      for i in range(mesh.ndim)]
    return dtensor.DTensor.from_local(loss, mesh, out_placements)


def _denominator_rows(target: torch.Tensor, probability: bool) -> torch.Tensor:
    """A target as :func:`crossent.torch._rows.mean_denominator` reads it: class indices
    flat, probabilities ``(..., V)`` as ``(rows, V)`` (a ``(V,)`` or 0-d one is one row)."""
    if not probability:
        return target.reshape(-1).to(torch.int64)
    return target.reshape(1, target.numel()) if target.ndim < 2 else target.flatten(0, -2)


def _global_denominator(target, ignore_index, weight, probability, mesh, batch_dims, dtype):
    """The 'mean' denominator of the whole global batch: the local one summed over the mesh
    dimensions that shard the rows (one all-reduce per such dimension, on the device)."""
    local = mean_denominator(_denominator_rows(target, probability),
                             CrossEntropyParams(probability, ignore_index), weight, dtype)
    for d in batch_dims:
        local = funcol.all_reduce(local, "sum", (mesh, d))
    return local


def _dtensor_cross_entropy(logits, target, *, group, vocab_start, num_classes, weight,
                           reduction, **kw):
    if group is not None or vocab_start is not None:
        raise ValueError("a DTensor brings its own group and vocab_start: pass neither")
    dtensor = _dtensor_module()
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    mesh, placements = logits.device_mesh, tuple(logits.placements)
    class_dim = logits.ndim - 1
    tp_dim = _class_mesh_dim(placements, class_dim, "logits")
    _, offset = compute_local_shape_and_global_offset(logits.shape, mesh, placements)
    batch_dims = [i for i, p in enumerate(placements) if i != tp_dim and p.is_shard()]
    probability = target.ndim == logits.ndim
    if probability:
        local_target = _local_rows(target, mesh, placements, "target")
    else:
        target_placements = tuple(dtensor.Replicate() if i == tp_dim else p
                                  for i, p in enumerate(placements))
        local_target = _local_rows(target, mesh, target_placements, "target")
    local = logits.to_local()
    weight = _full_weight(weight)
    total = logits.shape[-1]
    if num_classes is None:
        num_classes = weight.shape[0] if weight is not None and weight.ndim == 1 else total
    mean_over_batch = reduction == "mean" and batch_dims
    loss = vocab_parallel_cross_entropy(
        local, local_target, group=mesh.get_group(tp_dim), vocab_start=offset[class_dim],
        num_classes=num_classes, weight=weight,
        reduction="sum" if mean_over_batch else reduction, **kw)
    if mean_over_batch:
        loss = loss / _global_denominator(local_target, kw.get("ignore_index", -100), weight,
                                          probability, mesh, batch_dims, loss.dtype)
    global_shape = tuple(logits.shape[:-1])
    return _dtensor_output(loss, reduction, mesh, tp_dim, placements, global_shape, batch_dims)


def _dtensor_linear_cross_entropy(input, linear_weight, target, *, group, linear_bias,
                                  vocab_start, num_classes, sequence_parallel, weight,
                                  reduction, **kw):
    if group is not None or vocab_start is not None:
        raise ValueError("a DTensor head brings its own group and vocab_start: pass neither")
    if not _is_dtensor(linear_weight):
        raise TypeError("with a DTensor input, linear_weight must be a DTensor sharded on "
                        "its rows (dim 0)")
    dtensor = _dtensor_module()
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    mesh, w_placements = linear_weight.device_mesh, tuple(linear_weight.placements)
    tp_dim = _class_mesh_dim(w_placements, 0, "linear_weight")
    if any(p.is_shard() for i, p in enumerate(w_placements) if i != tp_dim):
        raise ValueError(f"linear_weight must be Replicate on the mesh dimensions other "
                         f"than the tensor-parallel one, got {w_placements}")
    _, offset = compute_local_shape_and_global_offset(linear_weight.shape, mesh, w_placements)
    in_placements = (tuple(input.placements) if _is_dtensor(input)
                     else tuple(dtensor.Replicate() for _ in range(mesh.ndim)))
    batch_dims = [i for i, p in enumerate(in_placements) if i != tp_dim and p.is_shard()]
    # rows sharded over a batch dimension give each rank a part of the head's gradient: the
    # gradient is Partial there (summed over those ranks), not Replicate
    grad_placements = [dtensor.Partial() if i in batch_dims else p
                       for i, p in enumerate(w_placements)]
    w_local = linear_weight.to_local(grad_placements=grad_placements)
    b_local = linear_bias
    if linear_bias is not None:
        if not _is_dtensor(linear_bias) or tuple(linear_bias.placements) != w_placements:
            raise ValueError(f"linear_bias must be a DTensor with linear_weight's placements "
                             f"{w_placements}")
        b_local = linear_bias.to_local(grad_placements=grad_placements)
    if _is_dtensor(input):
        if input.device_mesh != mesh:
            raise ValueError(f"input must be on linear_weight's device mesh {mesh}, got "
                             f"{input.device_mesh}")
        tp_input = in_placements[tp_dim]
        if tp_input.is_shard():
            if tp_input.dim != 0:
                raise ValueError("a sequence-parallel input must be sharded on dim 0 over "
                                 "the tensor-parallel mesh dimension")
            sequence_parallel = True
        elif not tp_input.is_replicate():
            raise ValueError(f"input must be Replicate or Shard(0) on the tensor-parallel "
                             f"mesh dimension, got {tp_input}")
        for i, p in enumerate(in_placements):
            if i != tp_dim and p.is_shard() and p.dim == input.ndim - 1:
                raise ValueError("input must not be sharded on its feature dimension")
        h_local = input.to_local()
    else:
        h_local = input
    target_local = target.to_local() if _is_dtensor(target) else target
    weight = _full_weight(weight)
    if num_classes is None:
        num_classes = weight.shape[0] if weight is not None and weight.ndim == 1 \
            else linear_weight.shape[0]
    mean_over_batch = reduction == "mean" and batch_dims
    loss = vocab_parallel_linear_cross_entropy(
        h_local, w_local, target_local, group=mesh.get_group(tp_dim), linear_bias=b_local,
        vocab_start=offset[0], num_classes=num_classes, sequence_parallel=sequence_parallel,
        weight=weight, reduction="sum" if mean_over_batch else reduction, **kw)
    if mean_over_batch:
        probability = target_local.ndim == h_local.ndim
        loss = loss / _global_denominator(target_local, kw.get("ignore_index", -100), weight,
                                          probability, mesh, batch_dims, loss.dtype)
    # the loss per row of the global input (a plain input is the same on every rank)
    global_shape = tuple(input.shape[:-1]) if _is_dtensor(input) else tuple(loss.shape)
    return _dtensor_output(loss, reduction, mesh, tp_dim, in_placements, global_shape,
                           batch_dims)


# --------------------------------------------------------------------------------------------
# The global mean across data parallelism and gradient accumulation
# --------------------------------------------------------------------------------------------


def global_mean_scale(
    targets: torch.Tensor | Sequence[torch.Tensor],
    *,
    group: Group = None,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    average_gradients: bool = True,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    r"""The factor that makes ``'sum'`` losses give exactly the global-mean gradient.

    .. math:: \text{scale} = \frac{k}{\sum_{\text{ranks}} \sum_{\text{micro-batches}}
        \sum_{n \text{ not ignored}} w_{y_n}}

    ``targets`` are the class-index targets of every micro-batch this rank will run before
    the optimizer step (a tensor or a list); ``group`` is the data-parallel group (the ranks
    that hold *different* rows, not the tensor-parallel ranks, which hold the same targets).
    The denominator is ``F.cross_entropy``'s ``'mean'`` denominator of the whole global batch
    (the sum of ``w[y]`` over non-ignored elements; the element count for probability
    targets, given as floating-point ``(..., V)`` tensors), summed over ``group`` with one
    all-reduce on the device: no host synchronisation.  ``k`` is the group's size when
    ``average_gradients`` (DDP and FSDP divide the summed gradients by it), else 1.

    Then, per micro-batch, ``loss = <any crossent loss>(..., reduction="sum") * scale`` and
    ``loss.backward()``: the gradients the optimizer sees are those of
    ``F.cross_entropy(<all logits of the global batch>, <all targets>)`` (mean reduction);
    the sum of the micro-batch losses, averaged over the group, is that global mean.

    Args:
        targets: this rank's targets of every micro-batch before the optimizer step: class
            indices of any shape, or class probabilities ``(..., V)`` (floating point,
            counted as ``prod(shape[:-1])`` elements).
        group: the data-parallel group (a ``ProcessGroup`` or a 1-D ``DeviceMesh``); None:
            the default group (``torch.distributed`` must be initialized).
        weight: the ``(C,)`` class weights the loss uses, so that ``w[y]`` is counted
            (class indices are then checked to lie in ``[0, C)`` or be ``ignore_index``).
        ignore_index: the class index the loss ignores (not counted).
        average_gradients: the gradients are averaged over ``group`` (DDP, FSDP): ``k`` is
            its size; False: ``k = 1``.
        dtype: the dtype of the result (the count itself is summed in float64, in
            float32 on MPS).

    Returns:
        A 0-d tensor on the targets' device, the same on every rank of ``group``.  In a
            group of one rank with no weight it is ``1 / (number of non-ignored targets)``
            (the distributed page of the docs runs this).
    """
    named = _check_mean_targets(targets)
    ignore_index = sem.check_ignore_index(ignore_index)
    if not isinstance(average_gradients, bool):
        raise TypeError(f"average_gradients must be a bool, got {average_gradients!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    device = named[0][1].device
    # float64 on the way: token counts beyond 2**24 stay exact
    acc = torch.float64 if device.type != "mps" else torch.float32
    w = _full_weight(weight)
    if w is not None:
        if not w.is_floating_point():
            raise sem.ArgumentTypeError(
                f"weight must be a floating-point tensor, got dtype {contract.dtype_name(w)}")
        if w.ndim != 1:
            raise sem.ArgumentError(f"weight must have shape (C,), the loss's class weights, "
                                    f"got shape {tuple(w.shape)}")
        w = w.detach().to(device, acc)
    local = torch.zeros((), dtype=acc, device=device)
    for name, t in named:
        probability = t.is_floating_point()
        rows = _denominator_rows(t, probability)
        if w is not None and not probability:  # w[y] reads only classes that exist
            try:
                rows = contract.index_target_as_int64(rows, w.shape[0], ignore_index,
                                                      tuple(t.shape))
                check_class_indices(rows, w.shape[0], ignore_index, tuple(t.shape))
            except IndexError as error:
                raise IndexError(f"{name}: {error}") from None
        local = local + mean_denominator(rows, CrossEntropyParams(probability, ignore_index),
                                         w, acc)
    group = _require_group(group)
    size, _ = _group_size_and_rank(group)
    total = funcol.all_reduce(local, "sum", group) if size > 1 else local
    k = size if average_gradients else 1
    return (k / total).to(dtype)


def _check_mean_targets(targets) -> list[tuple[str, torch.Tensor]]:
    """``global_mean_scale``'s targets as ``(name, tensor)`` pairs, each checked."""
    if isinstance(targets, torch.Tensor):
        named = [("targets", targets)]
    else:
        if isinstance(targets, (str, bytes)) or not hasattr(targets, "__iter__"):
            raise TypeError(f"targets must be a tensor or a sequence of tensors, got "
                            f"{type(targets).__name__}")
        named = [(f"targets[{i}]", t) for i, t in enumerate(targets)]
    if not named:
        raise ValueError("targets must be a tensor or a non-empty sequence of tensors, got an "
                         "empty sequence")
    device = None
    for name, t in named:
        contract.check_tensor(t, name)
        if t.is_complex() or t.dtype == torch.bool:
            raise sem.ArgumentTypeError(
                f"{name} must hold integer class indices or floating-point class "
                f"probabilities, got dtype {contract.dtype_name(t)}")
        if t.is_floating_point():
            contract.check_float_dtype(t, name, "class probabilities")
        device = t.device if device is None else device
        if t.device != device:
            raise sem.ArgumentError(f"{name} must be on the device of the first target "
                                    f"({device}), got {t.device}")
    return named

"""Host side of the Triton cross-entropy: check, plan, allocate, launch.

:func:`cross_entropy_fwd` is the one entry point crossent.torch calls.  It returns the
per-row losses and, when asked, writes the gradient in the same pass (optionally over the
logits themselves).  It never synchronises with the device: no ``.item()``, no
data-dependent Python branch, no ``nonzero``; the launch plan depends only on shapes,
dtypes and the device's properties, so it is safe inside CUDA graphs and inside a
``torch.library.custom_op`` traced by ``torch.compile``.

Two launch variants (see :func:`plan_launch` for the rule that picks one)
-------------------------------------------------------------------------
``row``    one program per row.  A row that fits in one block (``C <= 8192``) is read
           once: statistics and gradient from registers.  A longer row is streamed twice:
           pass 1 online max / sum-exp / target dot, pass 2 the gradient.
``split``  ``n_split`` programs per row, each over a contiguous chunk of columns: kernel 1
           writes every chunk's partial ``(max, sum-exp, dot, coefficient sum)``; kernel 2
           merges a row's partials (the same rescaling as one online-softmax step), writes
           the loss and then the gradient of its chunk.  Same memory traffic as ``row`` on
           long rows (two reads, one write), more programs in flight.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from crossent.torch._params import CrossEntropyParams

from . import _kernels, require_triton

__all__ = ["LaunchPlan", "cross_entropy_fwd", "plan_launch"]

# --------------------------------------------------------------------------------------------
# Launch parameters.  First choices from the reasoning in each comment; no GPU was available
# when they were set.  benchmarks/bench_gpu.py times both variants so they can be re-tuned.
# --------------------------------------------------------------------------------------------

# Register budget: every block size below is paired with num_warps = block / 512, i.e. 16
# float32 values per thread for each live block.  Compiled for sm_90 (ptxas, no GPU needed)
# that costs 60-90 registers per thread with no options and 120-128 with every option on,
# without spills; 32 values per thread (16384-wide blocks at 16 warps) spill once softcap,
# weights and smoothing are on.
#
# A row of at most this many classes is one block: loaded once, statistics and gradient
# from registers (one read + one write of the logits: the traffic floor).
SINGLE_BLOCK_MAX = 8192
# Streaming block for longer rows (4096 values at 8 warps: 8-16 KiB per load per program,
# with 2-3 programs resident per SM).
STREAM_BLOCK = 4096
# Split rule, part 1 (filling the device): the row variant needs at least this many
# programs per SM to hide memory latency; with fewer rows, rows are split.
FILL_PROGRAMS_PER_SM = 4
# A split chunk is at least this long, so that reading the partials, the target and the
# row's scalars is small next to the chunk's own traffic.
SPLIT_MIN_CHUNK = 16384
# Split rule, part 2 (very long rows): rows longer than this are cut into chunks of at most
# LONG_ROW_CHUNK columns even when there are rows enough.  A 256000-class row is 0.5-1 MB,
# so one program streaming it twice is a long, coarse unit of work (the last wave of rows
# leaves most SMs idle), and its second pass cannot be served by L2 anyway (132 SMs x a
# 1 MB row exceeds the 50 MB L2), so splitting costs no extra traffic.
LONG_ROW_CLASSES = 131072
LONG_ROW_CHUNK = 65536
# The merge reads all of a row's partials as one vector.
MAX_SPLITS = 1024


@dataclass(frozen=True)
class LaunchPlan:
    """How one call is launched (pure function of shapes, dtype and device; no data)."""

    variant: str  # "row" or "split"
    block: int  # columns per block (a power of two)
    single: bool  # row variant with the whole row in one block
    chunk: int  # columns per program (C for the row variant)
    n_split: int  # programs per row (1 for the row variant)
    num_warps: int


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _warps(block: int) -> int:
    # 16 float32 values per thread per live block (see SINGLE_BLOCK_MAX); 4..16 warps
    return max(4, min(16, block // 512))


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(device).multi_processor_count)
    return 1  # the interpreter runs one program at a time


def plan_launch(
    rows: int,
    classes: int,
    *,
    sm_count: int = 1,
    variant: str = "auto",
    block_size: int | None = None,
    chunk_size: int | None = None,
) -> LaunchPlan:
    """Choose the variant, block and split of a ``(rows, classes)`` launch.

    The rule for ``variant="auto"``:

    1. ``classes <= SINGLE_BLOCK_MAX`` (8192): ``row``, whole row in one block (the logits
       are read once; splitting would add a second read).
    2. otherwise ``n_split = max(fill, long)`` capped by ``ceil(classes / SPLIT_MIN_CHUNK)``:

       * ``fill = ceil(FILL_PROGRAMS_PER_SM * sm_count / rows)`` when there are fewer rows
         than ``4 * sm_count`` (rows alone cannot keep every SM busy), else 1;
       * ``long = ceil(classes / LONG_ROW_CHUNK)`` when ``classes > LONG_ROW_CLASSES``
         (131072), else 1.  So V = 256000 runs as 4 chunks of 65536, V = 131072 as ``row``.

       ``n_split > 1`` gives ``split``, else ``row`` (streaming blocks).

    ``variant="row"`` / ``"split"`` force a variant; ``block_size`` / ``chunk_size``
    (tests, benchmarks) override the block (a power of two) and the split chunk.
    """
    if variant not in ("auto", "row", "split"):
        raise ValueError(f"variant must be 'auto', 'row' or 'split', got {variant!r}")
    if block_size is not None and (block_size < 1 or block_size & (block_size - 1)):
        raise ValueError(f"block_size must be a power of two, got {block_size!r}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    stream_block = STREAM_BLOCK
    whole = _next_pow2(classes)

    n_split = 1
    if variant == "auto":
        if classes > SINGLE_BLOCK_MAX:
            fill = FILL_PROGRAMS_PER_SM * sm_count
            n_fill = math.ceil(fill / rows) if rows < fill else 1
            n_long = math.ceil(classes / LONG_ROW_CHUNK) if classes > LONG_ROW_CLASSES else 1
            n_split = min(max(n_fill, n_long), math.ceil(classes / SPLIT_MIN_CHUNK), MAX_SPLITS)
        variant = "split" if n_split > 1 else "row"
    elif variant == "split":  # forced: the long-row chunking, at least two pieces
        n_split = max(2, math.ceil(classes / LONG_ROW_CHUNK))

    if variant == "row":
        if block_size is not None:
            block = block_size
        else:
            block = whole if whole <= SINGLE_BLOCK_MAX else stream_block
        single = block >= classes
        return LaunchPlan("row", block, single, classes, 1, _warps(block))

    if chunk_size is None:
        chunk_size = math.ceil(classes / n_split)
    block = block_size if block_size is not None else min(stream_block, _next_pow2(chunk_size))
    chunk = math.ceil(chunk_size / block) * block  # whole blocks: no block straddles chunks
    n_split = math.ceil(classes / chunk)
    if n_split > MAX_SPLITS:
        raise ValueError(
            f"chunk_size {chunk_size} cuts {classes} classes into {n_split} pieces; "
            f"at most {MAX_SPLITS} are supported"
        )
    return LaunchPlan("split", block, False, chunk, n_split, _warps(block))


# --------------------------------------------------------------------------------------------
# Argument checks (shapes, dtypes, devices: metadata only, never the data)
# --------------------------------------------------------------------------------------------

_LOGIT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check(logits, target, params, weight, grad_scale, grad_out) -> None:
    if not isinstance(params, CrossEntropyParams):
        raise TypeError(f"params must be a CrossEntropyParams, got {type(params).__name__}")
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError(
            "logits must be a 2-d tensor (M, C), got "
            + (f"shape {tuple(logits.shape)}" if isinstance(logits, torch.Tensor)
               else type(logits).__name__)
        )
    if logits.dtype not in _LOGIT_DTYPES:
        raise TypeError(f"logits must be float32, float16 or bfloat16, got {logits.dtype}")
    rows, classes = logits.shape
    if classes == 0:
        raise ValueError("logits has no classes (shape (M, 0)); cross-entropy needs C >= 1")
    if classes > 1 and logits.stride(1) != 1:
        raise ValueError(
            f"logits must have contiguous columns (stride(1) == 1), got strides {logits.stride()}"
        )
    device = logits.device

    def same_device(name, t):
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but logits is on {device}")

    if params.probability:
        if tuple(target.shape) != (rows, classes):
            raise ValueError(
                f"probability target must have the logits' shape {(rows, classes)}, "
                f"got {tuple(target.shape)}"
            )
        if not target.is_floating_point():
            raise TypeError(f"probability target must be a float tensor, got {target.dtype}")
    else:
        if tuple(target.shape) != (rows,):
            raise ValueError(
                f"class-index target must have shape ({rows},), got {tuple(target.shape)}"
            )
        if target.dtype != torch.int64:
            raise TypeError(f"class-index target must be int64, got {target.dtype}")
    same_device("target", target)
    if weight is not None:
        if tuple(weight.shape) != (classes,):
            raise ValueError(f"weight must have shape ({classes},), got {tuple(weight.shape)}")
        if not weight.is_floating_point():
            raise TypeError(f"weight must be a float tensor, got {weight.dtype}")
        same_device("weight", weight)
    if (grad_scale is None) != (grad_out is None):
        raise ValueError(
            "grad_scale and grad_out go together: give both to get the gradient, or neither; "
            f"got grad_scale={'None' if grad_scale is None else 'a tensor'}, "
            f"grad_out={'None' if grad_out is None else 'a tensor'}"
        )
    if grad_out is not None:
        if tuple(grad_scale.shape) not in ((), (rows,)):
            raise ValueError(
                f"grad_scale must be 0-d or have shape ({rows},), got {tuple(grad_scale.shape)}"
            )
        if not grad_scale.is_floating_point():
            raise TypeError(f"grad_scale must be a float tensor, got {grad_scale.dtype}")
        same_device("grad_scale", grad_scale)
        if tuple(grad_out.shape) != (rows, classes):
            raise ValueError(
                f"grad_out must have the logits' shape {(rows, classes)}, "
                f"got {tuple(grad_out.shape)}"
            )
        if not grad_out.is_floating_point():
            raise TypeError(f"grad_out must be a float tensor, got {grad_out.dtype}")
        if classes > 1 and grad_out.stride(1) != 1:
            raise ValueError(
                f"grad_out must have contiguous columns (stride(1) == 1), "
                f"got strides {grad_out.stride()}"
            )
        same_device("grad_out", grad_out)


def _kernel_module():
    """The kernels, checked to be of the kind (interpreted or compiled) Triton runs now.

    ``triton.jit`` reads ``TRITON_INTERPRET`` when a kernel is defined and Triton's own
    ``tl.sum`` when triton is imported; a variable changed in between would give kernels that
    fail deep inside Triton, so say so here instead.
    """
    from triton.runtime.interpreter import InterpretedFunction

    from . import interpreter_enabled

    if isinstance(_kernels.ce_row_kernel, InterpretedFunction) != interpreter_enabled():
        raise RuntimeError(
            "TRITON_INTERPRET changed between importing triton and importing "
            "crossent.torch.triton; set it once, before the first 'import triton'"
        )
    return _kernels


# --------------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------------


def cross_entropy_fwd(
    logits: torch.Tensor,  # (M, C), stride(1) == 1, float32 / float16 / bfloat16
    target: torch.Tensor,  # (M,) int64 class indices, or (M, C) float probabilities
    params: CrossEntropyParams,
    weight: torch.Tensor | None,  # (C,) float class weights
    grad_scale: torch.Tensor | None,  # 0-d or (M,) float: d reduced loss / d loss_n
    grad_out: torch.Tensor | None,  # (M, C) float, receives the gradient; may be `logits`
    *,
    variant: str = "auto",
    block_size: int | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    r"""Per-row cross-entropy losses ``(M,)`` in float32; the gradient goes to ``grad_out``.

    Per row ``n``, with ``z = softcap * tanh(x / softcap)`` (or ``z = x``),
    target coefficients ``a`` and ``A = sum_c a_c`` (:mod:`crossent._semantics`)::

        loss_n = A * lse(z) - a . z + z_loss * w_n * lse(z)**2
        grad_n = grad_scale_n * ((A + 2 z_loss w_n lse) softmax(z) - a) * (1 - tanh(x/s)**2)

    .. math::
        \ell_n = A\,\mathrm{lse}(z) - a^\top z + \lambda_z w_n\,\mathrm{lse}(z)^2

    * index target ``y``: ``a = (1-eps) w[y] onehot(y) + (eps/C) w``, ``w_n = w[y]``;
      rows with ``y == ignore_index`` give loss 0 and gradient exactly 0 (even with inf/NaN
      logits).  Targets are not range-checked here (the caller does it).
    * probability target ``t``: ``a = w ((1-eps) t + eps/C)``, ``w_n = 1``.
    * a class with ``a_c = 0`` and logit ``-inf`` adds 0 (``0 log 0 = 0``); otherwise IEEE:
      a row of ``-inf`` or with ``+inf`` gives NaN, as crossent's NumPy executor does.

    Everything is computed in float32 and the gradient is rounded once, to ``grad_out``'s
    dtype, at the store.  ``grad_scale`` / ``grad_out`` are both given (gradient wanted) or
    both None.  ``grad_out`` may be ``logits`` itself: every block is read before it is
    overwritten.  Nothing synchronises with the device.

    The keyword-only ``variant`` (``"auto" | "row" | "split"``), ``block_size`` and
    ``chunk_size`` override :func:`plan_launch`; they exist for tests and benchmarks.

    Example (CPU tensors need ``TRITON_INTERPRET=1``)::

        losses = cross_entropy_fwd(x, y, CrossEntropyParams(), None, None, None)
        # same as F.cross_entropy(x.float(), y, reduction="none")
    """
    _check(logits, target, params, weight, grad_scale, grad_out)
    device = logits.device
    require_triton(device)
    rows, classes = logits.shape
    losses = torch.empty(rows, dtype=torch.float32, device=device)
    if rows == 0:
        return losses
    plan = plan_launch(
        rows, classes, sm_count=_sm_count(device),
        variant=variant, block_size=block_size, chunk_size=chunk_size,
    )
    k = _kernel_module()

    eps = float(params.label_smoothing)
    softcap = params.softcap
    has_grad = grad_out is not None
    if params.probability and target.stride(1) != 1 and classes > 1:
        target = target.contiguous()  # the kernels read target rows like logits rows
    t_stride = target.stride(0)
    flags = dict(
        IS_PROB=bool(params.probability),
        HAS_WEIGHT=weight is not None,
        SMOOTH=eps > 0.0,
        HAS_SOFTCAP=softcap is not None,
    )
    scalars = dict(
        keep=1.0 - eps,  # on-target factor (1 - eps)
        uniform=eps / classes,  # every class's share eps / C
        softcap=float(softcap) if softcap is not None else 1.0,
        inv_softcap=1.0 / float(softcap) if softcap is not None else 1.0,
    )
    # the kernels read w[c] at w_ptr + c; a strided (C,) view is copied (C values)
    w = weight.contiguous() if weight is not None else losses  # dummy pointer when unused
    gs = grad_scale if has_grad else losses
    gs_stride = (grad_scale.stride(0) if grad_scale.dim() == 1 else 0) if has_grad else 0
    g = grad_out if has_grad else losses
    g_stride = grad_out.stride(0) if has_grad else 0
    ignore_index = int(params.ignore_index)
    z_loss = float(params.z_loss)

    with _device_guard(device):
        if plan.variant == "row":
            k.ce_row_kernel[(rows,)](
                logits, logits.stride(0), target, t_stride, w, gs, gs_stride, g, g_stride,
                losses, classes, ignore_index, z_loss=z_loss, **scalars,
                BLOCK=plan.block, SINGLE=plan.single, HAS_ZLOSS=z_loss != 0.0,
                HAS_GRAD=has_grad, num_warps=plan.num_warps, **flags,
            )
            return losses
        n_split = plan.n_split
        partials = torch.empty((4, rows, n_split), dtype=torch.float32, device=device)
        plane = rows * n_split
        k.ce_split_stats_kernel[(rows, n_split)](
            logits, logits.stride(0), target, t_stride, w, partials, plane, classes,
            plan.chunk, n_split, ignore_index, **scalars, BLOCK=plan.block,
            num_warps=plan.num_warps, **flags,
        )
        # without a gradient, one program per row merges and writes the loss
        k.ce_split_finish_kernel[(rows, n_split if has_grad else 1)](
            logits, logits.stride(0), target, t_stride, w, gs, gs_stride, g, g_stride, losses,
            partials, plane, classes, plan.chunk, n_split, ignore_index, z_loss=z_loss,
            **scalars, BLOCK=plan.block, SPLIT_POW2=max(2, _next_pow2(n_split)),
            HAS_ZLOSS=z_loss != 0.0, HAS_GRAD=has_grad, num_warps=plan.num_warps, **flags,
        )
    return losses


class _NullGuard:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _device_guard(device: torch.device):
    """Launch on the tensors' GPU, not the current one (Triton launches on the current)."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return _NullGuard()

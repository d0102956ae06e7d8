r"""One line makes a Hugging Face causal language model train through
:func:`crossent.torch.linear_cross_entropy`: the loss comes from the final hidden states and the
output layer's weight, chunk by chunk, and the ``(batch, sequence, vocabulary)`` logits are never
held.  ``pip install "crossent[transformers]"``.

    model = crossent.transformers.patch(model)   # that instance only; unpatch(model) undoes it

What a patched model does differently: only a forward that is given ``labels`` (the one that
computes a loss).  Without labels (logits for evaluation, ``generate``) it runs the model's own
forward, untouched.  With labels it runs the model's own forward too, with three things swapped
for that call only:

1. the output embeddings (``lm_head``, a ``torch.nn.Linear``) see their input, the final hidden
   states, and are run on zero rows instead; they return a stand-in for the logits that holds no
   memory (:class:`_LogitsStandIn`: the logits' shape, dtype and device);
2. whatever the model then does to its logits is recorded on the stand-in: multiplications and
   divisions by a number (Cohere's ``logit_scale``, Granite's ``logits_scaling``) and one tanh
   between them (Gemma 2/3's final-logit softcapping ``c * tanh(z / c)``).  Those fold into
   linear_cross_entropy as a scale of the hidden states and its ``softcap``; any other operation
   raises :class:`UnsupportedModelError` naming the model and the operation;
3. the model hands the stand-in to ``self.loss_function(logits, labels, vocab_size, **kwargs)``,
   which :func:`patch` set on the instance to :func:`causal_lm_loss`: Hugging Face's
   ``ForCausalLMLoss`` computed by linear_cross_entropy (the causal shift or ``shift_labels``,
   ``ignore_index=-100``, ``'mean'`` or, when ``Trainer`` passes ``num_items_in_batch``,
   ``'sum' / num_items_in_batch``).  Given real logits it *is* ``ForCausalLMLoss``.

The model's usual output object comes back, with ``logits=None``; everything the model adds to
the loss itself (a mixture-of-experts auxiliary loss) is still added, by the model's own code.

Which models: decided by what a model is, not by a list of class names.  A ``PreTrainedModel``
whose forward takes ``labels``, whose output embeddings are a plain ``torch.nn.Linear`` and whose
``loss_function`` is Hugging Face's ``ForCausalLMLoss``; anything else raises
:class:`UnsupportedModelError` at :func:`patch`, and a forward that does not go through those
steps (never calls the output embeddings, does something else to the logits, computes its loss
some other way) raises it at the first forward with labels.  Nothing is silently left unpatched.
Tested on Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 (text), Phi-3, GPT-2 (tied input and
output embeddings), Cohere, Granite and Mixtral, with transformers 4.57.6 and 5.24.0.

Instance only: the patch lives in the instance's ``__dict__`` (its ``forward``, its
``_loss_function``, two hooks on its output layer), so other instances of the class and the
class itself are untouched, ``copy.deepcopy`` gives a patched copy on its own parameters, and
``nn.DataParallel``, whose replicas would share the instance's forward, is refused.
"""

from __future__ import annotations

import contextvars
import dataclasses
import inspect
import math
import numbers
import types
from typing import Any

try:
    import torch
    import transformers
    from transformers.loss.loss_utils import ForCausalLMLoss
    from transformers.utils import ModelOutput
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"crossent.transformers needs PyTorch and Hugging Face transformers ({exc}); install "
        "them with: pip install 'crossent[transformers]'"
    ) from exc

from . import _semantics as sem
from .torch import linear_cross_entropy
from .torch._impl import check_impl
from .torch.linear import check_chunk_size

__all__ = ["patch", "unpatch", "is_patched", "causal_lm_loss", "UnsupportedModelError"]

#: Where a patched model keeps its :class:`_PatchState` (in the instance's ``__dict__``).
_STATE = "_crossent_patch"


class UnsupportedModelError(ValueError):
    """The model cannot compute its loss through linear_cross_entropy; the message says why."""


# ------------------------------------------------------------------------------------------------
# options and per-model state


@dataclasses.dataclass(frozen=True)
class _Options:
    z_loss: float
    label_smoothing: float
    chunk_size: int | None
    impl: str
    train_only: bool


def _check_options(z_loss, label_smoothing, chunk_size, impl, train_only) -> _Options:
    check_chunk_size(chunk_size)
    check_impl(impl)
    if not isinstance(train_only, bool):
        raise TypeError(f"train_only must be a bool, got {type(train_only).__name__} "
                        f"{train_only!r}")
    return _Options(z_loss=sem.check_z_loss(z_loss),
                    label_smoothing=sem.check_label_smoothing(label_smoothing),
                    chunk_size=chunk_size, impl=impl, train_only=train_only)


@dataclasses.dataclass
class _PatchState:
    options: _Options
    #: the instance's own ``forward`` before patching (accelerate's wrapper, say); None: the class's
    previous_forward: Any
    #: the instance's own ``_loss_function`` before patching (None: none)
    previous_loss_function: Any
    #: position of ``labels`` among the forward's parameters (for a positional call)
    labels_position: int
    head: torch.nn.Module | None = None
    handles: list = dataclasses.field(default_factory=list)
    #: False once unpatched while another wrapper sits on top of ours: we only pass through
    active: bool = True


# ------------------------------------------------------------------------------------------------
# what a model must be


def _model_name(model) -> str:
    return type(model).__name__


def _check_head(name: str, head) -> None:
    if head is None:
        raise UnsupportedModelError(
            f"{name} cannot be patched: it has no output embeddings (get_output_embeddings() "
            "returned None), so it is not a language model with a vocabulary head")
    if not isinstance(head, torch.nn.Linear) or type(head).forward is not torch.nn.Linear.forward:
        raise UnsupportedModelError(
            f"{name} cannot be patched: its output embeddings are a {type(head).__qualname__}, "
            "not a plain torch.nn.Linear, so its logits are not hidden @ weight.T + bias")
    if not head.weight.is_floating_point():
        raise UnsupportedModelError(
            f"{name} cannot be patched: its output embedding weight has dtype "
            f"{head.weight.dtype} (quantized?), and linear_cross_entropy needs floating point")


def _check_supported(model) -> torch.nn.Module:
    """The output embeddings of a model that :func:`patch` supports; raises otherwise."""
    if not isinstance(model, transformers.PreTrainedModel):
        raise UnsupportedModelError(
            f"patch expects a Hugging Face transformers PreTrainedModel, got "
            f"{type(model).__qualname__}")
    name = _model_name(model)
    if getattr(model.config, "is_encoder_decoder", False):
        raise UnsupportedModelError(
            f"{name} cannot be patched: it is an encoder-decoder model, and crossent.transformers "
            "patches causal (decoder-only) language models")
    if "labels" not in inspect.signature(type(model).forward).parameters:
        raise UnsupportedModelError(
            f"{name} cannot be patched: its forward takes no labels, so it computes no "
            "language-model loss (load it as a ...ForCausalLM class)")
    if getattr(getattr(type(model), "loss_function", None), "fset", None) is None:
        raise UnsupportedModelError(
            f"{name} cannot be patched: transformers {transformers.__version__} cannot set a "
            "loss_function on one model instance; crossent.transformers needs transformers "
            ">= 4.57 (pip install 'crossent[transformers]')")
    head = model.get_output_embeddings()
    _check_head(name, head)
    loss_function = model.loss_function
    if loss_function is not ForCausalLMLoss and loss_function is not causal_lm_loss:
        raise UnsupportedModelError(
            f"{name} cannot be patched: its loss_function is "
            f"{getattr(loss_function, '__qualname__', loss_function)!r}, not transformers' "
            "ForCausalLMLoss, whose semantics crossent.transformers reproduces")
    return head


# ------------------------------------------------------------------------------------------------
# patch / unpatch


def patch(model, *, z_loss: float = 0.0, label_smoothing: float = 0.0,
          chunk_size: int | None = None, impl: str = "auto", train_only: bool = False):
    r"""Make ``model`` (that instance only) compute its loss with linear_cross_entropy.

    .. math:: \ell = \frac{1}{|\{t : y_{t+1} \ne -100\}|} \sum_{t:\, y_{t+1} \ne -100}
        \operatorname{CE}(h_t W^\top,\; y_{t+1})

    A forward given ``labels`` returns the same loss as Hugging Face's ``ForCausalLMLoss`` on
    the model's logits (with the options below added; see :func:`causal_lm_loss`), computed
    by ``crossent.torch.linear_cross_entropy`` from the final hidden states ``h``
    ``(B, T, D)`` and the output layer's weight ``W`` ``(V, D)``, with ``logits=None`` in its
    output: the ``(B, T, V)`` logits are never held.  A forward without labels is untouched.
    Patching again replaces the options; :func:`unpatch` restores the model.

    Args:
        model (transformers.PreTrainedModel): a causal language model.
        z_loss: coefficient of ``lse**2`` added per token (PaLM: 1e-4); 0 is Hugging Face's loss.
        label_smoothing: as in ``F.cross_entropy``; 0 is Hugging Face's loss.
        chunk_size: rows per chunk of linear_cross_entropy; None chooses by memory.
        impl: linear_cross_entropy's executor (``"auto"``, ``"cpu"``, ``"torch"``, ``"triton"``).
        train_only: if True, a model in eval mode (``model.training`` False) computes its
            logits and loss as if unpatched (``Trainer.evaluate`` with ``compute_metrics``
            needs the logits).

    Returns:
        model (transformers.PreTrainedModel): ``model`` itself, patched in place.

    Raises:
        UnsupportedModelError: the model is not a causal LM whose logits come from a plain
            ``torch.nn.Linear`` and whose loss is ``ForCausalLMLoss`` (the message says which).

    A tiny Llama built from a config (random weights, nothing downloaded):

    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> config = LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32,
    ...                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    >>> _ = torch.manual_seed(0)
    >>> model = LlamaForCausalLM(config)
    >>> ids = torch.randint(0, 100, (2, 8))
    >>> before = model(input_ids=ids, labels=ids).loss
    >>> model = patch(model)
    >>> after = model(input_ids=ids, labels=ids)
    >>> after.logits is None, torch.allclose(after.loss, before)
    (True, True)
    >>> is_patched(model), is_patched(unpatch(model))
    (True, False)
    """
    options = _check_options(z_loss, label_smoothing, chunk_size, impl, train_only)
    head = _check_supported(model)
    state = model.__dict__.get(_STATE)
    if state is None:
        parameters = list(inspect.signature(type(model).forward).parameters)
        state = _PatchState(
            options=options,
            previous_forward=model.__dict__.get("forward"),
            previous_loss_function=model.__dict__.get("_loss_function"),
            labels_position=parameters.index("labels") - 1,  # without self
        )
        model.__dict__[_STATE] = state
        model.forward = _bound_patched_forward(model)
        # nn.DataParallel (Trainer on several GPUs without torchrun) copies the instance's
        # __dict__ into each replica, our forward included, still bound to this model
        model.__dict__["_replicate_for_data_parallel"] = _RefuseReplication(_model_name(model))
    state.options = options
    state.active = True
    _attach_head(state, head)
    if model.__dict__.get("_loss_function") is not causal_lm_loss:
        model.loss_function = causal_lm_loss  # transformers' setter: the instance's _loss_function
    return model


def unpatch(model):
    """Undo :func:`patch` on ``model`` (harmless on a model that is not patched); returns it."""
    state = model.__dict__.get(_STATE) if isinstance(model, torch.nn.Module) else None
    if state is None:
        return model
    _detach_head(state)
    if isinstance(model.__dict__.get("_replicate_for_data_parallel"), _RefuseReplication):
        del model.__dict__["_replicate_for_data_parallel"]
    if model.__dict__.get("_loss_function") is causal_lm_loss:
        if state.previous_loss_function is None:
            del model._loss_function
        else:
            model._loss_function = state.previous_loss_function
    forward = model.__dict__.get("forward")
    if (getattr(getattr(forward, "__func__", None), "_crossent_patched", False)
            and forward.__self__ is model):
        if state.previous_forward is None:
            del model.forward
        else:
            model.forward = state.previous_forward
        del model.__dict__[_STATE]
    else:
        # something wrapped our forward after patching (accelerate's autocast wrapper, say):
        # ours stays inside that wrapper as a pass-through
        state.active = False
    return model


class _RefuseReplication:
    """``nn.DataParallel``'s replication of a patched model: refused, loudly."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self):
        raise UnsupportedModelError(
            f"a patched {self.name} cannot be replicated by torch.nn.DataParallel (its replicas "
            "would run this model's forward); use DistributedDataParallel (torchrun, "
            "accelerate launch), or unpatch(model)")


def is_patched(model) -> bool:
    """Whether ``model`` is patched by :func:`patch` (and not since unpatched)."""
    state = model.__dict__.get(_STATE) if isinstance(model, torch.nn.Module) else None
    return state is not None and state.active


def _attach_head(state: _PatchState, head: torch.nn.Module) -> None:
    if state.head is head and state.handles:
        return
    _detach_head(state)
    state.head = head
    state.handles = [head.register_forward_pre_hook(_head_pre_hook, with_kwargs=True),
                     head.register_forward_hook(_head_hook, with_kwargs=True)]


def _detach_head(state: _PatchState) -> None:
    for handle in state.handles:
        handle.remove()
    state.handles = []


# ------------------------------------------------------------------------------------------------
# one forward with labels


#: The forward with labels that is running now (per thread and task), or None.
_CAPTURE: contextvars.ContextVar[_Capture | None] = contextvars.ContextVar(
    "crossent_transformers_capture", default=None)


class _Capture:
    """What one forward with labels collects: the hidden states the output layer was given."""

    def __init__(self, model, head, options: _Options):
        self.name = _model_name(model)
        self.head = head
        self.options = options
        self.hidden: torch.Tensor | None = None
        self.stand_in_made = False
        self.losses = 0

    def loss(self, transform: _Transform, labels, vocab_size, num_items_in_batch, ignore_index,
             shift_labels) -> torch.Tensor:
        """Hugging Face's ForCausalLMLoss of the logits ``transform(hidden @ W.T + b)``."""
        weight, bias = self.head.weight, self.head.bias
        if vocab_size != weight.shape[0]:
            raise ValueError(
                f"{self.name} passed vocab_size={vocab_size} to its loss, but its output "
                f"embeddings have {weight.shape[0]} rows")
        if shift_labels is None:
            if labels is None:
                raise ValueError(f"{self.name}'s loss needs labels or shift_labels, got neither")
            # the causal shift: position t predicts token t+1; the last position predicts nothing
            labels = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)
            shift_labels = labels[..., 1:]
        hidden = self.hidden
        rows = hidden.reshape(-1, hidden.shape[-1])
        target = shift_labels.reshape(-1).to(rows.device)
        if target.shape[0] != rows.shape[0]:
            raise ValueError(
                f"{self.name}: labels of shape {tuple(shift_labels.shape)} give "
                f"{target.shape[0]} targets for {rows.shape[0]} positions of logits (hidden "
                f"states of shape {tuple(hidden.shape)}); with logits_to_keep, labels must "
                "cover the kept positions only")
        scale, softcap = transform.fold(self.name)
        if scale != 1.0:  # s (h W^T + b) = (s h) W^T + s b
            rows = rows * scale
            bias = bias * scale if bias is not None else None
        options = self.options
        # under autocast, linear_cross_entropy takes the products in the autocast dtype, as
        # the output layer would
        loss = linear_cross_entropy(
            rows, weight, target, linear_bias=bias, ignore_index=ignore_index,
            reduction="mean" if num_items_in_batch is None else "sum",
            label_smoothing=options.label_smoothing, z_loss=options.z_loss,
            softcap=softcap, chunk_size=options.chunk_size, impl=options.impl,
            # ForCausalLMLoss upcasts the logits: a float32 loss whatever the model's dtype
            loss_dtype=torch.float32)
        if num_items_in_batch is not None:
            if torch.is_tensor(num_items_in_batch):
                num_items_in_batch = num_items_in_batch.to(loss.device)
            loss = loss / num_items_in_batch
        self.losses += 1
        return loss


def _labels_argument(state: _PatchState, args, kwargs):
    if "labels" in kwargs:
        return kwargs["labels"]
    return args[state.labels_position] if len(args) > state.labels_position else None


def _bound_patched_forward(model):
    """:func:`_patched_forward` bound to ``model``, showing the signature of the model's own
    forward (``Trainer`` reads it to decide which columns and loss arguments to pass)."""

    def forward(self, *args, **kwargs):
        return _patched_forward(self, *args, **kwargs)

    forward.__signature__ = inspect.signature(type(model).forward)
    forward.__doc__ = type(model).forward.__doc__
    forward.__name__ = forward.__qualname__ = "forward"
    forward._crossent_patched = True
    return types.MethodType(forward, model)


def _patched_forward(self, *args, **kwargs):
    """The patched instance's forward: the model's own, in capture mode when given labels."""
    state: _PatchState = self.__dict__[_STATE]
    forward = (state.previous_forward if state.previous_forward is not None
               else types.MethodType(type(self).forward, self))
    if (not state.active or (state.options.train_only and not self.training)
            or _labels_argument(state, args, kwargs) is None):
        return forward(*args, **kwargs)
    return _captured_forward(self, state, forward, args, kwargs)


# torch.compile cannot trace the stand-in for the logits: a forward with labels runs eagerly
# (a graph break around it; modules compiled on their own inside it stay compiled)
@torch.compiler.disable
def _captured_forward(self, state: _PatchState, forward, args, kwargs):
    """``forward(*args, **kwargs)`` with the output layer and the loss taken over."""
    head = self.get_output_embeddings()
    if head is not state.head:  # replaced since patching (resize_token_embeddings, say)
        _check_head(_model_name(self), head)
        _attach_head(state, head)
    capture = _Capture(self, head, state.options)
    token = _CAPTURE.set(capture)
    try:
        output = forward(*args, **kwargs)
    finally:
        _CAPTURE.reset(token)
    if capture.hidden is None:
        raise UnsupportedModelError(
            f"{capture.name}'s forward did not call its output embeddings "
            f"({type(head).__qualname__}), so crossent.transformers cannot take its logits "
            "over; unpatch(model) to run it unpatched")
    if capture.losses == 0:
        raise UnsupportedModelError(
            f"{capture.name}'s forward did not compute its loss with self.loss_function, so "
            "crossent.transformers cannot compute it; unpatch(model) to run it unpatched")
    return _without_stand_ins(output)


def _without_stand_ins(output):
    """The output object with ``None`` wherever the model returned the stand-in logits."""
    if isinstance(output, ModelOutput):
        names = [f.name for f in dataclasses.fields(output)]
        if not any(isinstance(getattr(output, n), _LogitsStandIn) for n in names):
            return output
        values = {n: getattr(output, n) for n in names}
        return type(output)(**{n: None if isinstance(v, _LogitsStandIn) else v
                               for n, v in values.items()})
    if isinstance(output, tuple):  # return_dict=False: transformers' to_tuple drops None
        return tuple(v for v in output if not isinstance(v, _LogitsStandIn))
    return output


def _head_pre_hook(module, args, kwargs):
    """In capture mode: keep the hidden states, run the output layer on zero rows."""
    capture = _CAPTURE.get()
    if capture is None or capture.head is not module:
        return None
    if capture.hidden is not None:
        raise UnsupportedModelError(
            f"{capture.name}'s forward calls its output embeddings more than once; "
            "crossent.transformers replaces a single call")
    hidden = args[0] if args else kwargs["input"]
    if hidden.ndim < 2:
        raise UnsupportedModelError(
            f"{capture.name} passes hidden states of shape {tuple(hidden.shape)} to its output "
            "embeddings; crossent.transformers expects (..., positions, hidden)")
    capture.hidden = hidden
    empty = hidden.narrow(-2, 0, 0)
    if args:
        return (empty, *args[1:]), kwargs
    return args, {**kwargs, "input": empty}


def _head_hook(module, args, kwargs, output):
    """In capture mode: return the stand-in for the logits instead of the zero-row output."""
    capture = _CAPTURE.get()
    if capture is None or capture.head is not module or capture.stand_in_made:
        return None
    capture.stand_in_made = True
    shape = (*capture.hidden.shape[:-1], module.weight.shape[0])
    return _LogitsStandIn.make(capture, shape, output.dtype, output.device, _Transform())


# ------------------------------------------------------------------------------------------------
# the stand-in for the logits


@dataclasses.dataclass(frozen=True)
class _Transform:
    """``z -> post * tanh(pre * z)`` (with tanh) or ``pre * z`` (without), each scale kept as a
    numerator and a denominator so that Gemma's ``/ c`` then ``* c`` folds to exactly 1."""

    pre: tuple[float, float] = (1.0, 1.0)
    tanh: bool = False
    post: tuple[float, float] = (1.0, 1.0)

    def scaled(self, factor: float, divide: bool) -> _Transform:
        side = self.post if self.tanh else self.pre
        num, den = side
        side = (num, den * factor) if divide else (num * factor, den)
        return (dataclasses.replace(self, post=side) if self.tanh
                else dataclasses.replace(self, pre=side))

    def fold(self, name: str) -> tuple[float, float | None]:
        """``(scale of the hidden states, softcap)`` for linear_cross_entropy: with
        ``c = post``, ``c * tanh(pre * z) = c * tanh((pre * c) * z / c)``."""
        if not self.tanh:
            return self.pre[0] / self.pre[1], None
        cap = self.post[0] / self.post[1]
        if not (cap > 0.0 and math.isfinite(cap)):
            raise UnsupportedModelError(
                f"{name} multiplies tanh of its logits by {cap}; crossent's softcap must be a "
                "finite number > 0")
        return (self.pre[0] * self.post[0]) / (self.pre[1] * self.post[1]), cap


_METADATA = frozenset({
    "shape", "dtype", "device", "ndim", "size", "dim", "numel", "nelement", "is_floating_point",
    "is_complex", "requires_grad", "is_cuda", "layout", "element_size", "__len__", "is_leaf",
    "grad_fn",
})
_DIVIDE = frozenset({"div", "div_", "true_divide", "true_divide_", "__truediv__",
                     "__itruediv__"})
_MULTIPLY = frozenset({"mul", "mul_", "multiply", "multiply_", "__mul__", "__rmul__",
                       "__imul__"})
_TANH = frozenset({"tanh", "tanh_"})
_CAST = frozenset({"float", "to", "type_as"})


def _op_name(func) -> str:
    name = getattr(func, "__name__", repr(func))
    if name in ("__get__", "__set__"):  # a property such as Tensor.shape
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    return name


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) and value != 0.0 else None


class _LogitsStandIn(torch.Tensor):
    """Logits that were not computed: the shape, dtype and device of the real ones, no memory
    (a zero expanded to that shape).  It records the scalings and the tanh a model applies to
    its logits, and refuses every other operation with :class:`UnsupportedModelError`."""

    _capture: _Capture
    _transform: _Transform

    @staticmethod
    def make(capture: _Capture, shape, dtype, device, transform: _Transform) -> _LogitsStandIn:
        base = torch.zeros((), dtype=dtype, device=device).expand(shape)
        out = torch.Tensor._make_subclass(_LogitsStandIn, base)
        out._capture = capture
        out._transform = transform
        return out

    def __repr__(self, *args, **kwargs) -> str:
        return (f"<logits of shape {tuple(self.shape)} not computed: crossent.transformers "
                "computed the loss without them>")

    @classmethod
    def __torch_function__(cls, func, _types=(), args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _op_name(func)
        if name in _METADATA:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        this = next((a for a in args if isinstance(a, cls)), None)
        if this is None:  # a stand-in passed some other way (in a list, as a keyword)
            raise UnsupportedModelError(
                f"a model passed its logits to {name}; crossent.transformers cannot compute "
                "that without the logits")
        transform = this._transform
        others = [a for a in args if a is not this]
        if name in _TANH and not others and not kwargs and not transform.tanh:
            return cls.make(this._capture, this.shape, this.dtype, this.device,
                            dataclasses.replace(transform, tanh=True))
        if (name in _DIVIDE or name in _MULTIPLY) and len(others) == 1 and not kwargs:
            factor = _number(others[0])
            if factor is not None and (name in _MULTIPLY or args[0] is this):
                return cls.make(this._capture, this.shape, this.dtype, this.device,
                                transform.scaled(factor, divide=name in _DIVIDE))
        if name in _CAST:
            dtype = _cast_dtype(name, others, kwargs)
            if dtype is not None and dtype.is_floating_point:
                return cls.make(this._capture, this.shape, dtype, this.device, transform)
        raise UnsupportedModelError(
            f"{this._capture.name} applies {name} to its logits; crossent.transformers can fold "
            "only multiplications and divisions by a number and one tanh (final-logit "
            "softcapping) into linear_cross_entropy, so it cannot patch this model; "
            "unpatch(model) to run it unpatched")


def _cast_dtype(name: str, others, kwargs) -> torch.dtype | None:
    """The dtype of ``x.float()``, ``x.to(dtype)`` or ``x.type_as(t)``; None for anything else
    (a device move, a copy flag)."""
    if name == "float" and not others and not kwargs:
        return torch.float32
    if name == "type_as" and len(others) == 1 and not kwargs and torch.is_tensor(others[0]):
        return others[0].dtype
    if name == "to":
        if not others and set(kwargs) == {"dtype"}:
            return kwargs["dtype"]
        if len(others) == 1 and isinstance(others[0], torch.dtype) and not kwargs:
            return others[0]
    return None


# ------------------------------------------------------------------------------------------------
# the loss function set on patched instances


def causal_lm_loss(logits, labels, vocab_size: int, num_items_in_batch=None,
                   ignore_index: int = -100, shift_labels=None, **kwargs) -> torch.Tensor:
    r"""Hugging Face's ``ForCausalLMLoss``, computed by linear_cross_entropy for the logits a
    patched model did not materialise; for real logits, ``ForCausalLMLoss`` itself.

    .. math:: \ell = \frac{1}{n} \sum_{b,\, t:\; y_{b,t+1} \ne \text{ignore}}
        -\log \operatorname{softmax}(z_{b,t})_{y_{b,t+1}}

    with ``n`` the number of scored tokens, or ``num_items_in_batch`` when given (the
    ``'sum'`` divided by it, what ``Trainer`` passes under gradient accumulation); position
    ``t`` is scored on the next label (the last position on nothing), or on
    ``shift_labels[t]`` when those are given.  :func:`patch` sets it as the instance's
    ``loss_function``; it takes the arguments that models pass to ``self.loss_function``.

    Args:
        logits (torch.Tensor): ``(B, T, V)``: a patched model's stand-in (no memory), or
            real logits.
        labels (torch.Tensor): ``(B, T)`` token ids, unshifted, ``ignore_index`` where
            nothing is scored.
        vocab_size: ``V``.
        num_items_in_batch (int | torch.Tensor | None): the number of scored tokens of the
            whole accumulated batch (a number or a 0-d tensor); None: ``'mean'`` over this
            call's tokens.
        ignore_index: the label that is not scored.
        shift_labels (torch.Tensor | None): ``(B, T)`` labels already shifted (``labels``
            is then not used for scoring), as ``ForCausalLMLoss`` takes them.

    Returns:
        A 0-d float32 tensor whatever the model's dtype (Hugging Face's loss upcasts the
            logits).

    Given real logits it is ``ForCausalLMLoss``, that is ``F.cross_entropy`` of the shifted
    positions:

    >>> import torch
    >>> import torch.nn.functional as F
    >>> logits = torch.randn(1, 4, 5, generator=torch.Generator().manual_seed(0))
    >>> labels = torch.tensor([[3, 1, -100, 4]])
    >>> causal_lm_loss(logits, labels, vocab_size=5)
    tensor(2.1989)
    >>> F.cross_entropy(logits[0, :-1], labels[0, 1:])  # position t scored on labels[t + 1]
    tensor(2.1989)
    >>> causal_lm_loss(logits, labels, vocab_size=5, num_items_in_batch=4)  # the sum / 4
    tensor(1.0994)
    """
    if not isinstance(logits, _LogitsStandIn):
        return ForCausalLMLoss(logits, labels, vocab_size, num_items_in_batch=num_items_in_batch,
                               ignore_index=ignore_index, shift_labels=shift_labels, **kwargs)
    return logits._capture.loss(logits._transform, labels, vocab_size, num_items_in_batch,
                                ignore_index, shift_labels)

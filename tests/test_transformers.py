"""crossent.transformers: a patched Hugging Face causal LM gives the unpatched model's loss and
gradients, inside Trainer and generate too, without materialising its logits.

Every model is tiny and built from a config with random weights (nothing is downloaded):
vocabulary 151 (not a power of two), hidden 32, one layer.  ``initializer_range=0.2`` makes
the logits of order 1, so that softcapping and logit scales change the loss measurably (with
the default 0.02 a forgotten softcap of 2 would change it by less than the float32 tolerance).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import runpy
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import crossent.transformers as ct  # noqa: E402
from crossent.transformers import UnsupportedModelError, patch, unpatch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
V = 151
SEQ = 11

_DECODER = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                initializer_range=0.2, pad_token_id=0, bos_token_id=1, eos_token_id=2)

#: architecture -> (config class, model class, config arguments).  What each one adds:
ARCHS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", _DECODER),
    "mistral": ("MistralConfig", "MistralForCausalLM", _DECODER),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", _DECODER),  # attention biases
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {**_DECODER, "head_dim": 8}),
    # final-logit softcapping c * tanh(z / c); tied input and output embeddings
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
               {**_DECODER, "head_dim": 8, "final_logit_softcapping": 2.0}),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM",
                    {**_DECODER, "head_dim": 8, "final_logit_softcapping": 2.0}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", _DECODER),
    # tied embeddings: lm_head.weight is transformer.wte.weight
    "gpt2": ("GPT2Config", "GPT2LMHeadModel",
             dict(vocab_size=V, n_embd=32, n_layer=1, n_head=4, n_positions=64,
                  initializer_range=0.2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)),
    "cohere": ("CohereConfig", "CohereForCausalLM", {**_DECODER, "logit_scale": 0.5}),  # z * s
    "granite": ("GraniteConfig", "GraniteForCausalLM",
                {**_DECODER, "logits_scaling": 0.25}),  # z / s
    # the model adds its router's auxiliary loss to ours
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                {**_DECODER, "num_local_experts": 4, "num_experts_per_tok": 2,
                 "output_router_logits": True, "router_aux_loss_coef": 0.1}),
}


def build(arch: str, dtype=torch.float32, seed: int = 0):
    config_name, model_name, kwargs = ARCHS[arch]
    config = getattr(transformers, config_name)(**kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).to(dtype)
    model.train()  # dropout is 0 in every config above; train mode is what Trainer uses
    return model


def batch(batch_size: int = 3, seq: int = SEQ, seed: int = 1):
    """Token ids, a left-padded and a right-padded row, labels with -100 on padding and a
    prompt."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (batch_size, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    if batch_size > 2:
        mask[2, -4:] = 0  # right padding
    ids = ids.masked_fill(mask == 0, 0)
    labels = ids.masked_fill(mask == 0, -100)
    labels[0, :4] = -100  # a prompt that is not trained on
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def loss_and_grads(model, **inputs):
    model.zero_grad(set_to_none=True)
    out = model(**inputs)
    loss = out["loss"] if isinstance(out, dict) else out[0]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def first_keys(cache):
    """The first layer's cached keys, if there is a cache (``cache`` from transformers 5,
    ``past_key_values`` before)."""
    return None if cache is None else cache.layers[0].keys


def cache_of(out):
    names = {f.name for f in dataclasses.fields(out)}
    return out.cache if "cache" in names else out.past_key_values


def assert_same_or_none(ours, theirs):
    assert (ours is None) == (theirs is None)
    if theirs is not None:
        torch.testing.assert_close(ours, theirs)


def assert_same_grads(ours: dict, theirs: dict, rtol=1e-5, atol=1e-6):
    assert ours.keys() == theirs.keys()
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=rtol, atol=atol,
                                   msg=lambda m, name=name: f"gradient of {name}: {m}")


def within_torch_error(ours, same_dtype, reference, k: float, eps: float, what: str):
    """DESIGN.md's tolerance rule: ``max|ours - fp64| <= k * max|hf_same_dtype - fp64| + eps``
    (the same rule as tests/torch/conftest.py)."""
    ours, same_dtype, reference = ours.double(), same_dtype.double(), reference.double()
    our_err = (ours - reference).abs().max().item()
    their_err = (same_dtype - reference).abs().max().item()
    assert our_err <= k * their_err + eps, (
        f"{what}: crossent's worst error {our_err:.3g} exceeds {k} x the unpatched model's "
        f"{their_err:.3g} + {eps}")


# ------------------------------------------------------------------------------------------------
# loss and gradients, float32


@pytest.mark.parametrize("arch", ARCHS)
def test_float32_loss_and_every_gradient_equal_the_unpatched_model(arch):
    model = build(arch)
    inputs = dict(batch(), output_hidden_states=True)
    ref, ref_grads = loss_and_grads(model, **inputs)
    patch(model, chunk_size=7)  # several chunks, the last one short
    out, grads = loss_and_grads(model, **inputs)
    assert type(out) is type(ref)
    assert out.logits is None and ref.logits.shape == (3, SEQ, V)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-6, atol=1e-6)
    assert_same_grads(grads, ref_grads)
    if arch == "gpt2":  # the tied weight got both its gradients, as one tensor
        assert model.lm_head.weight is model.transformer.wte.weight
    if arch == "mixtral":  # the model still added its router loss to ours
        assert out.aux_loss is not None
        torch.testing.assert_close(out.aux_loss, ref.aux_loss)
    # what else the output carries is the model's own
    assert_same_or_none(first_keys(cache_of(out)), first_keys(cache_of(ref)))
    assert len(out.hidden_states) == len(ref.hidden_states) == 2
    torch.testing.assert_close(out.hidden_states[-1], ref.hidden_states[-1])


@pytest.mark.parametrize("arch", ["cohere", "gemma2"])
def test_an_output_layer_with_a_bias_under_a_logit_scale_or_softcap(arch):
    """``s (h W^T + b)``: the scale (Cohere) reaches the bias too, and a softcap (Gemma 2)
    caps the biased logits."""
    model = build(arch)
    head = model.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.copy_(torch.randn(head.out_features, generator=torch.Generator()
                                      .manual_seed(3)))
    model.lm_head = biased
    inputs = batch()
    ref, ref_grads = loss_and_grads(model, **inputs)
    patch(model)
    out, grads = loss_and_grads(model, **inputs)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-6, atol=1e-6)
    assert_same_grads(grads, ref_grads)


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_num_items_in_batch_logits_to_keep_shift_labels_and_tuples(arch):
    model = build(arch)
    inputs = batch()
    twin = copy.deepcopy(model)
    patch(model, chunk_size=5)
    labels = inputs["labels"]
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    cases = {
        # Trainer's gradient accumulation: 'sum' over the tokens / the tokens of all micro-batches
        "num_items tensor": dict(inputs, num_items_in_batch=torch.tensor(37)),
        "num_items int": dict(inputs, num_items_in_batch=23),
        # a micro-batch with nothing to learn: loss 0 and zero gradients, not NaN
        "num_items, all ignored": dict(inputs, labels=torch.full_like(labels, -100),
                                       num_items_in_batch=torch.tensor(5)),
        # the kept positions' labels, shifted inside them
        "logits_to_keep int": dict(inputs, logits_to_keep=6, labels=labels[:, -6:]),
        "logits_to_keep positions": dict(inputs, logits_to_keep=torch.tensor([0, 4, 5, 9]),
                                         labels=labels[:, [0, 4, 5, 9]]),
        "shift_labels": dict(inputs, shift_labels=shifted),
        "ignore_index": dict(inputs, labels=labels.masked_fill(labels == -100, 7),
                             ignore_index=7),
        "return_dict=False": dict(inputs, return_dict=False),
    }
    for case, kwargs in cases.items():
        ref, ref_grads = loss_and_grads(twin, **kwargs)
        out, grads = loss_and_grads(model, **kwargs)
        if case == "return_dict=False":  # transformers drops None fields from tuples
            assert isinstance(out, tuple) and len(out) == len(ref) - 1
            assert all(a is not b for a, b in zip(out, ref))
            assert ref[1].shape[-1] == V  # the logits, which ours leaves out
            if len(ref) > 2:  # then the cache
                assert_same_or_none(first_keys(out[1]), first_keys(ref[2]))
            out, ref = out[0], ref[0]
        else:
            assert out.logits is None, case
            out, ref = out.loss, ref.loss
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6,
                                   msg=lambda m, c=case: f"{c}: {m}")
        assert_same_grads(grads, ref_grads)


def test_gradient_checkpointing():
    model = build("mistral", seed=3)
    enable = (getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.24
              or model.gradient_checkpointing_enable)
    enable()
    inputs = batch()
    ref, ref_grads = loss_and_grads(model, **inputs)
    out, grads = loss_and_grads(patch(model), **inputs)
    assert out.logits is None
    torch.testing.assert_close(out.loss, ref.loss)
    assert_same_grads(grads, ref_grads)


def test_under_torch_compile_a_forward_with_labels_runs_eagerly():
    model = build("llama")
    inputs = batch()
    ref, ref_grads = loss_and_grads(model, **inputs)
    compiled = torch.compile(patch(model), backend="eager")  # dynamo only: quick on CPU
    out, grads = loss_and_grads(compiled, **inputs)
    grads = {name.removeprefix("_orig_mod."): g for name, g in grads.items()}
    assert out.logits is None
    torch.testing.assert_close(out.loss, ref.loss)
    assert_same_grads(grads, ref_grads)
    logits = compiled(input_ids=inputs["input_ids"],  # without labels: compiled as usual
                      attention_mask=inputs["attention_mask"]).logits
    torch.testing.assert_close(logits, ref.logits)


def test_labels_passed_positionally():
    model = build("llama")
    inputs = batch()
    ref = model(**inputs).loss
    patch(model)
    # LlamaForCausalLM.forward(input_ids, attention_mask, position_ids, cache, inputs_embeds,
    #                          labels, ...)
    out = model(inputs["input_ids"], inputs["attention_mask"], None, None, None, inputs["labels"])
    assert out.logits is None
    torch.testing.assert_close(out.loss, ref)


def test_evaluation_without_grad_and_with_train_only():
    model = build("qwen2").eval()
    inputs = batch()
    with torch.no_grad():
        ref = model(**inputs)
        patch(model)
        out = model(**inputs)
        assert out.logits is None
        torch.testing.assert_close(out.loss, ref.loss)
        patch(model, train_only=True)  # eval mode: the logits, computed as if unpatched
        evaluated = model(**inputs)
        torch.testing.assert_close(evaluated.logits, ref.logits)
        torch.testing.assert_close(evaluated.loss, ref.loss)
    model.train()
    assert model(**inputs).logits is None


@pytest.mark.parametrize(("option", "value"), [("z_loss", 1e-2), ("label_smoothing", 0.1)])
def test_options_reach_linear_cross_entropy(option, value):
    model = build("gemma2")
    inputs = batch()
    logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits.double()
    target = torch.nn.functional.pad(inputs["labels"][:, 1:], (0, 1), value=-100).reshape(-1)
    rows = logits.reshape(-1, V)
    keep = target != -100
    if option == "z_loss":  # mean over the kept tokens of CE + z * lse**2
        lse = torch.logsumexp(rows[keep], dim=-1)
        expected = (lse - rows[keep, target[keep]] + value * lse**2).mean()
    else:
        expected = torch.nn.functional.cross_entropy(rows, target, label_smoothing=value)
    patch(model, **{option: value})
    torch.testing.assert_close(model(**inputs).loss.double(), expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# bfloat16: the tolerance rule against a float64 run


#: The float64 run is the reference, except where the model does not run in float64:
#: Gemma 2's eager attention gives NaN on fully padded rows in float64, Mixtral's grouped
#: matrix product has no float64 kernel.  float32 is 2**16 times finer than bfloat16.
REFERENCE_DTYPE = {"gemma2": torch.float32, "mixtral": torch.float32}

def _bfloat16_runs(arch, autocast=False):
    """(reference, unpatched bfloat16, patched bfloat16) outputs and gradients."""
    model = build(arch)
    inputs = batch()
    runs = [loss_and_grads(copy.deepcopy(model).to(REFERENCE_DTYPE.get(arch, torch.float64)),
                           **inputs)]
    for patched in (False, True):
        twin = copy.deepcopy(model)
        if not autocast:
            twin = twin.to(torch.bfloat16)
        if patched:
            patch(twin)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            runs.append(loss_and_grads(twin, **inputs))
    return runs


@pytest.mark.parametrize("arch", [*ARCHS, "llama under autocast"])
def test_bfloat16_gradients_within_the_unpatched_models_error(arch):
    autocast = arch.endswith("autocast")
    (_, ref_grads), (_, their_grads), (out, our_grads) = _bfloat16_runs(
        arch.split()[0], autocast=autocast)
    assert out.logits is None
    for name, ref in ref_grads.items():
        within_torch_error(our_grads[name], their_grads[name], ref, k=2.0,
                           eps=1e-3 * ref.abs().max().item(), what=f"gradient of {name}")


def test_bfloat16_loss_is_float32_within_the_unpatched_models_error():
    for arch in [*ARCHS, "llama under autocast"]:
        (reference, _), (theirs, _), (ours, _) = _bfloat16_runs(
            arch.split()[0], autocast=arch.endswith("autocast"))
        assert theirs.loss.dtype == torch.float32
        assert ours.loss.dtype == torch.float32, arch
        within_torch_error(ours.loss, theirs.loss, reference.loss, k=2.0, eps=1e-4,
                           what=f"{arch} loss")


# ------------------------------------------------------------------------------------------------
# Trainer, generate


class _Tokens(torch.utils.data.Dataset):
    """Rows with different numbers of trained tokens, so micro-batches weigh differently."""

    def __init__(self, n: int = 8):
        g = torch.Generator().manual_seed(5)
        self.rows = []
        for i in range(n):
            ids = torch.randint(3, V, (SEQ,), generator=g)
            labels = ids.clone()
            labels[: 1 + 2 * (i % 4)] = -100
            self.rows.append({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                              "labels": labels})

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def _train(model, tmp_path):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2,
        gradient_accumulation_steps=2, learning_rate=1e-2, logging_steps=1, report_to=[],
        save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0, data_seed=0,
        dataloader_num_workers=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Tokens())
    trainer.train()
    assert trainer.model_accepts_loss_kwargs  # so Trainer passed num_items_in_batch
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_trainer_with_gradient_accumulation_gives_the_unpatched_losses(tmp_path):
    theirs_model = build("llama")
    ours_model = patch(copy.deepcopy(theirs_model))
    calls = []
    original = ct._Capture.loss

    def spy(self, transform, labels, vocab_size, num_items_in_batch, *rest):
        calls.append(num_items_in_batch)
        return original(self, transform, labels, vocab_size, num_items_in_batch, *rest)

    theirs = _train(theirs_model, tmp_path / "theirs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ct._Capture, "loss", spy)
        ours = _train(ours_model, tmp_path / "ours")
    assert len(ours) == 3 and len(calls) == 6  # 3 steps x 2 micro-batches, all through crossent
    assert all(n is not None for n in calls)
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(theirs), rtol=1e-5, atol=1e-6)
    # after 3 AdamW steps of 1e-2 (Adam divides by sqrt of the squared gradients, so a 1e-7
    # difference in a gradient near 0 can move a weight by 1e-5 of a step)
    for (name, p), q in zip(ours_model.named_parameters(), theirs_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=2e-5, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_generate_gives_the_same_tokens(arch):
    model = build(arch).eval()
    prompt = batch(batch_size=2, seq=5, seed=3)
    kwargs = dict(input_ids=prompt["input_ids"], attention_mask=torch.ones_like(
        prompt["input_ids"]), max_new_tokens=6, do_sample=False, pad_token_id=0)
    theirs = model.generate(**kwargs)
    ours = patch(model).generate(**kwargs)
    assert ours.shape == (2, 11)
    assert torch.equal(ours, theirs)


# ------------------------------------------------------------------------------------------------
# patching: the instance only, twice is harmless, unpatch restores


def _hooks(module) -> int:
    return len(module._forward_pre_hooks) + len(module._forward_hooks)


def test_patch_is_per_instance_idempotent_and_unpatch_restores():
    model = build("llama")
    other = build("llama")
    inputs = batch()
    ref = model(**inputs)
    assert patch(model) is model and ct.is_patched(model) and not ct.is_patched(other)
    patch(model, z_loss=1e-3)
    patch(model)  # the options of the last call
    assert _hooks(model.lm_head) == 2 and _hooks(other.lm_head) == 0
    torch.testing.assert_close(model(**inputs).loss, ref.loss)
    assert other(**inputs).logits is not None  # the class is untouched
    assert type(model).forward is transformers.LlamaForCausalLM.forward
    assert unpatch(model) is model and not ct.is_patched(model)
    assert _hooks(model.lm_head) == 0
    assert not {"forward", "_loss_function", "_replicate_for_data_parallel"} & set(model.__dict__)
    restored = model(**inputs)
    torch.testing.assert_close(restored.logits, ref.logits)
    torch.testing.assert_close(restored.loss, ref.loss)
    assert unpatch(model) is model  # unpatching an unpatched model changes nothing


def test_unpatch_under_a_later_wrapper_leaves_a_pass_through():
    """accelerate wraps model.forward in place (autocast, fp32 outputs) after we patched."""
    model = patch(build("llama"))
    inputs = batch()
    inner = model.forward
    model.forward = lambda *a, **k: inner(*a, **k)
    unpatch(model)
    assert not ct.is_patched(model)
    out = model(**inputs)
    assert out.logits is not None
    patch(model)  # patched again through the same state
    assert model(**inputs).logits is None
    assert _hooks(model.lm_head) == 2


def test_data_parallel_replication_is_refused():
    """nn.DataParallel copies the instance's __dict__ (our forward, bound to the original) into
    its replicas: refused by name (replicate() itself needs CUDA devices)."""
    model = patch(build("llama"))
    with pytest.raises(UnsupportedModelError, match="LlamaForCausalLM .*DataParallel"):
        model._replicate_for_data_parallel()
    unpatch(model)
    assert model._replicate_for_data_parallel()._is_replica


def test_a_deep_copy_is_patched_on_its_own_parameters():
    model = patch(build("gemma2"))
    twin = copy.deepcopy(model)
    assert ct.is_patched(twin) and twin.lm_head is not model.lm_head
    inputs = batch()
    out, grads = loss_and_grads(twin, **inputs)
    assert out.logits is None
    assert all(p.grad is None for p in model.parameters())
    unpatch(twin)
    ref, ref_grads = loss_and_grads(twin, **inputs)
    torch.testing.assert_close(out.loss, ref.loss)
    assert_same_grads(grads, ref_grads)
    assert ct.is_patched(model)


def test_a_replaced_output_layer_is_followed():
    model = patch(build("qwen3"))
    model.resize_token_embeddings(V + 9)  # a new lm_head module
    inputs = batch()
    out = model(**inputs)
    assert out.logits is None
    unpatch(model)
    torch.testing.assert_close(out.loss, model(**inputs).loss)


def test_repeated_backward_with_an_upstream_gradient():
    """retain_graph and a loss scaled after the model (accelerate, Trainer): the gradients of
    two backward passes add up, as unpatched."""
    model = build("llama")
    inputs = dict(batch(), num_items_in_batch=torch.tensor(13))
    twin = patch(copy.deepcopy(model))
    for m in (model, twin):
        loss = 0.5 * m(**inputs).loss
        loss.backward(retain_graph=True)
        loss.backward()
    assert_same_grads({n: p.grad for n, p in twin.named_parameters()},
                      {n: p.grad for n, p in model.named_parameters()})


# ------------------------------------------------------------------------------------------------
# what cannot be patched says so


def test_options_are_checked():
    model = build("llama")
    with pytest.raises(ValueError, match="z_loss"):
        patch(model, z_loss=-1.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        patch(model, label_smoothing=1.5)
    with pytest.raises(ValueError, match="chunk_size"):
        patch(model, chunk_size=0)
    with pytest.raises(ValueError, match="impl"):
        patch(model, impl="gpu")
    with pytest.raises(TypeError, match="train_only"):
        patch(model, train_only="yes")
    assert not ct.is_patched(model)


def _tiny(config_name, model_name, **kwargs):
    torch.manual_seed(0)
    return getattr(transformers, model_name)(getattr(transformers, config_name)(**kwargs))


@pytest.mark.parametrize(("make", "reason"), [
    (lambda: torch.nn.Linear(3, 3), "PreTrainedModel, got Linear"),
    (lambda: _tiny("LlamaConfig", "LlamaModel", **_DECODER), "LlamaModel .*takes no labels"),
    (lambda: _tiny("LlamaConfig", "LlamaForSequenceClassification", **_DECODER),
     "LlamaForSequenceClassification .*no output embeddings"),
    (lambda: _tiny("T5Config", "T5ForConditionalGeneration", vocab_size=V, d_model=16,
                   d_kv=4, d_ff=32, num_layers=1, num_heads=2),
     "T5ForConditionalGeneration .*encoder-decoder"),
])
def test_an_unsupported_model_is_refused_by_name(make, reason):
    with pytest.raises(UnsupportedModelError, match=reason):
        patch(make())


def test_a_custom_loss_function_or_output_layer_is_refused():
    model = build("llama")
    model.loss_function = lambda logits, labels, vocab_size, **kw: logits.mean()
    with pytest.raises(UnsupportedModelError, match="LlamaForCausalLM .*loss_function .*lambda"):
        patch(model)

    class Scaled(torch.nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    model = build("llama")
    head = Scaled(32, V, bias=False)
    model.lm_head = head
    with pytest.raises(UnsupportedModelError, match="LlamaForCausalLM .*Scaled, not a plain"):
        patch(model)


class _AddsToLogits(transformers.LlamaForCausalLM):
    def forward(self, input_ids=None, labels=None, **kwargs):
        hidden = self.model(input_ids=input_ids).last_hidden_state
        logits = self.lm_head(hidden) + 1.0
        loss = self.loss_function(logits, labels, self.config.vocab_size)
        return transformers.modeling_outputs.CausalLMOutputWithPast(loss=loss, logits=logits)


class _OwnLinear(transformers.LlamaForCausalLM):
    def forward(self, input_ids=None, labels=None, **kwargs):
        hidden = self.model(input_ids=input_ids).last_hidden_state
        logits = torch.nn.functional.linear(hidden, self.lm_head.weight)
        loss = self.loss_function(logits, labels, self.config.vocab_size)
        return transformers.modeling_outputs.CausalLMOutputWithPast(loss=loss, logits=logits)


class _OwnLoss(transformers.LlamaForCausalLM):
    def forward(self, input_ids=None, labels=None, **kwargs):
        logits = self.lm_head(self.model(input_ids=input_ids).last_hidden_state)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V),
                                                 labels[:, 1:].reshape(-1))
        return transformers.modeling_outputs.CausalLMOutputWithPast(loss=loss, logits=logits)


@pytest.mark.parametrize(("cls", "reason"), [
    (_AddsToLogits, "_AddsToLogits applies add to its logits"),
    (_OwnLinear, "_OwnLinear's forward did not call its output embeddings"),
    (_OwnLoss, "_OwnLoss applies __getitem__ to its logits"),
])
def test_a_forward_that_does_not_follow_the_pattern_fails_loudly(cls, reason):
    torch.manual_seed(0)
    model = patch(cls(transformers.LlamaConfig(**_DECODER)))
    inputs = batch()
    with pytest.raises(UnsupportedModelError, match=reason):
        model(input_ids=inputs["input_ids"], labels=inputs["labels"])
    assert ct._CAPTURE.get() is None  # nothing is left in capture mode
    unpatch(model)
    assert model(input_ids=inputs["input_ids"], labels=inputs["labels"]).logits is not None


def test_logits_to_keep_with_the_full_labels_is_refused_as_unpatched():
    model = patch(build("llama"))
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(**batch(), logits_to_keep=4)


def test_without_transformers_the_import_names_the_extra(monkeypatch):
    monkeypatch.delitem(sys.modules, "crossent.transformers")
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now fails
    with pytest.raises(ImportError, match=r"pip install 'crossent\[transformers\]'"):
        import crossent.transformers  # noqa: F401


# ------------------------------------------------------------------------------------------------
# the example script and the documentation's examples


def test_the_fine_tuning_example_runs(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["finetune_transformers.py", "--steps", "3"])
    runpy.run_path(str(ROOT / "examples" / "finetune_transformers.py"), run_name="__main__")
    out = capsys.readouterr().out
    losses = [float(line.split()[-1]) for line in out.splitlines() if line.startswith("step")]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]


def test_the_documentation_examples_run():
    import doctest

    page = ROOT / "docs" / "use" / "transformers.md"
    result = doctest.testfile(str(page), module_relative=False,
                              optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.attempted >= 5 and result.failed == 0

"""Benchmark: training a Hugging Face Llama-style model with ``crossent.transformers.patch``
against the unpatched model and Cut Cross-Entropy's ``cce_patch``.

A ``LlamaForCausalLM`` built from a config with random weights (nothing downloaded):
``--layers`` decoder layers of width ``--hidden``, vocabulary ``--vocab`` (Llama 3's 128256),
untied output layer, float32 on CPU.  One training step is ``model(input_ids, labels=input_ids)``,
``loss.backward()``, ``AdamW.step()``, ``zero_grad(set_to_none=True)`` on a ``--batch`` x
``--seq`` batch of random tokens.  Providers, each in its own fresh process (``_harness.py``) so
peak memory is measured cleanly:

* ``transformers``  the unpatched model: ``lm_head`` makes the ``(batch, seq, vocab)`` logits,
                    ``ForCausalLMLoss`` upcasts them and calls ``F.cross_entropy``
* ``crossent``      ``crossent.transformers.patch(model)``: the loss from the hidden states and
                    ``lm_head.weight`` by ``crossent.torch.linear_cross_entropy``, no logits
* ``cce``           ``cut_cross_entropy.transformers.cce_patch(model, impl="torch_compile")``
                    (its CPU implementation), where the installed cut-cross-entropy has it and
                    it runs; otherwise a ``skipped`` row with the reason

Step time is the median of ``--repeats`` steps after one warm-up step (which also creates the
optimizer's state).  Peak extra memory is the growth of the process's resident set during one
step (gradients and activations included, the weights and optimizer state not); the ``loss``
column is the first timed step's loss, the same for every provider up to rounding.

Run: ``python benchmarks/bench_transformers.py`` (a few minutes on 2 cores: the output layer's
matrix products dominate); ``--quick`` for a small vocabulary and sequence.
Results: ``benchmarks/results/bench_transformers.csv``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import _harness as h

HERE = Path(__file__).resolve().parent
PROVIDERS = ("transformers", "crossent", "cce")
#: layers, hidden, vocab, batch, seq
DEFAULT = (2, 256, 128256, 2, 512)
QUICK = (1, 128, 32000, 2, 128)


def _cce_patch():
    """Cut Cross-Entropy's ``cce_patch``, or the reason it is not there."""
    try:
        from importlib.metadata import version

        installed = version("cut-cross-entropy")
    except Exception:  # PackageNotFoundError
        return None, "cut-cross-entropy is not installed"
    try:
        from cut_cross_entropy.transformers import cce_patch
    except ImportError as exc:
        return None, (f"cut-cross-entropy {installed} has no cce_patch ({exc.name} is "
                      "missing: its PyPI release ships the op only)")
    return cce_patch, None


def worker(provider: str, layers: int, hidden: int, vocab: int, batch: int, seq: int,
           repeats: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                         num_key_value_heads=max(1, hidden // 128),
                         max_position_embeddings=seq, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).train()
    if provider == "crossent":
        import crossent.transformers

        crossent.transformers.patch(model)
    elif provider == "cce":
        cce_patch, reason = _cce_patch()
        if cce_patch is None:
            return {"skipped": reason}
        try:
            model = cce_patch(model, impl="torch_compile")
        except Exception as exc:  # an unsupported model or implementation on this machine
            return {"skipped": f"cce_patch failed: {type(exc).__name__}: {exc}"}
    elif provider != "transformers":
        raise SystemExit(f"unknown provider {provider!r}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))

    def call():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    losses = []

    def step():
        losses.append(call().item())

    result = h.measure(step, repeats)
    result["loss"] = losses[1]  # the first timed step
    result["threads"] = torch.get_num_threads()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=None, help=f"default {DEFAULT[0]}")
    p.add_argument("--hidden", type=int, default=None, help=f"default {DEFAULT[1]}")
    p.add_argument("--vocab", type=int, default=None, help=f"default {DEFAULT[2]}")
    p.add_argument("--batch", type=int, default=None, help=f"default {DEFAULT[3]}")
    p.add_argument("--seq", type=int, default=None, help=f"default {DEFAULT[4]}")
    p.add_argument("--providers", default=",".join(PROVIDERS))
    p.add_argument("--repeats", type=int, default=3, help="timed steps")
    p.add_argument("--quick", action="store_true",
                   help=f"layers, hidden, vocab, batch, seq = {QUICK} unless given")
    p.add_argument("--csv", type=Path, default=HERE / "results" / "bench_transformers.csv")
    p.add_argument("--worker", nargs=7, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        import json

        provider, *numbers = args.worker
        print(json.dumps(worker(provider, *(int(x) for x in numbers))))
        return 0

    base = QUICK if args.quick else DEFAULT
    layers, hidden, vocab, batch, seq = (given if given is not None else default for given,
                                         default in zip((args.layers, args.hidden, args.vocab,
                                                         args.batch, args.seq), base))
    providers = args.providers.split(",")
    info = h.machine()
    vers = h.versions(("crossent", "torch", "transformers", "cut-cross-entropy"))
    date = h.now()
    tokens = batch * seq
    print(f"crossent {vers['crossent']} | torch {vers['torch']} | transformers "
          f"{vers['transformers']} | cut-cross-entropy {vers['cut-cross-entropy']} | Python "
          f"{vers['python']}")
    print(f"{info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB | {date}")
    print(f"LlamaForCausalLM, {layers} layers, hidden {hidden}, vocabulary {vocab}, float32; "
          f"batch {batch} x {seq} tokens (the logits: {tokens * vocab * 4 / h.MiB:.0f} MiB in "
          f"float32); AdamW step; median of {args.repeats}")
    print()
    results = {name: h.run_worker(Path(__file__), [name, str(layers), str(hidden), str(vocab),
                                                   str(batch), str(seq), str(args.repeats)])
               for name in providers}
    base_run = results.get("transformers", {})
    records, table = [], []
    common = {"date": date, "cpu": info["cpu"], "cores": info["cores"],
              "crossent": vers["crossent"], "torch": vers["torch"],
              "transformers": vers["transformers"], "layers": layers, "hidden": hidden,
              "vocab": vocab, "batch": batch, "seq": seq, "dtype": "float32"}
    for name in providers:
        r = results[name]
        if "error" in r or "skipped" in r:
            status = "failed" if "error" in r else "skipped"
            table.append([name, status, "", "", "", "", r.get("error") or r["skipped"]])
            records.append({**common, "provider": name, status: r.get("error") or r["skipped"]})
            continue
        med = statistics.median(r["times"])
        time_ratio = (med / statistics.median(base_run["times"])
                      if "times" in base_run else None)
        memory_ratio = (r["extra_bytes"] / base_run["extra_bytes"]
                        if base_run.get("extra_bytes") else None)
        records.append({
            **common, "provider": name, "threads": r["threads"], "repeats": args.repeats,
            "median_s": round(med, 3), "min_s": round(min(r["times"]), 3),
            "peak_extra_mib": round(r["extra_bytes"] / h.MiB, 1),
            "memory_method": r["memory_method"], "loss": round(r["loss"], 6),
            "time_vs_transformers": round(time_ratio, 3) if time_ratio is not None else "",
            "memory_vs_transformers": round(memory_ratio, 3) if memory_ratio is not None else "",
        })
        table.append([name, f"{med:.2f}", f"{time_ratio:.2f}x" if time_ratio else "-",
                      f"{r['extra_bytes'] / h.MiB:.0f}",
                      f"{memory_ratio:.2f}" if memory_ratio else "-", f"{r['loss']:.4f}", ""])
    h.print_table(["provider", "step s", "time vs transformers", "peak extra MiB",
                   "memory vs transformers", "loss", "note"], table, right={1, 2, 3, 4, 5})
    h.write_csv(args.csv, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())

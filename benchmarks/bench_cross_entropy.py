"""Benchmark: ``crossent.torch.cross_entropy`` against PyTorch's CPU cross-entropy.

Forward + backward (``loss.backward()``), float32 logits, int64 class indices, reduction
``'mean'``, on CPU; ``N x C`` rows, and a K-dimensional ``N x C x d1 x d2`` input (a
segmentation map: the classes on axis 1), which crossent computes where it lies.
Providers, each in its own fresh process (see ``_harness.py``):

* ``crossent``          ``crossent.torch.cross_entropy(x, y)``: the gradient is computed in the
                        forward pass by the fused NumPy pass and kept; backward returns it.
* ``crossent-inplace``  the same with ``inplace_backward=True``: the gradient overwrites the
                        logits (each call gets fresh logits, made outside the clock, as a
                        model's output: a non-leaf that nothing else uses).
* ``torch``             ``F.cross_entropy(x, y)`` then ``.backward()``.
* ``torch.compile``     ``torch.compile(F.cross_entropy)`` (Inductor), warmed up first.

Time is the median of ``--repeats`` calls; each call produces a new gradient, as a training
step does, so page-faulting it in is part of the time.  GB/s counts the least traffic the
operation needs, reading the logits once and writing the gradient once (2 N C 4 bytes), and
is also given as a fraction of this machine's measured copy bandwidth (``np.copyto``).
Peak extra memory includes the returned gradient (one ``N x C`` tensor, 1.00 x the input).

Run: ``python benchmarks/bench_cross_entropy.py`` (a few minutes on 2 cores; ``--quick`` for
small shapes).  Writes ``benchmarks/results/bench_cross_entropy.csv``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import _harness as h

HERE = Path(__file__).resolve().parent
DEFAULT_SHAPES = "4096x32000,1024x128256,8192x50257,16x21x256x256"
QUICK_SHAPES = "512x32000,128x128256,4x21x64x64"
PROVIDERS = ("crossent", "crossent-inplace", "torch", "torch.compile")


def worker(provider: str, shape: tuple[int, ...], repeats: int) -> dict:
    import torch
    import torch.nn.functional as F

    import crossent.torch as ct

    gen = torch.Generator().manual_seed(0)
    base = torch.randn(shape, generator=gen) * 2
    y = torch.randint(0, shape[1], shape[:1] + shape[2:], generator=gen)
    state = {}

    if provider == "crossent-inplace":
        def prepare():
            state.clear()  # free the last step's logits (and gradient) first
            state["leaf"] = base.clone().requires_grad_()
            # a model's output: clone's backward passes the gradient through untouched
            state["logits"] = state["leaf"].clone()

        def call():
            loss = ct.cross_entropy(state.pop("logits"), y, inplace_backward=True)
            loss.backward()
            return state["leaf"].grad
    else:
        x = base.requires_grad_()

        def prepare():
            x.grad = None  # the last gradient is freed before the memory baseline

        if provider == "crossent":
            fn = ct.cross_entropy
        elif provider == "torch":
            fn = F.cross_entropy
        elif provider == "torch.compile":
            fn = torch.compile(F.cross_entropy)
        else:
            raise SystemExit(f"unknown provider {provider!r}")

        def call():
            loss = fn(x, y)
            loss.backward()
            return x.grad

    result = h.measure(call, repeats, prepare)
    result["threads"] = torch.get_num_threads()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default=None,
                   help=f"comma-separated NxC or NxCxd1x... (default {DEFAULT_SHAPES})")
    p.add_argument("--providers", default=",".join(PROVIDERS))
    p.add_argument("--repeats", type=int, default=None, help="timed calls (default 5)")
    p.add_argument("--quick", action="store_true", help="small shapes, 3 repeats")
    p.add_argument("--csv", type=Path, default=HERE / "results" / "bench_cross_entropy.csv")
    p.add_argument("--worker", nargs=3, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        import json

        provider, shape, repeats = args.worker
        print(json.dumps(worker(provider, _shape(shape), int(repeats))))
        return 0

    shapes = [_shape(s) for s in
              (args.shapes or (QUICK_SHAPES if args.quick else DEFAULT_SHAPES)).split(",")]
    repeats = args.repeats or (3 if args.quick else 5)
    providers = args.providers.split(",")
    info, vers, date = h.machine(), h.versions(), h.now()
    copy = h.copy_bandwidth_gbs()
    print(f"crossent {vers['crossent']} | torch {vers['torch']} | numpy {vers['numpy']} | "
          f"Python {vers['python']}")
    print(f"{info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB | {date}")
    print(f"float32, forward + backward, reduction='mean'; median of {repeats}; "
          f"copy bandwidth {copy:.1f} GB/s")
    print()
    records, table = [], []
    for shape in shapes:
        label = " x ".join(map(str, shape))
        n, c = shape[0], math.prod(shape) // shape[0]  # CSV: N and the elements per row
        results = {name: h.run_worker(Path(__file__), [name, "x".join(map(str, shape)),
                                                       str(repeats)])
                   for name in providers}
        moved = 2 * n * c * 4
        base = results.get("torch", {}).get("times")
        compiled = results.get("torch.compile", {}).get("times")
        for name in providers:
            r = results[name]
            if "error" in r:
                table.append([label, name, "failed", "", "", "", "", "", r["error"][:60]])
                records.append({"date": date, "shape": label, "N": n, "C": c,
                                "provider": name, "error": r["error"]})
                continue
            med = statistics.median(r["times"])
            gbs = moved / med / 1e9
            rec = {
                "date": date, "cpu": info["cpu"], "cores": info["cores"],
                "crossent": vers["crossent"], "torch": vers["torch"], "shape": label,
                "N": n, "C": c,
                "dtype": "float32", "mode": "fwd+bwd", "provider": name,
                "threads": r["threads"], "repeats": repeats,
                "median_ms": round(med * 1e3, 1), "min_ms": round(min(r["times"]) * 1e3, 1),
                "gb_per_s": round(gbs, 2), "copy_gb_per_s": round(copy, 1),
                "fraction_of_copy": round(gbs / copy, 3),
                "peak_extra_mib": round(r["extra_bytes"] / h.MiB, 1),
                "peak_extra_over_input": round(r["extra_bytes"] / (n * c * 4), 2),
                "memory_method": r["memory_method"],
                "speedup_vs_torch": round(statistics.median(base) / med, 2) if base else "",
                "speedup_vs_compile": (round(statistics.median(compiled) / med, 2)
                                       if compiled else ""),
            }
            records.append(rec)
            table.append([
                label, name, f"{rec['median_ms']:.0f}", f"{gbs:.1f}",
                f"{100 * gbs / copy:.0f}%",
                f"{rec['speedup_vs_torch']:.2f}x" if base else "-",
                f"{rec['speedup_vs_compile']:.2f}x" if compiled else "-",
                f"{rec['peak_extra_mib']:.0f}", f"{rec['peak_extra_over_input']:.2f}",
            ])
    h.print_table(["shape", "provider", "median ms", "GB/s", "of copy", "vs torch",
                   "vs compile", "peak extra MiB", "extra / input"], table,
                  right={2, 3, 4, 5, 6, 7, 8})
    h.write_csv(args.csv, records)
    return 0


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split("x"))


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: ``crossent.torch.linear_cross_entropy`` against the naive op and PyTorch's own.

Forward + backward on CPU, float32 (``--dtype``), hidden states ``h: (N, D)``, classifier
``W: (V, D)`` (both requiring grad), int64 targets, reduction ``'mean'``.  Providers, each in
its own fresh process (see ``_harness.py``) so peak memory is measured cleanly:

* ``crossent``         ``crossent.torch.linear_cross_entropy(h, W, y)``: ``schedule="auto"``,
                       whose pick is in the ``schedule`` column
* ``crossent[rows]``   the same with ``schedule="rows"`` (row chunks, three matrix products)
* ``crossent[vocab]``  the same with ``schedule="vocab"`` (vocabulary blocks, four products,
                       a float32 ``dW`` accumulator of one block)
* ``naive``            ``F.cross_entropy(h @ W.T, y)``: the full ``N x V`` logits
* ``torch-chunked``    ``F.linear_cross_entropy(h, W, y, options=LinearCrossEntropyOptions())``,
                       PyTorch 2.13's batch-chunked op

A forced schedule that ``auto`` picks anyway for a shape is not run twice: its row is the
``crossent`` row (``schedule`` column), so both schedules appear once per shape.

Time is the median of ``--repeats`` steps after one warm-up.  Peak extra memory is the growth
of the process's resident set during one step (``_harness.py``), gradients included; the
``vs naive`` memory column is that growth divided by the naive op's.

``--sweep`` also measures peak memory against N at fixed D and V (one step per point) and
writes ``benchmarks/results/linear_ce_memory.csv``; ``plot_linear_ce_memory.py`` draws it.

Run: ``python benchmarks/bench_linear_cross_entropy.py [--sweep]`` (15-25 minutes on 2
cores: the matrix products dominate); ``--quick`` for small shapes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import _harness as h

HERE = Path(__file__).resolve().parent
DEFAULT_SHAPES = "4096x1024x32000,2048x2048x128256"
QUICK_SHAPES = "512x256x8000"
SWEEP_N = "256,512,1024,2048,4096"
SWEEP_DV = "1024x32000"
PROVIDERS = ("crossent", "crossent[rows]", "crossent[vocab]", "naive", "torch-chunked")
SCHEDULED = {"crossent[rows]": "rows", "crossent[vocab]": "vocab"}
DTYPES = ("float32", "bfloat16")


def auto_schedule(n: int, d: int, v: int, dtype: str) -> str:
    """The schedule ``schedule="auto"`` takes for this step (the op's own rule)."""
    import torch

    import crossent.torch as ct

    return ct.linear_cross_entropy_memory(n, d, v, dtype=getattr(torch, dtype)).chosen


def worker(provider: str, n: int, d: int, v: int, repeats: int, dtype: str = "float32"
           ) -> dict:
    import torch
    import torch.nn.functional as F

    import crossent.torch as ct

    gen = torch.Generator().manual_seed(0)
    dt = getattr(torch, dtype)
    hidden = torch.randn(n, d, generator=gen).to(dt).requires_grad_()
    weight = (torch.randn(v, d, generator=gen) / d**0.5).to(dt).requires_grad_()
    y = torch.randint(0, v, (n,), generator=gen)
    if provider == "crossent" or provider in SCHEDULED:
        schedule = SCHEDULED.get(provider, "auto")

        def loss_fn():
            return ct.linear_cross_entropy(hidden, weight, y, schedule=schedule)
    elif provider == "naive":
        def loss_fn():
            return F.cross_entropy(hidden @ weight.T, y)
    elif provider == "torch-chunked":
        options = torch.nn.LinearCrossEntropyOptions()

        def loss_fn():
            return F.linear_cross_entropy(hidden, weight, y, options=options)
    else:
        raise SystemExit(f"unknown provider {provider!r}")

    def prepare():
        hidden.grad = None  # free the last step's gradients before the memory baseline
        weight.grad = None

    def call():
        loss = loss_fn()
        loss.backward()
        return loss.detach()

    result = h.measure(call, repeats, prepare)
    result["threads"] = torch.get_num_threads()
    return result


def _shapes(text: str) -> list[tuple[int, int, int]]:
    return [tuple(int(x) for x in item.split("x")) for item in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default=None, help=f"NxDxV list (default {DEFAULT_SHAPES})")
    p.add_argument("--providers", default=",".join(PROVIDERS))
    p.add_argument("--repeats", type=int, default=None, help="timed steps (default 3)")
    p.add_argument("--dtype", default="float32", help=f"one of {', '.join(DTYPES)}")
    p.add_argument("--quick", action="store_true", help="a small shape only")
    p.add_argument("--sweep", action="store_true", help="also peak memory against N")
    p.add_argument("--sweep-n", default=SWEEP_N)
    p.add_argument("--sweep-dv", default=SWEEP_DV)
    p.add_argument("--csv", type=Path, default=HERE / "results" / "bench_linear_cross_entropy.csv")
    p.add_argument("--sweep-csv", type=Path, default=HERE / "results" / "linear_ce_memory.csv")
    p.add_argument("--worker", nargs=6, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.dtype not in DTYPES:
        p.error(f"--dtype must be one of {', '.join(DTYPES)}, got {args.dtype!r}")
    if args.worker:
        import json

        provider, *numbers, dtype = args.worker
        print(json.dumps(worker(provider, *(int(x) for x in numbers), dtype)))
        return 0

    shapes = _shapes(args.shapes or (QUICK_SHAPES if args.quick else DEFAULT_SHAPES))
    repeats = args.repeats or 3
    providers = args.providers.split(",")
    info, vers, date = h.machine(), h.versions(("crossent", "torch")), h.now()
    print(f"crossent {vers['crossent']} | torch {vers['torch']} | Python {vers['python']}")
    print(f"{info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB | {date}")
    print(f"{args.dtype}, forward + backward (input and weight gradients), reduction='mean'; "
          f"median of {repeats}")
    print()
    records, table = [], []
    for n, d, v in shapes:
        auto = auto_schedule(n, d, v, args.dtype)
        print(f"{n} x {d} x {v}: schedule='auto' picks {auto!r}", flush=True)
        # a forced schedule equal to auto's pick is the `crossent` row: not run twice
        run = [name for name in providers
               if not ("crossent" in providers and SCHEDULED.get(name) == auto)]
        results = {name: h.run_worker(Path(__file__), [name, str(n), str(d), str(v),
                                                       str(repeats), args.dtype])
                   for name in run}
        naive = results.get("naive", {})
        chunked = results.get("torch-chunked", {})
        for name in run:
            r = results[name]
            if "error" in r:
                table.append([f"{n} x {d} x {v}", name, "failed", "", "", "", ""])
                records.append({"date": date, "N": n, "D": d, "V": v, "provider": name,
                                "error": r["error"]})
                continue
            med = statistics.median(r["times"])
            rec = {
                "date": date, "cpu": info["cpu"], "cores": info["cores"],
                "crossent": vers["crossent"], "torch": vers["torch"], "N": n, "D": d, "V": v,
                "dtype": args.dtype, "provider": name, "threads": r["threads"],
                "repeats": repeats, "median_s": round(med, 3), "min_s": round(min(r["times"]), 3),
                "peak_extra_mib": round(r["extra_bytes"] / h.MiB, 1),
                "memory_method": r["memory_method"],
                "time_vs_naive": (round(med / statistics.median(naive["times"]), 3)
                                  if "times" in naive else ""),
                "time_vs_torch_chunked": (round(med / statistics.median(chunked["times"]), 3)
                                          if "times" in chunked else ""),
                "memory_vs_naive": (round(r["extra_bytes"] / naive["extra_bytes"], 3)
                                    if naive.get("extra_bytes") else ""),
                "schedule": SCHEDULED.get(name, auto if name == "crossent" else ""),
            }
            records.append(rec)
            label = f"crossent (auto: {auto})" if name == "crossent" else name
            table.append([
                f"{n} x {d} x {v}", label, f"{med:.2f}",
                f"{rec['time_vs_naive']:.2f}x" if rec["time_vs_naive"] != "" else "-",
                (f"{rec['time_vs_torch_chunked']:.2f}x"
                 if rec["time_vs_torch_chunked"] != "" else "-"),
                f"{rec['peak_extra_mib']:.0f}",
                f"{rec['memory_vs_naive']:.2f}" if rec["memory_vs_naive"] != "" else "-",
            ])
    h.print_table(["N x D x V", "provider", "median s", "time vs naive",
                   "time vs torch-chunked", "peak extra MiB", "memory vs naive"], table,
                  right={2, 3, 4, 5, 6})
    h.write_csv(args.csv, records)

    if args.sweep:
        d, v = (int(x) for x in args.sweep_dv.split("x"))
        sweep = []
        print(f"\npeak extra memory (MiB) of one step against N, D={d}, V={v}")
        rows = []
        for n in (int(x) for x in args.sweep_n.split(",")):
            line = [str(n)]
            auto = auto_schedule(n, d, v, args.dtype)
            for name in providers:
                if "crossent" in providers and SCHEDULED.get(name) == auto:
                    line.append("= crossent")
                    continue
                r = h.run_worker(Path(__file__), [name, str(n), str(d), str(v), "1",
                                                  args.dtype])
                mib = round(r["extra_bytes"] / h.MiB, 1) if "extra_bytes" in r else ""
                sweep.append({"date": date, "N": n, "D": d, "V": v, "provider": name,
                              "peak_extra_mib": mib, "error": r.get("error", "")})
                line.append(f"{mib:.0f}" if mib != "" else "failed")
            rows.append(line)
        h.print_table(["N", *providers], rows, right=set(range(1, len(providers) + 1)))
        h.write_csv(args.sweep_csv, sweep)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: the vocabulary-parallel cross-entropy on gloo (CPU), 1, 2 and 4 processes.

Each rank holds ``(N, V / world)`` float32 logits (uneven when ``V`` does not divide) and the
same ``N`` int64 targets; one step is the loss (``'mean'``) and its backward.  Providers:

* ``crossent``        ``crossent.torch.distributed.vocab_parallel_cross_entropy`` (one
                      all-gather of 4 statistics per row; no collective in backward)
* ``loss_parallel``   PyTorch's ``torch.distributed.tensor.parallel.loss_parallel`` on a
                      DTensor sharded on the class dimension (1-D mesh)
* ``megatron``        Megatron-Core's ``tensor_parallel.vocab_parallel_cross_entropy``, if
                      ``megatron.core`` imports (``pip install megatron-core``; it is not a
                      crossent dependency); otherwise a ``skipped`` row says why

Per provider and world size: the median step time, the peak extra memory of one step on the
busiest rank (``_harness.py``: VmHWM - VmRSS, gradient included), the bytes each rank sends
per row in the step's collectives (measured: every collective is intercepted and costed as
ring algorithms do, ``2 (K-1)/K`` of an all-reduce's payload, ``K-1`` times an all-gather's
input), the collectives counted in forward and backward, and, with label smoothing 0.1, the
spread of the loss across ranks and its error against ``F.cross_entropy`` of the gathered
logits (Megatron-Core takes the smoothing term from the local shard; ``loss_parallel``
refuses label smoothing).

A second table computes, from each algorithm, the bytes sent and the memory per rank at
``TP = 8, N = 8192, V = 256000`` with bfloat16 logits.

Run: ``python benchmarks/bench_distributed.py`` (a few minutes on 2 cores); ``--quick`` for a
small shape.  Ranks are forked processes of one worker per world size; every rank runs with
one thread, so with more ranks than cores the times include waiting for a core.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import _harness as h

HERE = Path(__file__).resolve().parent
PROVIDERS = ("crossent", "loss_parallel", "megatron")
DEFAULT = dict(rows=2048, vocab=32000)
QUICK = dict(rows=256, vocab=4000)


# --------------------------------------------------------------------------------------------
# Measuring inside a rank
# --------------------------------------------------------------------------------------------


def _collective_meter():
    """A dispatch mode that records every collective (c10d and functional) with the bytes a
    rank sends for it under ring algorithms."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class Meter(TorchDispatchMode):
        def __init__(self, world):
            super().__init__()
            self.world = world
            self.calls: list[tuple[str, float]] = []
            self.depth = 0  # a functional collective runs a c10d one inside: count it once

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if any(t is not torch.Tensor and not issubclass(t, torch.nn.Parameter)
                   for t in types if t.__name__ == "DTensor"):
                return NotImplemented  # let DTensor turn the op into collectives first
            name = str(func)
            namespace = name.split(".")[0]
            moves_data = any(k in name for k in ("reduce", "gather", "broadcast", "all_to_all"))
            if namespace in ("c10d", "_c10d_functional") and moves_data and self.depth == 0:
                first = args[0] if args else None
                if isinstance(first, (list, tuple)):
                    first = first[0] if first else None
                if isinstance(first, (list, tuple)):
                    first = first[0] if first else None
                payload = first.numel() * first.element_size() if isinstance(
                    first, torch.Tensor) else 0
                k = self.world
                if "all_reduce" in name or "allreduce" in name:
                    sent = 2 * (k - 1) / k * payload
                elif "gather" in name:  # all_gather of this rank's input
                    sent = (k - 1) * payload
                    if name.startswith("c10d.allgather_") and not name.startswith(
                            "c10d.allgather_into"):
                        first = args[1]  # allgather_(outputs, inputs, ...): input list
                        sent = (k - 1) * first[0].numel() * first[0].element_size()
                elif "reduce_scatter" in name:
                    sent = (k - 1) / k * payload
                else:
                    sent = payload
                self.calls.append((name.split(".")[1], sent))
            self.depth += 1
            try:
                return func(*args, **(kwargs or {}))
            finally:
                self.depth -= 1

    return Meter


def _rank_provider(provider, rank, world, rows, vocab, repeats, group, smoothing_check):
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    bounds = [vocab * r // world for r in range(world + 1)]
    start, stop = bounds[rank], bounds[rank + 1]
    g = torch.Generator().manual_seed(0)
    full = torch.randn(rows, vocab, generator=g) * 2 if smoothing_check else None
    y = torch.randint(0, vocab, (rows,), generator=torch.Generator().manual_seed(1))
    shard = (full[:, start:stop].clone() if full is not None else
             torch.randn(rows, stop - start, generator=torch.Generator().manual_seed(2 + rank)))

    if provider == "crossent":
        from crossent.torch.distributed import vocab_parallel_cross_entropy

        def loss_of(x, smoothing=0.0, reduction="mean"):
            return vocab_parallel_cross_entropy(x, y, group=group, vocab_start=start,
                                                num_classes=vocab, reduction=reduction,
                                                label_smoothing=smoothing)

        def step(x):
            loss = loss_of(x)
            loss.backward()
            return loss.detach()
    elif provider == "loss_parallel":
        from torch.distributed.device_mesh import DeviceMesh
        from torch.distributed.tensor import DTensor, Shard
        from torch.distributed.tensor.parallel import loss_parallel

        if vocab % world:
            return {"skipped": "loss_parallel needs DTensor's even chunks; V % world != 0"}
        mesh = DeviceMesh.from_group(group, "cpu")

        def loss_of(x, smoothing=0.0, reduction="mean"):
            xd = DTensor.from_local(x.detach(), mesh, [Shard(1)], run_check=False)
            with loss_parallel():
                return F.cross_entropy(xd.requires_grad_(x.requires_grad), y,
                                       reduction=reduction, label_smoothing=smoothing)

        def step(x):  # a DTensor leaf over this rank's logits (its gradient is a DTensor)
            xd = DTensor.from_local(x.detach(), mesh, [Shard(1)], run_check=False)
            with loss_parallel():
                loss = F.cross_entropy(xd.requires_grad_(), y)
                loss.backward()
            return loss.to_local().detach()
    elif provider == "megatron":
        try:
            from megatron.core import parallel_state
            from megatron.core.tensor_parallel.cross_entropy import (
                vocab_parallel_cross_entropy as megatron_ce,
            )
        except Exception as exc:  # noqa: BLE001 - reported as the skip reason
            return {"skipped": f"megatron.core does not import ({type(exc).__name__}: "
                               f"{str(exc)[:80]}); pip install megatron-core"}
        if not parallel_state.model_parallel_is_initialized():
            parallel_state.initialize_model_parallel(tensor_model_parallel_size=world)
        if vocab % world:
            return {"skipped": "Megatron-Core needs equal shards; V % world != 0"}

        def loss_of(x, smoothing=0.0, reduction="mean"):
            per_row = megatron_ce(x.clone(), y, label_smoothing=smoothing)
            return per_row.mean() if reduction == "mean" else per_row

        def step(x):
            loss = megatron_ce(x, y).mean()  # fp32 input: Megatron works in place on it
            loss.backward()
            return loss.detach()
    else:
        raise SystemExit(f"unknown provider {provider!r}")

    # a fresh leaf per step, made outside the clock and before the memory baseline, as a
    # model's head would hand over new logits (Megatron-Core overwrites float32 input)
    state = {}

    def prepare():
        state["x"] = None
        state["x"] = shard.clone().requires_grad_()
        dist.barrier(group)

    def call():
        return step(state["x"])

    result = h.measure(call, repeats, prepare)
    Meter = _collective_meter()
    prepare()
    x = state["x"]
    with Meter(world) as fwd:
        loss = (loss_of(x) if provider != "megatron" else megatron_ce(x, y).mean())
    with Meter(world) as bwd:
        if provider == "loss_parallel":
            with loss_parallel():
                loss.backward()
        else:
            loss.backward()
    out = {
        "times": result["times"], "extra_bytes": result["extra_bytes"],
        "fwd_collectives": [c for c, _ in fwd.calls], "bwd_collectives": [c for c, _ in bwd.calls],
        "bytes_per_row": sum(b for _, b in fwd.calls + bwd.calls) / rows,
    }
    if smoothing_check:
        with torch.no_grad():
            smoothed = float(loss_of(shard.clone(), 0.1)) if provider != "loss_parallel" \
                else None
        if provider == "loss_parallel":
            try:
                loss_of(shard.clone(), 0.1)
                out["smoothing"] = "ran"
            except Exception as exc:  # noqa: BLE001 - recorded
                out["smoothing"] = f"refused ({type(exc).__name__})"
        else:
            losses = [None] * world
            dist.all_gather_object(losses, smoothed, group=group)
            truth = float(F.cross_entropy(full.double(), y, label_smoothing=0.1))
            out["smoothing_spread"] = max(losses) - min(losses)
            out["smoothing_error"] = max(abs(v - truth) for v in losses)
    return out


def _rank_main(rank, world, rows, vocab, repeats, store, out_path, providers):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ["CROSSENT_NUM_THREADS"] = "1"
    dist.init_process_group("gloo", rank=rank, world_size=world, init_method=f"file://{store}")
    group = dist.group.WORLD
    results = {}
    for provider in providers:
        try:
            res = _rank_provider(provider, rank, world, rows, vocab, repeats, group,
                                 smoothing_check=True)
        except Exception as exc:  # noqa: BLE001 - recorded per provider
            res = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        gathered = [None] * world
        dist.all_gather_object(gathered, res, group=group)
        results[provider] = gathered
    if rank == 0:
        Path(out_path).write_text(json.dumps(results))
    dist.destroy_process_group()


def worker(world: int, rows: int, vocab: int, repeats: int, providers: list[str]) -> dict:
    import torch.multiprocessing as mp

    import crossent.torch.distributed  # noqa: F401 - imported once, before the fork

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "results.json"
        mp.start_processes(_rank_main, args=(world, rows, vocab, repeats, f"{tmp}/store",
                                             str(out), providers),
                           nprocs=world, start_method="fork")
        return json.loads(out.read_text())


# --------------------------------------------------------------------------------------------
# The algorithms' own numbers at language-model scale
# --------------------------------------------------------------------------------------------


def analytic_rows(tp: int = 8, n: int = 8192, v: int = 256000) -> list[list[str]]:
    """Bytes sent per rank (ring algorithms) and memory per rank, from each algorithm.

    bfloat16 logits ``N x V/TP`` (2 bytes), float32 statistics.  "kept" is what the loss
    holds from forward to backward beyond its input; "backward peak" adds what backward
    allocates.  Sources: reference/distributed.md and each project's code (see the docs)."""
    vl = v / tp
    ring = 2 * (tp - 1) / tp
    logits_bf16 = n * vl * 2
    fp32 = n * vl * 4
    mib = 1 << 20

    def row(name, collectives, sent, kept, backward_extra, note):
        return [name, collectives, f"{sent / 1e6:.2f}", f"{kept / mib:,.0f}",
                f"{(kept + backward_extra) / mib:,.0f}", note]

    return [
        row("crossent (all-gather)", "1 fwd, 0 bwd", (tp - 1) * 4 * 4 * n, logits_bf16 + 16 * n,
            logits_bf16, "keeps the bf16 logits + 4 floats/row; bf16 gradient in backward"),
        row("crossent (inplace_backward)", "1 fwd, 0 bwd", (tp - 1) * 4 * 4 * n,
            logits_bf16 + 16 * n, 0, "gradient written over the logits"),
        row("crossent (all-reduce)", "2 fwd, 0 bwd", ring * 4 * 4 * n, logits_bf16 + 16 * n,
            logits_bf16, "MAX of 1 + SUM of 3 floats/row"),
        row("loss_parallel", "3 fwd, 0 bwd", ring * 3 * 4 * n, logits_bf16, 2 * logits_bf16,
            "saves the log-softmax; backward zeros_like + exp; no smoothing"),
        row("Megatron-Core", "3 fwd, 0 bwd", ring * 3 * 4 * n, fp32, 0,
            "fp32 softmax kept; smoothing from the local shard"),
        row("TransformerEngine (main)", "1 fwd, 0 bwd", (tp - 1) * 3 * 4 * n, fp32, 0,
            "fp32 gradient made in forward; smoothing term local"),
    ]


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worlds", default="1,2,4")
    p.add_argument("--rows", type=int, default=None)
    p.add_argument("--vocab", type=int, default=None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--providers", default=",".join(PROVIDERS))
    p.add_argument("--quick", action="store_true", help=f"N={QUICK['rows']}, V={QUICK['vocab']}")
    p.add_argument("--csv", type=Path, default=HERE / "results" / "bench_distributed.csv")
    p.add_argument("--worker", nargs=5, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        world, rows, vocab, repeats, providers = args.worker
        print(json.dumps(worker(int(world), int(rows), int(vocab), int(repeats),
                                providers.split(","))))
        return 0

    shape = QUICK if args.quick else DEFAULT
    rows = args.rows or shape["rows"]
    vocab = args.vocab or shape["vocab"]
    providers = args.providers.split(",")
    info, vers, date = h.machine(), h.versions(("crossent", "torch")), h.now()
    print(f"crossent {vers['crossent']} | torch {vers['torch']} | Python {vers['python']}")
    print(f"{info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB | {date}")
    print(f"gloo on CPU, float32 logits N={rows} x V={vocab} split over the ranks, "
          f"forward + backward, reduction='mean'; median of {args.repeats}; 1 thread per rank")
    print()
    records, table = [], []
    for world in (int(w) for w in args.worlds.split(",")):
        res = h.run_worker(Path(__file__), [str(world), str(rows), str(vocab),
                                            str(args.repeats), ",".join(providers)])
        for provider in providers:
            ranks = res.get(provider) if "error" not in res else None
            base = {"date": date, "cpu": info["cpu"], "cores": info["cores"],
                    "crossent": vers["crossent"], "torch": vers["torch"], "world": world,
                    "N": rows, "V": vocab, "provider": provider}
            if ranks is None or any("error" in r for r in ranks):
                why = res.get("error") if ranks is None else next(
                    r["error"] for r in ranks if "error" in r)
                records.append({**base, "error": why})
                table.append([str(world), provider, "failed", "", "", "", "", "", why[:60]])
                continue
            if any("skipped" in r for r in ranks):
                why = ranks[0]["skipped"]
                records.append({**base, "skipped": why})
                table.append([str(world), provider, "skipped", "", "", "", "", "", why[:70]])
                continue
            med = statistics.median(statistics.median(r["times"]) for r in ranks)
            peak = max(r["extra_bytes"] for r in ranks) / h.MiB
            per_row = max(r["bytes_per_row"] for r in ranks)
            fwd = ranks[0]["fwd_collectives"]
            bwd = ranks[0]["bwd_collectives"]
            spread = ranks[0].get("smoothing_spread")
            err = ranks[0].get("smoothing_error")
            smoothing = ranks[0].get("smoothing", "")
            rec = {**base, "median_s": round(med, 4), "peak_extra_mib_max_rank": round(peak, 1),
                   "bytes_sent_per_row": round(per_row, 1),
                   "fwd_collectives": " ".join(fwd), "bwd_collectives": " ".join(bwd),
                   "smoothing_spread": spread, "smoothing_error": err,
                   "smoothing": smoothing, "repeats": args.repeats}
            records.append(rec)
            table.append([
                str(world), provider, f"{med * 1e3:.0f}", f"{peak:.0f}", f"{per_row:.0f}",
                f"{len(fwd)} / {len(bwd)}",
                f"{spread:.1e}" if spread is not None else "-",
                f"{err:.1e}" if err is not None else "-", smoothing or ""])
    h.print_table(["ranks", "provider", "median ms", "peak extra MiB (max rank)",
                   "bytes sent/row", "collectives fwd / bwd", "smoothing spread",
                   "smoothing error", "note"], table, right={2, 3, 4, 6, 7})
    h.write_csv(args.csv, records)
    print("\nper rank at TP = 8, N = 8192, V = 256000, bfloat16 logits (from each algorithm):")
    h.print_table(["algorithm", "collectives", "MB sent per rank", "kept MiB",
                   "backward peak MiB", "how"], analytic_rows(), right={2, 3, 4})
    return 0


if __name__ == "__main__":
    sys.exit(main())

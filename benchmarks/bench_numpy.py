"""Benchmark: ``crossent.cross_entropy_with_grad`` against the plain NumPy way and PyTorch.

Providers (all on the same float32 logits, reduction ``'mean'``):

* ``crossent``  ``crossent.cross_entropy_with_grad(x, y)``: one fused pass, threaded.
* ``numpy``     the straightforward NumPy/SciPy way: ``scipy.special.log_softmax`` and
                ``np.take_along_axis`` for the loss, then ``scipy.special.softmax`` minus the
                one-hot (subtracted in place at the target positions) divided by N (for
                probabilities: ``-(t * log_softmax).sum() / N`` and ``softmax - t``).
* ``torch``     PyTorch's CPU ``F.cross_entropy`` forward, then ``.backward()`` (``x.grad``).

Cases (``--cases``; each has its own shapes):

* ``index``        ``(N, C)`` logits, int64 class indices (``--shapes``).
* ``prob``         ``(N, C)`` logits, float32 class probabilities (``--masked-shapes``).
* ``prob-masked``  the same with a masked vocabulary: in every row a random half of the
                   classes has logit ``-inf`` and probability 0 (constrained decoding,
                   distillation over an allowed set).  Compare it with ``prob``: the cost of
                   the masks.  (PyTorch's loss is NaN there, through ``0 * log 0``.)
* ``kdim``         ``(N, C, d1, ..., dK)`` logits with classes on axis 1 and ``(N, d1..dK)``
                   class indices (``--kdim-shapes``): the extra memory column shows what
                   each provider needs beyond the input.

Modes: ``fwd+bwd`` (loss and gradient; the default) and ``fwd`` (loss only:
``crossent.cross_entropy``, the NumPy loss line, ``F.cross_entropy`` without backward).

How it measures
---------------
* Every (shape, provider, mode) runs in its own Python subprocess, so one provider's
  allocations, thread pools and caches cannot help or hurt another's numbers.  The providers
  of one shape live side by side and are timed round-robin (crossent, numpy, torch,
  crossent, ...), only one running at a time, so a burst of load on a shared machine falls
  on all of them alike.
* Time: after the warm-up call(s) of the memory measurement, ``--repeats`` timed calls per
  provider (``time.perf_counter``); the table gives the median (machines are shared and
  noisy) and the minimum.  Each call returns a new gradient, as a training step would, so
  page-faulting it in is part of the time.
* GB/s from explicit byte counts, the least traffic the operation needs: read the logits
  once (N*C*4 bytes) and the targets once (N*8 for indices, N*C*4 for probabilities), and
  for ``fwd+bwd`` write the gradient once (N*C*4).  GB/s = bytes / median time.
* Peak extra memory: after the warm-up the worker records its resident set size (VmRSS, the
  inputs already allocated and touched), resets the kernel's high-water mark
  (``/proc/self/clear_refs``, value 5), makes one call and reads the high-water mark VmHWM.
  Extra = VmHWM - VmRSS before the call; it includes the returned gradient (N*C*4 bytes for
  ``fwd+bwd``).  Where ``clear_refs`` is not available the high-water mark is
  ``resource.getrusage`` and the call is the first one (no warm-up before it).  For the
  NumPy-only providers a second call is also traced with ``tracemalloc`` (NumPy reports its
  buffers to it), which counts exactly the arrays allocated, without allocator noise.
* Threads: crossent uses every CPU this process may use (``CROSSENT_NUM_THREADS``), PyTorch
  its default intra-op threads (``torch.get_num_threads()``, printed); the NumPy way has no
  threads (NumPy's ufuncs are single-threaded).  ``--threads`` sets both.

Run ``python benchmarks/bench_numpy.py`` (a few minutes on 2 cores); ``--quick`` for smaller
shapes and fewer repeats, ``--cases index`` for the original table only.  Results: a table
on stdout and ``benchmarks/results/bench_numpy.csv`` with the machine (CPU model, cores,
memory), the versions and the date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _harness as h

HERE = Path(__file__).resolve().parent
DEFAULT_SHAPES = "4096x32000,1024x128256"  # Llama 2 and Llama 3 vocabularies
QUICK_SHAPES = "1024x32000,256x128256"
# probability targets, plain and with a masked vocabulary
DEFAULT_MASKED_SHAPES, QUICK_MASKED_SHAPES = "4096x32000", "1024x32000"
# K-dimensional: a segmentation-like (N, C, H, W) head with as many logits as 4096 x 32000
DEFAULT_KDIM_SHAPES, QUICK_KDIM_SHAPES = "32x1000x64x64", "8x1000x64x64"
PROVIDERS = ("crossent", "numpy", "torch")
MODES = ("fwd+bwd", "fwd")
CASES = ("index", "prob", "prob-masked", "kdim")
MiB = 1 << 20


# --------------------------------------------------------------------------------------------
# The providers (imported inside, so each worker loads only what it measures)
# --------------------------------------------------------------------------------------------


def make_inputs(case: str, shape: tuple[int, ...], seed: int):
    """The logits and targets of one case: float32 logits (scaled by 2), int64 indices of
    shape ``(N, d1..dK)`` or float32 probabilities of the logits' shape."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape, dtype=np.float32)
    x *= 2.0
    classes = shape[1]
    if case in ("index", "kdim"):
        return x, rng.integers(0, classes, shape[:1] + shape[2:], dtype=np.int64)
    t = rng.random(shape, dtype=np.float32)
    if case == "prob-masked":
        masked = rng.random(shape) < 0.5
        x[masked] = -np.inf
        t[masked] = 0.0
        del masked
    t /= t.sum(axis=1, keepdims=True)
    return x, t


def make_provider(name: str, mode: str, x, y):
    """A zero-argument callable that computes the loss (and gradient) and returns them.

    ``y`` holds class indices (``x``'s shape without axis 1) or probabilities (``x``'s shape);
    classes are on axis 1 either way.
    """
    import numpy as np

    backward = mode == "fwd+bwd"
    probability = y.shape == x.shape
    if name == "crossent":
        import crossent

        if backward:
            return lambda: crossent.cross_entropy_with_grad(x, y)
        return lambda: crossent.cross_entropy(x, y)
    if name == "numpy":
        from scipy.special import log_softmax, softmax

        count = x.size // x.shape[1]  # the elements the 'mean' divides by
        at = None if probability else np.expand_dims(y, 1)

        def plain_numpy():
            logp = log_softmax(x, axis=1)
            if probability:
                with np.errstate(invalid="ignore"):  # 0 * -inf under a mask: NaN, as torch
                    loss = -(y * logp).sum() / count
            else:
                loss = -np.take_along_axis(logp, at, axis=1).mean()
            if not backward:
                return loss
            del logp
            grad = softmax(x, axis=1)  # d loss / d x = (softmax - target) / count
            if probability:
                grad -= y
            else:
                picked = np.take_along_axis(grad, at, axis=1)
                np.put_along_axis(grad, at, picked - 1.0, axis=1)
            grad /= count
            return loss, grad

        return plain_numpy
    if name == "torch":
        import torch

        xt = torch.from_numpy(x)  # shares memory: no copy of the logits
        yt = torch.from_numpy(y)
        if not backward:
            def torch_forward():
                with torch.no_grad():
                    return torch.nn.functional.cross_entropy(xt, yt)

            return torch_forward
        xt.requires_grad_(True)

        def torch_forward_backward():
            xt.grad = None
            loss = torch.nn.functional.cross_entropy(xt, yt)
            loss.backward()
            return loss.detach(), xt.grad

        return torch_forward_backward
    raise ValueError(f"unknown provider {name!r}; expected one of {', '.join(PROVIDERS)}")


# --------------------------------------------------------------------------------------------
# Worker: one provider, one shape, one mode, in a fresh process
# --------------------------------------------------------------------------------------------


def worker(provider: str, mode: str, case: str, shape: tuple[int, ...], seed: int) -> None:
    """Serve the driver over stdin/stdout: ``memory`` -> JSON, ``time`` -> seconds, ``quit``."""
    x, y = make_inputs(case, shape, seed)
    call = make_provider(provider, mode, x, y)
    reply(json.dumps({"ready": True}))
    for command in sys.stdin:
        command = command.strip()
        if command == "memory":
            reply(json.dumps(measure_memory(provider, call)))
        elif command == "time":
            start = time.perf_counter()
            result = call()
            elapsed = time.perf_counter() - start
            del result
            reply(repr(elapsed))
        elif command == "quit":
            return
        else:
            raise SystemExit(f"worker: unknown command {command!r}")


def reply(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def measure_memory(provider: str, call) -> dict:
    """Peak extra memory of one call (see the module docstring), and the thread count."""
    result = call()  # warm-up: lazy imports, thread pools, first-touch of code pages
    del result
    extra_rss, method, result = h.peak_extra_bytes(call)
    del result
    traced = None
    if provider != "torch":
        import tracemalloc

        tracemalloc.start()
        result = call()
        traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        del result
    if provider == "torch":
        import torch

        threads = torch.get_num_threads()
    elif provider == "crossent":
        from crossent._kernel import num_threads

        threads = num_threads()
    else:
        threads = 1
    return {"extra_rss": extra_rss, "traced": traced, "method": method, "threads": threads}


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def _load_average() -> float | str:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return "-"


def parse_shapes(text: str, option: str = "--shapes", kdim: bool = False
                 ) -> list[tuple[int, ...]]:
    """``NxC[,NxC...]``, or with ``kdim`` ``NxCxd1[x...][,...]`` (at least one d)."""
    form = "NxCxd1[xd2...]" if kdim else "NxC"
    example = "32x1000x64x64" if kdim else "4096x32000"
    shapes = []
    for item in text.split(","):
        try:
            shape = tuple(int(v) for v in item.lower().split("x"))
        except ValueError:
            shape = ()
        if (len(shape) < 3) if kdim else (len(shape) != 2):
            raise SystemExit(f"{option}: expected {form}[,{form}...], e.g. {example}, "
                             f"got {item!r}")
        if min(shape) < 1:
            raise SystemExit(f"{option}: every size must be positive, got {item!r}")
        shapes.append(shape)
    return shapes



class Worker:
    """One provider in its own process, holding its inputs, answering the driver's commands."""

    def __init__(self, args, provider: str, mode: str, case: str, shape: tuple[int, ...]):
        env = dict(os.environ)
        if args.threads:
            env["CROSSENT_NUM_THREADS"] = str(args.threads)
            env["OMP_NUM_THREADS"] = str(args.threads)
        spec = "x".join(str(v) for v in shape)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", provider,
               "--modes", mode, "--cases", case, "--worker-shape", spec,
               "--seed", str(args.seed)]
        self.name = f"{provider} {mode} {case} {spec}"
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        self._read()  # {"ready": true}: inputs allocated

    def _read(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise SystemExit(f"worker {self.name} failed (exit status {self.proc.returncode})")
        return line

    def ask(self, command: str) -> str:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait()


def measure(args, providers: list[str], mode: str, case: str, shape: tuple[int, ...]) -> dict:
    """All providers of one (case, shape, mode) side by side: memory one at a time, then the
    timed calls round-robin, so a burst of load on a shared machine hits every provider
    alike."""
    workers = {}
    try:
        for name in providers:  # started one at a time: no provider's setup overlaps a timing
            workers[name] = Worker(args, name, mode, case, shape)
        results = {name: json.loads(w.ask("memory")) for name, w in workers.items()}
        for r in results.values():
            r["times"] = []
        for _ in range(args.repeats):
            for name, w in workers.items():
                results[name]["times"].append(float(w.ask("time")))
    finally:
        for w in workers.values():
            w.close()
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=None,
                   help=f"index case: comma-separated NxC (default {DEFAULT_SHAPES}; "
                        f"--quick: {QUICK_SHAPES})")
    p.add_argument("--masked-shapes", default=None,
                   help=f"prob and prob-masked cases: comma-separated NxC (default "
                        f"{DEFAULT_MASKED_SHAPES}; --quick: {QUICK_MASKED_SHAPES})")
    p.add_argument("--kdim-shapes", default=None,
                   help=f"kdim case: comma-separated NxCxd1[xd2...] (default "
                        f"{DEFAULT_KDIM_SHAPES}; --quick: {QUICK_KDIM_SHAPES})")
    p.add_argument("--cases", default=",".join(CASES),
                   help="comma-separated subset of " + ", ".join(CASES) + " (default: all)")
    p.add_argument("--providers", default=",".join(PROVIDERS),
                   help="comma-separated subset of " + ", ".join(PROVIDERS))
    p.add_argument("--modes", default="fwd+bwd", help="comma-separated subset of "
                   + ", ".join(MODES) + " (default fwd+bwd)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per provider "
                   "(default 7; --quick: 3)")
    p.add_argument("--quick", action="store_true", help="smaller shapes, fewer repeats")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for crossent and torch (default: all CPUs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--csv", type=Path, default=HERE / "results" / "bench_numpy.csv",
                   help="where to write the results (default benchmarks/results/bench_numpy.csv)")
    p.add_argument("--no-csv", action="store_true", help="print the table only")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-shape", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    cases = [c.strip() for c in args.cases.split(",")]
    for case in cases:
        if case not in CASES:
            raise SystemExit(f"--cases: expected some of {', '.join(CASES)}, got {case!r}")
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    modes = [m.strip() for m in args.modes.split(",")]
    for m in modes:
        if m not in MODES:
            raise SystemExit(f"--modes: expected some of {', '.join(MODES)}, got {m!r}")

    if args.worker:  # inside a subprocess: one provider, one case, one shape, one mode
        shape = tuple(int(v) for v in args.worker_shape.split("x"))
        worker(args.worker, modes[0], cases[0], shape, args.seed)
        return 0

    def shapes_of(text, default, quick, option, kdim=False):
        return parse_shapes(text or (quick if args.quick else default), option, kdim)

    jobs = []  # (case, shape), in the order of the table
    for case in cases:
        if case == "index":
            shapes = shapes_of(args.shapes, DEFAULT_SHAPES, QUICK_SHAPES, "--shapes")
        elif case == "kdim":
            shapes = shapes_of(args.kdim_shapes, DEFAULT_KDIM_SHAPES, QUICK_KDIM_SHAPES,
                               "--kdim-shapes", kdim=True)
        else:
            shapes = shapes_of(args.masked_shapes, DEFAULT_MASKED_SHAPES, QUICK_MASKED_SHAPES,
                               "--masked-shapes")
        jobs += [(case, shape) for shape in shapes]

    providers = [s.strip() for s in args.providers.split(",")]
    for name in providers:
        if name not in PROVIDERS:
            raise SystemExit(f"--providers: expected some of {', '.join(PROVIDERS)}, "
                             f"got {name!r}")
    info = h.machine()
    vers = h.versions()
    date = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    print(f"crossent {vers['crossent']} | numpy {vers['numpy']} | scipy {vers['scipy']} | "
          f"torch {vers['torch']} | Python {vers['python']}")
    load = _load_average()
    print(f"{info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB | {date} | "
          f"load average {load} (other work on the machine slows every provider alike)")
    print(f"float32 logits, int64 class indices or float32 probabilities (case), "
          f"reduction='mean'; median of {args.repeats} runs; GB/s = (read logits + targets"
          f"{' + write gradient' if 'fwd+bwd' in modes else ''}) / median time")
    print()

    rows = []
    for mode in modes:
        for case, shape in jobs:
            results = measure(args, providers, mode, case, shape)
            n, c = shape[0] * math.prod(shape[2:]), shape[1]  # softmax rows and classes
            input_bytes = n * c * 4
            target_bytes = n * 8 if case in ("index", "kdim") else input_bytes
            moved = input_bytes + target_bytes + (input_bytes if mode == "fwd+bwd" else 0)
            for name in providers:
                r = results[name]
                med = statistics.median(r["times"])
                row = {
                    "date": date, "cpu": info["cpu"], "cores": info["cores"],
                    "memory_gib": info["memory_gib"], "python": vers["python"],
                    "crossent": vers["crossent"], "numpy": vers["numpy"],
                    "scipy": vers["scipy"], "torch": vers["torch"],
                    "mode": mode, "N": n, "C": c, "dtype": "float32", "provider": name,
                    "case": case, "shape": "x".join(str(v) for v in shape),
                    "threads": r["threads"], "repeats": args.repeats,
                    "median_ms": round(med * 1e3, 2),
                    "min_ms": round(min(r["times"]) * 1e3, 2),
                    "gb_per_s": round(moved / med / 1e9, 2),
                    "bytes_moved": moved,
                    "peak_extra_mib": round(r["extra_rss"] / MiB, 1),
                    "peak_extra_over_input": round(r["extra_rss"] / input_bytes, 2),
                    "tracemalloc_peak_mib": (round(r["traced"] / MiB, 1)
                                             if r["traced"] is not None else ""),
                    "memory_method": r["method"],
                    "load_avg_at_start": load,
                    "command": " ".join(["python", "benchmarks/bench_numpy.py",
                                         *(argv if argv is not None else sys.argv[1:])]),
                }
                for other in ("numpy", "torch"):
                    if other in results:
                        row[f"speedup_vs_{other}"] = round(
                            statistics.median(results[other]["times"]) / med, 2)
                rows.append(row)
    print_table(rows)
    if not args.no_csv:
        h.write_csv(args.csv, rows)
    return 0


def print_table(rows: list[dict]) -> None:
    header = ["mode", "case", "shape", "provider", "threads", "median ms", "min ms", "GB/s",
              "vs numpy", "vs torch", "peak extra MiB", "extra/input", "tracemalloc MiB"]
    table = [header]
    for r in rows:
        table.append([
            r["mode"], r["case"], r["shape"].replace("x", " x "), r["provider"],
            str(r["threads"]),
            f"{r['median_ms']:.1f}", f"{r['min_ms']:.1f}", f"{r['gb_per_s']:.2f}",
            f"{r['speedup_vs_numpy']:.2f}x" if "speedup_vs_numpy" in r else "-",
            f"{r['speedup_vs_torch']:.2f}x" if "speedup_vs_torch" in r else "-",
            f"{r['peak_extra_mib']:.0f}", f"{r['peak_extra_over_input']:.2f}",
            f"{r['tracemalloc_peak_mib']:.0f}" if r["tracemalloc_peak_mib"] != "" else "-",
        ])
    h.print_table(header, table[1:], right={4, 5, 6, 7, 8, 9, 10, 11, 12})


if __name__ == "__main__":
    sys.exit(main())

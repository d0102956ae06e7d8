"""GPU benchmark: crossent's linear cross-entropy (both schedules) and Triton cross-entropy
against PyTorch, torch.compile and, where importable, Liger-Kernel, Cut Cross-Entropy and
QuACK; every result self-checked, the issue's targets checked, one run of a few minutes.

Part 1, linear cross-entropy forward + backward, bf16, N=8192, D=4096, V=128256 (Llama 3):

* ``naive``                       ``F.cross_entropy(h @ W.T, y)``
* ``torch.compile``               ``torch.compile`` of the same
* ``torch.linear_cross_entropy``  ``F.linear_cross_entropy(h, W, y, options=
                                  torch.nn.LinearCrossEntropyOptions())`` (PyTorch's chunked op)
* ``liger``                       ``LigerFusedLinearCrossEntropyLoss`` (if importable)
* ``cce``                         Cut Cross-Entropy's ``linear_cross_entropy`` (if importable)
* ``quack``                       QuACK's ``chunked_linear_cross_entropy`` (if importable)
* ``crossent``                    ``crossent.torch.linear_cross_entropy(h, W, y, impl="triton")``,
                                  ``schedule="auto"`` (its pick in the ``plan`` column)
* ``crossent[rows]``, ``crossent[vocab]``  the two schedules forced; ``crossent[vocab,block=B]``
                                  the vocabulary schedule with blocks of B columns
                                  (``--linear-blocks``), to tune the default block.

Time, and peak memory beyond the returned gradients: ``torch.cuda.max_memory_allocated``
during one step minus what was allocated before it, minus the bf16 gradients of h and W
(64 MiB + 1002 MiB, which every provider returns).  Targets for ``crossent``: at most
1.2 GB beyond the gradients, and faster than every other provider that ran.

Part 2, cross-entropy forward + backward (class-index targets, reduction ``'mean'``), bf16
and fp32, N x V = 16384 x 131072 and 8192 x 256000:

* ``torch``, ``torch.compile``    ``F.cross_entropy(x, y)`` then ``.backward()``
* ``liger``                       ``LigerCrossEntropyLoss`` (if importable; it overwrites the
                                  logits with the gradient, as it always does)
* ``quack``                       ``quack.cross_entropy.cross_entropy`` (if importable)
* ``crossent``                    ``crossent.torch.cross_entropy(x, y, impl="triton")``
* ``crossent-kernel[auto|row|split]``  the host function
                                  ``crossent.torch.triton.cross_entropy.cross_entropy_fwd``
                                  (loss and gradient in one call, the gradient into a fresh
                                  buffer), the launch variant chosen by the rule or forced.

GB/s counts the least traffic the operation needs: read the logits once, write the gradient
once, plus targets and losses (``2*N*V*bytes + 12*N``), divided by the median time; ``%copy``
compares it with this device's measured copy bandwidth (a 2 GiB device-to-device copy, read
+ write).  Target for ``crossent``: at least 85% of the copy bandwidth.

Part 3, a correctness check of int64 offsets: bf16 with N*V > 2**31 (8405 x 256000), the
last rows compared with a float32 reference.

Self-checks: every provider's loss against a float32 reference (chunked, so it fits) and
its gradients (linear: the full dh and dW; cross-entropy: the first 256 rows) by the worst
error relative to the reference's largest magnitude.  A peer that fails or runs out of memory
is recorded in the CSV, not fatal; a crossent provider that fails is a failed check.

Time is the median of ``triton.testing.do_bench`` (which flushes L2 before every call) on
CUDA.  The run stops starting new measurements after ``--time-limit`` seconds (default 480)
and says which it skipped.

Run on a GPU (about 5 minutes on an H200)::

    python benchmarks/bench_gpu.py                     # everything, CSV + table + checks
    python benchmarks/bench_gpu.py --part linear --providers crossent,naive

Smoke test on a CPU machine (tiny shapes, Triton's interpreter, one timed call per provider,
``torch.compile`` with the ``aot_eager`` backend; about a minute)::

    python benchmarks/bench_gpu.py --dry-run          # same as --device cpu

Results: ``benchmarks/results/bench_gpu.csv`` (``--csv``; the CPU smoke test writes
``bench_gpu_smoke_cpu.csv``), with the device, versions and date on every row, and a table
on stdout, then one line per check and target.  Exit status: 0 all checks passed and all
targets met; 1 a self-check failed (wrong numbers, or a crossent provider failed); 3 every
check passed but a target was missed or skipped (the dry run checks no targets); 2 the
device cannot run the script.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import gc
import importlib.util
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
CE_SHAPES = [(16384, 131072), (8192, 256000)]
LINEAR_SHAPE = (8192, 4096, 128256)  # N, D, V (Llama 3)
INT64_V = 256000
LINEAR_BLOCKS = "2048,8192,16384"  # vocab-block sizes measured beside the default (4096 there)
CPU_CE_SHAPES = [(4, 300), (2, 9000)]  # one row block; rows streamed over several blocks
CPU_LINEAR_SHAPE = (16, 32, 300)
CPU_VOCAB_BLOCK = 128  # the dry run's vocabulary blocks: three, so the merge runs
CE_PROVIDERS = ["torch", "torch.compile", "liger", "quack", "crossent",
                "crossent-kernel[auto]", "crossent-kernel[row]", "crossent-kernel[split]"]
LINEAR_PROVIDERS = ["naive", "torch.compile", "torch.linear_cross_entropy", "liger", "cce",
                    "quack", "crossent", "crossent[rows]", "crossent[vocab]"]
OPTIONAL = {"liger": "liger_kernel", "cce": "cut_cross_entropy", "quack": "quack"}
COPY_TARGET = 0.85  # of the measured copy bandwidth, for crossent's cross-entropy
MEMORY_TARGET_BYTES = 1.2e9  # beyond the returned gradients, for crossent's linear CE
FIELDS = ["date", "device", "torch", "triton", "crossent", "liger_kernel", "cut_cross_entropy",
          "quack", "cuda", "git", "part", "provider", "dtype", "N", "D", "V", "plan",
          "median_ms", "gbps", "pct_copy", "peak_extra_mib", "beyond_grads_mib", "check",
          "target", "error"]


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="crossent's linear cross-entropy and Triton cross-entropy vs PyTorch, "
                    "torch.compile, Liger, CCE and QuACK on a GPU (CSV + table + checks); "
                    "--dry-run checks the script on a CPU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cpu runs tiny shapes in Triton's interpreter (a smoke test)")
    p.add_argument("--dry-run", action="store_true", help="the same as --device cpu")
    p.add_argument("--part", default="all", choices=["all", "linear", "ce", "int64"])
    p.add_argument("--dtype", default="bf16,fp32", help="cross-entropy dtypes (bf16, fp32)")
    p.add_argument("--providers", default="",
                   help="comma-separated subset of providers (default: all); names: "
                        + ", ".join(dict.fromkeys(LINEAR_PROVIDERS + CE_PROVIDERS)))
    p.add_argument("--linear-blocks", default=None,
                   help=f"extra vocab-block sizes for crossent[vocab,block=B] (default "
                        f"{LINEAR_BLOCKS} on a GPU, none on a CPU; '' for none)")
    p.add_argument("--warmup", type=int, default=100, help="do_bench warm-up budget, ms")
    p.add_argument("--rep", type=int, default=500, help="do_bench measuring budget, ms")
    p.add_argument("--time-limit", type=float, default=480.0,
                   help="seconds after which no new measurement starts")
    p.add_argument("--csv", type=Path, default=None,
                   help="default benchmarks/results/bench_gpu.csv; on CPU "
                        "benchmarks/results/bench_gpu_smoke_cpu.csv, so a smoke test never "
                        "replaces GPU results")
    p.add_argument("--append", action="store_true", help="append to the CSV, don't replace")
    p.add_argument("--no-csv", action="store_true", help="print the table only")
    args = p.parse_args(argv)
    if args.dry_run:
        args.device = "cpu"
    if args.csv is None:
        name = "bench_gpu.csv" if args.device == "cuda" else "bench_gpu_smoke_cpu.csv"
        args.csv = HERE / "results" / name
    args.dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
    for d in args.dtypes:
        if d not in ("bf16", "fp32"):
            p.error(f"--dtype takes bf16 and/or fp32, got {d!r}")
    blocks = args.linear_blocks
    if blocks is None:
        blocks = LINEAR_BLOCKS if args.device == "cuda" else ""
    try:
        args.blocks = [int(b) for b in blocks.split(",") if b.strip()]
    except ValueError:
        p.error(f"--linear-blocks takes comma-separated integers, got {blocks!r}")
    args.only = {s.strip() for s in args.providers.split(",") if s.strip()}
    args.deadline = time.monotonic() + args.time_limit
    return args


# --------------------------------------------------------------------------------------------
# environment, timing, memory
# --------------------------------------------------------------------------------------------


def environment(torch, device) -> dict:
    import importlib.metadata as md

    def version(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return ""

    try:
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        git = ""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu ({platform.processor() or platform.machine()}, Triton interpreter)"
    import triton

    import crossent

    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": name, "torch": torch.__version__, "triton": triton.__version__,
        "crossent": crossent.__version__, "liger_kernel": version("liger-kernel"),
        "cut_cross_entropy": version("cut-cross-entropy"), "quack": version("quack-kernels"),
        "cuda": torch.version.cuda or "", "git": git,
    }


def timed(fn, device, args, grad_to_none=None) -> float:
    """Median milliseconds of ``fn()`` (one call on a CPU: the dry run checks plumbing)."""
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=args.warmup, rep=args.rep,
                                             grad_to_none=grad_to_none,
                                             return_mode="median"))
    if grad_to_none:
        for t in grad_to_none:
            t.grad = None
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def peak_extra_mib(torch, fn, device) -> float | None:
    """Peak memory allocated during one ``fn()`` beyond what was allocated before, MiB."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def free(torch):
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def copy_bandwidth(torch, device, args) -> float:
    """GB/s of a large device-to-device copy (bytes read + bytes written)."""
    n = (2 << 30) if device.type == "cuda" else (64 << 20)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    src.fill_(1)
    dst = torch.empty_like(src)
    ms = timed(lambda: dst.copy_(src), device, args)
    src = dst = None  # noqa: F841 (release before the next part)
    free(torch)
    return 2 * n / (ms * 1e-3) / 1e9


def rel_err(ours, ref) -> float:
    """Worst |ours - ref| relative to the reference's largest magnitude."""
    ours = ours.float()
    ref = ref.float()
    return float((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def compile_fn(torch, fn, device):
    """``torch.compile(fn)``: Inductor on a GPU; ``aot_eager`` in the CPU smoke test (the
    same tracing, without minutes of C++ compilation)."""
    return torch.compile(fn, backend="inductor" if device.type == "cuda" else "aot_eager")


def out_of_time(args, row, rows) -> bool:
    if time.monotonic() < args.deadline:
        return False
    row["check"] = f"skipped (time limit {args.time_limit:.0f} s reached)"
    rows.append(row)
    print(_line(row), flush=True)
    return True


# --------------------------------------------------------------------------------------------
# Part 1: linear cross-entropy
# --------------------------------------------------------------------------------------------


def linear_reference(torch, h, w, y):
    """float32 loss, dh and dW of mean CE(h W^T, y), chunked over rows."""
    n = h.shape[0]
    wf = w.float()
    dw = torch.zeros_like(wf)
    dh = torch.empty(h.shape, dtype=torch.float32, device=h.device)
    total = torch.zeros((), dtype=torch.float64, device=h.device)
    step = max(1, (1 << 28) // w.shape[0])
    for s in range(0, n, step):
        hf = h[s:s + step].float()
        logits = hf @ wf.T
        lse = torch.logsumexp(logits, dim=1)
        total += (lse - logits.gather(1, y[s:s + step, None])[:, 0]).double().sum()
        g = torch.softmax(logits, dim=1)
        g[torch.arange(g.shape[0], device=g.device), y[s:s + step]] -= 1.0
        g /= n
        dh[s:s + step] = g @ wf
        dw += g.T @ hf
        del logits, g
    return float(total / n), dh, dw


def _crossent_linear(name, device):
    """``(schedule, vocab_block_size)`` of a crossent linear provider name."""
    inner = name[name.index("[") + 1:-1] if "[" in name else "auto"
    schedule, _, block = inner.partition(",block=")
    block = int(block) if block else (CPU_VOCAB_BLOCK if device.type == "cpu" else None)
    return schedule, block


def linear_provider(name, torch, F, device):
    if name == "naive":
        def fn(h, w, y):
            return F.cross_entropy(h @ w.T, y)
    elif name == "torch.compile":
        fn = compile_fn(torch, lambda h, w, y: F.cross_entropy(h @ w.T, y), device)
    elif name == "torch.linear_cross_entropy":
        options = torch.nn.LinearCrossEntropyOptions()

        def fn(h, w, y):
            return F.linear_cross_entropy(h, w, y, options=options)
    elif name == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        module = LigerFusedLinearCrossEntropyLoss()

        def fn(h, w, y):
            return module(w, h, y)
    elif name == "cce":
        from cut_cross_entropy import linear_cross_entropy as cce

        def fn(h, w, y):
            return cce(h, w, y)
    elif name == "quack":
        try:
            from quack.linear_cross_entropy import chunked_linear_cross_entropy as quack_lce
        except ImportError as exc:
            raise RuntimeError(f"this QuACK has no linear cross-entropy ({exc})") from exc

        def fn(h, w, y):
            return quack_lce(h, w, y)
    elif name.startswith("crossent"):
        import crossent.torch as ct

        schedule, block = _crossent_linear(name, device)

        def fn(h, w, y):
            return ct.linear_cross_entropy(h, w, y, impl="triton", schedule=schedule,
                                           vocab_block_size=block)
    else:
        raise ValueError(f"unknown provider {name!r}")
    return fn


def linear_plan(name, torch, device, n, d, v) -> str:
    """The schedule, blocks and modelled memory of a crossent provider."""
    import crossent.torch as ct

    schedule, block = _crossent_linear(name, device)
    m = ct.linear_cross_entropy_memory(n, d, v, dtype=torch.bfloat16, device=device,
                                       vocab_block_size=block)
    chosen = m.chosen if schedule == "auto" else schedule
    model = m.rows if chosen == "rows" else m.vocab
    sizes = f"chunk={m.chunk}" if chosen == "rows" else f"block={m.block} rows={m.block_rows}"
    return f"schedule={chosen} {sizes} model={model / 2**20:.0f}MiB"


def run_linear(args, torch, F, device, env, rows):
    n, d, v = LINEAR_SHAPE if device.type == "cuda" else CPU_LINEAR_SHAPE
    gen = torch.Generator(device=device).manual_seed(1)
    try:
        h0 = (torch.randn(n, d, device=device, generator=gen)).to(torch.bfloat16)
        w0 = (torch.randn(v, d, device=device, generator=gen) / math.sqrt(d)).to(torch.bfloat16)
        y = torch.randint(0, v, (n,), device=device, generator=gen)
        ref_loss, ref_dh, ref_dw = linear_reference(torch, h0, w0, y)
    except Exception as exc:
        rows.append(dict(env, part="linear", provider="(inputs)", dtype="bf16", N=n, D=d, V=v,
                         error=_short(exc)))
        return
    grad_bytes = (h0.numel() + w0.numel()) * h0.element_size()
    names = LINEAR_PROVIDERS + [f"crossent[vocab,block={b}]" for b in args.blocks]
    for name in names:
        block_sweep = name.startswith("crossent[vocab,block=")
        if args.only and name not in args.only and not (block_sweep and
                                                        "crossent[vocab]" in args.only):
            continue
        row = dict(env, part="linear", provider=name, dtype="bf16", N=n, D=d, V=v)
        if _skip_optional(name, row, rows) or out_of_time(args, row, rows):
            continue
        try:
            if name.startswith("crossent"):
                row["plan"] = linear_plan(name, torch, device, n, d, v)
            fn = linear_provider(name, torch, F, device)
            h = h0.clone().requires_grad_()
            w = w0.clone().requires_grad_()

            def step(fn=fn, h=h, w=w):
                loss = fn(h, w, y)
                loss.backward()
                return loss

            loss = step()  # compiles / warms up, and is checked
            e_loss = abs(float(loss) - ref_loss) / abs(ref_loss)
            e_dh = rel_err(h.grad, ref_dh)
            e_dw = rel_err(w.grad, ref_dw)
            ok = e_loss <= 1e-2 and e_dh <= 3e-2 and e_dw <= 3e-2
            row["check"] = f"{'ok' if ok else 'FAIL'} loss {e_loss:.1e} dh {e_dh:.1e} " \
                           f"dW {e_dw:.1e}"
            h.grad = w.grad = None
            loss = None
            peak = peak_extra_mib(torch, step, device)
            row["peak_extra_mib"] = _round(peak, 1)
            if peak is not None:
                row["beyond_grads_mib"] = round(peak - grad_bytes / 2**20, 1)
            row["median_ms"] = round(timed(step, device, args, grad_to_none=[h, w]), 3)
        except Exception as exc:
            row["error"] = _short(exc)
            if os.environ.get("BENCH_TRACEBACK"):
                traceback.print_exc()
        rows.append(row)
        print(_line(row), flush=True)
        fn = step = h = w = None
        free(torch)


# --------------------------------------------------------------------------------------------
# Part 2: cross-entropy
# --------------------------------------------------------------------------------------------

CHECK_ROWS = 256


def ce_reference(torch, F, x, y):
    """float32 mean loss over all rows (chunked) and the gradient of the first rows."""
    n = x.shape[0]
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    step = max(1, (1 << 28) // x.shape[1])  # ~1 GiB of float32 per chunk
    for s in range(0, n, step):
        total += F.cross_entropy(x[s:s + step].float(), y[s:s + step], reduction="sum").double()
    xr = x[:CHECK_ROWS].detach().float().requires_grad_()
    (g,) = torch.autograd.grad(F.cross_entropy(xr, y[:CHECK_ROWS], reduction="sum") / n, xr)
    return float(total / n), g


def ce_check(loss, grad_rows, ref, dtype_name) -> str:
    ref_loss, ref_grad = ref
    loss = float(loss)
    e_loss = abs(loss - ref_loss) / abs(ref_loss)
    e_grad = rel_err(grad_rows, ref_grad)
    # bf16: torch's own loss is rounded to bf16 (2**-8 relative), gradients to 2**-8 of their
    # largest entries; fp32 has no such excuse
    tol_loss, tol_grad = (1e-2, 2e-2) if dtype_name == "bf16" else (1e-4, 1e-4)
    ok = e_loss <= tol_loss and e_grad <= tol_grad
    return f"{'ok' if ok else 'FAIL'} loss {e_loss:.1e} grad {e_grad:.1e}"


def ce_provider(name, torch, F, x, y, device):
    """``(step, check_step, plan, leaves)``: step() runs forward + backward (timed);
    check_step() runs once on fresh inputs and returns (mean loss, gradient of the first
    rows)."""
    n = x.shape[0]
    if name.startswith("crossent-kernel"):
        from crossent.torch._params import CrossEntropyParams
        from crossent.torch.triton.cross_entropy import _sm_count, cross_entropy_fwd, plan_launch

        variant = name[name.index("[") + 1:-1]
        params = CrossEntropyParams()
        scale = torch.full((), 1.0 / n, dtype=torch.float32, device=x.device)
        plan = plan_launch(n, x.shape[1], sm_count=_sm_count(x.device), variant=variant)
        plan_text = f"{plan.variant} block={plan.block} split={plan.n_split}"

        def step(out=None):
            # a new gradient every step, as the autograd providers make one (so the peak
            # memory counts it for everyone); the caching allocator makes it free of cost
            grad = torch.empty_like(x) if out is None else out
            return cross_entropy_fwd(x, y, params, None, scale, grad, variant=variant)

        def check_step():
            grad = torch.empty_like(x)
            losses = step(grad)
            return losses.sum() / n, grad[:CHECK_ROWS].clone()

        return step, check_step, plan_text, None

    if name == "torch":
        fn = F.cross_entropy
    elif name == "torch.compile":
        fn = compile_fn(torch, F.cross_entropy, device)
    elif name == "liger":
        from liger_kernel.transformers import LigerCrossEntropyLoss

        fn = LigerCrossEntropyLoss()
    elif name == "quack":
        from quack.cross_entropy import cross_entropy as quack_ce

        def fn(a, b):
            return quack_ce(a, b, reduction="mean")
    elif name == "crossent":
        import crossent.torch

        def fn(a, b):
            return crossent.torch.cross_entropy(a, b, impl="triton")
    else:
        raise ValueError(f"unknown provider {name!r}")
    leaf = x.detach().clone().requires_grad_()  # liger overwrites it; others only read

    def step():
        loss = fn(leaf, y)
        loss.backward()
        return loss

    def check_step():
        fresh = x.detach().clone().requires_grad_()
        loss = fn(fresh, y)
        loss.backward()
        return loss.detach(), fresh.grad[:CHECK_ROWS].clone()  # lets `fresh` go

    return step, check_step, "", [leaf]


def run_ce(args, torch, F, device, env, copy_gbps, rows):
    shapes = CE_SHAPES if device.type == "cuda" else CPU_CE_SHAPES
    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32}
    for dname in args.dtypes:
        dtype = dtypes[dname]
        for n, v in shapes:
            if args.only and not args.only & set(CE_PROVIDERS):
                continue
            gen = torch.Generator(device=device).manual_seed(0)
            try:
                x = (torch.randn(n, v, device=device, generator=gen) * 2).to(dtype)
                y = torch.randint(0, v, (n,), device=device, generator=gen)
                ref = ce_reference(torch, F, x, y)
            except Exception as exc:  # e.g. out of memory for the inputs themselves
                rows.append(dict(env, part="ce", provider="(inputs)", dtype=dname, N=n, V=v,
                                 error=_short(exc)))
                free(torch)
                continue
            nbytes = 2 * n * v * x.element_size() + 12 * n
            for name in CE_PROVIDERS:
                if args.only and name not in args.only:
                    continue
                row = dict(env, part="ce", provider=name, dtype=dname, N=n, V=v)
                if _skip_optional(name, row, rows) or out_of_time(args, row, rows):
                    continue
                try:
                    step, check_step, plan, leaves = ce_provider(name, torch, F, x, y, device)
                    row["plan"] = plan
                    row["check"] = ce_check(*check_step(), ref, dname)  # also compiles/warms
                    if leaves:
                        for t in leaves:
                            t.grad = None
                    row["peak_extra_mib"] = _round(peak_extra_mib(torch, step, device), 1)
                    ms = timed(step, device, args, grad_to_none=leaves)
                    row["median_ms"] = round(ms, 4)
                    row["gbps"] = round(nbytes / (ms * 1e-3) / 1e9, 1)
                    row["pct_copy"] = round(100 * row["gbps"] / copy_gbps, 1)
                except Exception as exc:
                    row["error"] = _short(exc)
                    if os.environ.get("BENCH_TRACEBACK"):
                        traceback.print_exc()
                rows.append(row)
                print(_line(row), flush=True)
                step = check_step = leaves = None
                free(torch)
            del x, y, ref
            free(torch)


# --------------------------------------------------------------------------------------------
# Part 3: int64 offsets
# --------------------------------------------------------------------------------------------


def run_int64(args, torch, F, device, env, rows):
    if device.type != "cuda":
        rows.append(dict(env, part="int64", provider="crossent-kernel", dtype="bf16",
                         check="skipped (needs a GPU: > 4 GiB of logits)"))
        return
    from crossent.torch._params import CrossEntropyParams
    from crossent.torch.triton.cross_entropy import cross_entropy_fwd

    v = INT64_V
    n = 2**31 // v + 16  # the last rows start beyond element 2**31
    for variant in ("auto", "row"):
        row = dict(env, part="int64", provider=f"crossent-kernel[{variant}]", dtype="bf16",
                   N=n, V=v)
        if out_of_time(args, row, rows):
            continue
        try:
            gen = torch.Generator(device=device).manual_seed(2)
            x = torch.randn(n, v, device=device, generator=gen).to(torch.bfloat16)
            y = torch.randint(0, v, (n,), device=device, generator=gen)
            grad = torch.empty_like(x)
            losses = cross_entropy_fwd(x, y, CrossEntropyParams(), None,
                                       torch.ones((), device=device), grad, variant=variant)
            tail = slice(n - 32, n)
            xr = x[tail].float().requires_grad_()
            ref = F.cross_entropy(xr, y[tail], reduction="none")
            (ref_g,) = torch.autograd.grad(ref.sum(), xr)
            e_loss = rel_err(losses[tail], ref.detach())
            e_grad = rel_err(grad[tail], ref_g)
            ok = e_loss <= 1e-5 and e_grad <= 1e-2
            row["check"] = f"{'ok' if ok else 'FAIL'} last rows: loss {e_loss:.1e} " \
                           f"grad {e_grad:.1e} (offsets up to {n * v:.3g} > 2**31)"
        except Exception as exc:
            row["error"] = _short(exc)
        rows.append(row)
        print(_line(row), flush=True)
        x = y = grad = None
        free(torch)


# --------------------------------------------------------------------------------------------
# checks and targets
# --------------------------------------------------------------------------------------------


def verdicts(rows, device) -> tuple[list[str], list[str]]:
    """``(failures, misses)``: lines for failed self-checks, and for missed or unmeasured
    targets (on a GPU only); met targets are written into the rows' ``target`` column."""
    failures, misses = [], []
    for r in rows:
        what = f"{r.get('part')} {r.get('provider')} {r.get('dtype', '')} " \
               f"{'x'.join(str(r[k]) for k in ('N', 'D', 'V') if r.get(k))}".strip()
        if (r.get("check") or "").startswith("FAIL"):
            failures.append(f"FAIL {what}: {r['check']}")
        elif r.get("error") and str(r.get("provider", "")).startswith("crossent"):
            failures.append(f"FAIL {what}: {r['error']}")
    if device.type != "cuda":
        return failures, misses

    def miss(row, text):
        row["target"] = f"MISSED: {text}"
        misses.append(f"TARGET MISSED {row['part']} {row['provider']} "
                      f"{row.get('dtype', '')}: {text}")

    for r in rows:
        if r.get("part") == "ce" and r.get("provider") == "crossent":
            pct = r.get("pct_copy")
            if pct is None:
                miss(r, "not measured")
            elif pct < 100 * COPY_TARGET:
                miss(r, f"{pct:.1f}% of the copy bandwidth < {100 * COPY_TARGET:.0f}%")
            else:
                r["target"] = f"met: {pct:.1f}% >= {100 * COPY_TARGET:.0f}% of copy"
    linear = {r["provider"]: r for r in rows if r.get("part") == "linear"}
    ours = linear.get("crossent")
    if ours is not None:
        texts = []
        beyond = ours.get("beyond_grads_mib")
        if beyond is None:
            miss(ours, "memory not measured")
        elif beyond * 2**20 > MEMORY_TARGET_BYTES:
            miss(ours, f"{beyond * 2**20 / 1e9:.2f} GB beyond the gradients > "
                       f"{MEMORY_TARGET_BYTES / 1e9:.1f} GB")
        else:
            texts.append(f"{beyond * 2**20 / 1e9:.2f} GB <= {MEMORY_TARGET_BYTES / 1e9:.1f} GB")
        ms = ours.get("median_ms")
        for name in ("naive", "torch.compile", "torch.linear_cross_entropy", "liger", "cce",
                     "quack"):
            peer = linear.get(name)
            if peer is None or peer.get("median_ms") is None:
                continue  # not installed, failed or out of memory: nothing to beat
            if ms is None:
                miss(ours, f"not timed (vs {name})")
            elif ms >= peer["median_ms"]:
                miss(ours, f"{ms:.1f} ms, not faster than {name} ({peer['median_ms']:.1f} ms)")
            else:
                texts.append(f"faster than {name}")
        if not (ours.get("target") or "").startswith("MISSED"):
            ours["target"] = "met: " + ", ".join(texts)
    return failures, misses


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------


def _skip_optional(name, row, rows) -> bool:
    """Liger, CCE and QuACK are optional and CUDA-only: without them (or without a GPU), a
    'skipped' row, not an error."""
    module = OPTIONAL.get(name)
    if module is None:
        return False
    if importlib.util.find_spec(module) is None:
        row["check"] = f"skipped ({module} not installed)"
    elif not str(row.get("device", "")).startswith("cpu"):
        return False
    else:
        row["check"] = f"skipped ({module} needs a GPU)"
    rows.append(row)
    print(_line(row), flush=True)
    return True


def _round(value, digits):
    return None if value is None else round(value, digits)


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text[:300]


def _line(row) -> str:
    shape = "x".join(str(row[k]) for k in ("N", "D", "V") if row.get(k) not in (None, ""))
    cells = [
        f"{row.get('part', ''):6}", f"{row.get('provider', ''):26}", f"{row.get('dtype', ''):5}",
        f"{shape:18}",
        f"{row['median_ms']:>10.3f} ms" if row.get("median_ms") is not None else f"{'':13}",
        f"{row['gbps']:>8.1f} GB/s" if row.get("gbps") is not None else f"{'':13}",
        f"{row['pct_copy']:>6.1f}%" if row.get("pct_copy") is not None else f"{'':7}",
        f"{row['peak_extra_mib']:>9.1f} MiB" if row.get("peak_extra_mib") is not None
        else f"{'':13}",
        f"{row['beyond_grads_mib']:>9.1f} MiB" if row.get("beyond_grads_mib") is not None
        else f"{'':13}",
        row.get("plan") or "", row.get("check") or "", row.get("error") or "",
    ]
    return "  ".join(cells).rstrip()


def _header() -> str:
    cells = [f"{'part':6}", f"{'provider':26}", f"{'dtype':5}", f"{'shape':18}",
             f"{'median':>13}", f"{'GB/s':>13}", f"{'%copy':>7}", f"{'peak extra':>13}",
             f"{'beyond grads':>13}", "plan / check / error"]
    return "  ".join(cells)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        # Triton fixes interpreter mode when it is imported: before any import of triton
        os.environ["TRITON_INTERPRET"] = "1"
        if "triton" in sys.modules:
            print("triton was imported before TRITON_INTERPRET could be set", file=sys.stderr)
            return 2
    import torch
    import torch.nn.functional as F

    from crossent.torch.triton import require_triton

    device = torch.device(args.device)
    try:
        require_triton(device)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 2
    env = environment(torch, device)
    print("  ".join(f"{k}={v}" for k, v in env.items() if v), flush=True)
    copy_gbps = copy_bandwidth(torch, device, args)
    print(f"device-to-device copy bandwidth: {copy_gbps:.1f} GB/s (read + write)", flush=True)
    rows = [dict(env, part="copy", provider="torch.Tensor.copy_", gbps=round(copy_gbps, 1),
                 pct_copy=100.0)]
    print("\n" + _header(), flush=True)
    if args.part in ("all", "linear"):
        run_linear(args, torch, F, device, env, rows)
    if args.part in ("all", "ce"):
        run_ce(args, torch, F, device, env, copy_gbps, rows)
    if args.part in ("all", "int64"):
        run_int64(args, torch, F, device, env, rows)

    failures, misses = verdicts(rows, device)
    print("\n" + _header() + "\n" + "\n".join(_line(r) for r in rows))
    if not args.no_csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        new = not (args.append and args.csv.exists())
        with open(args.csv, "a" if args.append else "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerows(rows)
        print(f"\nwrote {args.csv}")
    print()
    for r in rows:
        if (r.get("target") or "").startswith("met"):
            print(f"TARGET met {r['part']} {r['provider']} {r.get('dtype', '')}: "
                  f"{r['target'][5:]}")
    for line in misses + failures:
        print(line, file=sys.stderr)
    if failures:
        print(f"{len(failures)} self-check(s) FAILED", file=sys.stderr)
        return 1
    if misses:
        print(f"all self-checks passed; {len(misses)} target(s) missed", file=sys.stderr)
        return 3
    print("all self-checks passed" + ("; all targets met" if device.type == "cuda"
                                      else " (the dry run checks no targets)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

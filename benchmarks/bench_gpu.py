"""GPU benchmark: crossent's Triton cross-entropy and linear cross-entropy against PyTorch and
Liger-Kernel, self-checked against float32 references.

Part 1, cross-entropy forward + backward (class-index targets, reduction ``'mean'``), bf16 and
fp32, N x V = 16384 x 131072 and 8192 x 256000:

* ``torch``            ``F.cross_entropy(x, y)`` then ``.backward()``
* ``torch.compile``    ``torch.compile(F.cross_entropy)``, same
* ``liger``            ``liger_kernel.transformers.LigerCrossEntropyLoss`` (if importable;
                       it overwrites the logits with the gradient, as it always does)
* ``crossent``         the public ``crossent.torch.cross_entropy(x, y, impl="triton")`` +
                       ``.backward()``
* ``crossent-kernel[auto|row|split]``  the host function
                       ``crossent.torch.triton.cross_entropy.cross_entropy_fwd`` directly
                       (loss and gradient in one call, gradient into a preallocated buffer),
                       with the launch variant chosen by the rule (``auto``) or forced, so the
                       split rule can be checked against measurements.

GB/s counts the least traffic the operation needs: read the logits once, write the gradient
once, plus targets and losses (``2*N*V*bytes + 12*N``), divided by the median time; ``%copy``
compares it with this device's measured copy bandwidth (a 2 GiB device-to-device copy, read +
write).  Rows longer than one block are read twice by every provider here, so 100% is out of
reach for them by construction.

Part 2, linear cross-entropy forward + backward, bf16, N=8192, D=4096, V=128256:
``naive`` ``F.cross_entropy(h @ W.T, y)``, ``torch.compile`` of it, PyTorch's
``F.linear_cross_entropy(h, W, y, options=torch.nn.LinearCrossEntropyOptions())``,
``liger`` (``LigerFusedLinearCrossEntropyLoss``, if importable) and ``crossent``
(``crossent.torch.linear_cross_entropy(h, W, y, impl="triton")``).  Time and peak extra memory
(``torch.cuda.max_memory_allocated`` during one step minus the memory allocated before it;
it includes the gradients of h and W, 64 MiB + 1 GiB, which every provider must produce).

Part 3, a correctness check of int64 offsets: bf16 with N*V > 2**31 (8405 x 256000), the
last rows compared with a float32 reference (with int32 offsets they would read the wrong
memory).

Every provider is self-checked: loss against a float32 reference (chunked, so it fits), and
gradients (first 256 rows of the logits' gradient; for linear CE the full dh and dW) by their
worst error relative to the reference's largest magnitude.  Each provider runs inside
try/except: a failure or an out-of-memory is written to the CSV, not fatal.

Time is the median of ``triton.testing.do_bench`` (which flushes L2 before every call) on
CUDA; on CPU it is the median of a few ``time.perf_counter`` calls.

Run on a GPU (a few minutes)::

    python benchmarks/bench_gpu.py                     # everything, CSV + table
    python benchmarks/bench_gpu.py --part ce --dtype bf16 --providers crossent,torch

Smoke test on a CPU machine (tiny shapes, Triton's interpreter, ~1-2 minutes)::

    python benchmarks/bench_gpu.py --dry-run          # same as --device cpu

Results: ``benchmarks/results/bench_gpu.csv`` (``--csv``; the CPU smoke test writes
``bench_gpu_smoke_cpu.csv``), with the device, versions and date on every row, and a table
on stdout.  The exit status is 1 when a self-check failed.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import gc
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
CE_SHAPES = [(16384, 131072), (8192, 256000)]
LINEAR_SHAPE = (8192, 4096, 128256)  # N, D, V (Llama 3)
INT64_V = 256000
CPU_CE_SHAPES = [(64, 1000), (16, 20000)]
CPU_LINEAR_SHAPE = (32, 64, 500)
CE_PROVIDERS = ["torch", "torch.compile", "liger", "crossent", "crossent-kernel[auto]",
                "crossent-kernel[row]", "crossent-kernel[split]"]
LINEAR_PROVIDERS = ["naive", "torch.compile", "torch.linear_cross_entropy", "liger",
                    "crossent"]
FIELDS = ["date", "device", "torch", "triton", "crossent", "liger_kernel", "cuda", "git",
          "part", "provider", "dtype", "N", "D", "V", "plan", "median_ms", "gbps", "pct_copy",
          "peak_extra_mib", "check", "error"]


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="crossent Triton kernels vs PyTorch / torch.compile / Liger on a GPU "
                    "(CSV + table); --dry-run checks the script on a CPU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cpu runs tiny shapes in Triton's interpreter (a smoke test)")
    p.add_argument("--dry-run", action="store_true", help="the same as --device cpu")
    p.add_argument("--part", default="all", choices=["all", "ce", "linear", "int64"])
    p.add_argument("--dtype", default="bf16,fp32", help="cross-entropy dtypes (bf16, fp32)")
    p.add_argument("--providers", default="",
                   help="comma-separated subset of providers (default: all); names: "
                        + ", ".join(dict.fromkeys(CE_PROVIDERS + LINEAR_PROVIDERS)))
    p.add_argument("--warmup", type=int, default=100, help="do_bench warm-up budget, ms")
    p.add_argument("--rep", type=int, default=500, help="do_bench measuring budget, ms")
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
    args.only = {s.strip() for s in args.providers.split(",") if s.strip()}
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
        "cuda": torch.version.cuda or "", "git": git,
    }


def timed(fn, device, args, grad_to_none=None) -> float:
    """Median milliseconds of ``fn()``."""
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=args.warmup, rep=args.rep,
                                             grad_to_none=grad_to_none,
                                             return_mode="median"))
    times = []
    for _ in range(3):
        if grad_to_none:
            for t in grad_to_none:
                t.grad = None
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


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


# --------------------------------------------------------------------------------------------
# Part 1: cross-entropy
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


def ce_provider(name, torch, F, x, y):
    """``(step, check_step, plan)``: step() runs forward + backward (timed); check_step()
    runs once on fresh inputs and returns (mean loss, gradient of the first rows)."""
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
        fn = torch.compile(F.cross_entropy)
    elif name == "liger":
        from liger_kernel.transformers import LigerCrossEntropyLoss

        fn = LigerCrossEntropyLoss()
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
                if _skip_liger(name, row, rows):
                    continue
                try:
                    step, check_step, plan, leaves = ce_provider(name, torch, F, x, y)
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
# Part 2: linear cross-entropy
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


def linear_provider(name, torch, F):
    if name == "naive":
        def fn(h, w, y):
            return F.cross_entropy(h @ w.T, y)
    elif name == "torch.compile":
        fn = torch.compile(lambda h, w, y: F.cross_entropy(h @ w.T, y))
    elif name == "torch.linear_cross_entropy":
        options = torch.nn.LinearCrossEntropyOptions()

        def fn(h, w, y):
            return F.linear_cross_entropy(h, w, y, options=options)
    elif name == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        module = LigerFusedLinearCrossEntropyLoss()

        def fn(h, w, y):
            return module(w, h, y)
    elif name == "crossent":
        import crossent.torch

        def fn(h, w, y):
            return crossent.torch.linear_cross_entropy(h, w, y, impl="triton")
    else:
        raise ValueError(f"unknown provider {name!r}")
    return fn


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
    for name in LINEAR_PROVIDERS:
        if args.only and name not in args.only:
            continue
        row = dict(env, part="linear", provider=name, dtype="bf16", N=n, D=d, V=v)
        if _skip_liger(name, row, rows):
            continue
        try:
            fn = linear_provider(name, torch, F)
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
            row["peak_extra_mib"] = _round(peak_extra_mib(torch, step, device), 1)
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
# output
# --------------------------------------------------------------------------------------------


def _skip_liger(name, row, rows) -> bool:
    """Liger is optional: without it, a 'skipped' row instead of an error."""
    import importlib.util

    if name != "liger" or importlib.util.find_spec("liger_kernel") is not None:
        return False
    row["check"] = "skipped (liger_kernel not installed)"
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
        f"{shape:20}",
        f"{row['median_ms']:>10.3f} ms" if row.get("median_ms") is not None else f"{'':13}",
        f"{row['gbps']:>8.1f} GB/s" if row.get("gbps") is not None else f"{'':13}",
        f"{row['pct_copy']:>6.1f}%" if row.get("pct_copy") is not None else f"{'':7}",
        f"{row['peak_extra_mib']:>10.1f} MiB" if row.get("peak_extra_mib") is not None
        else f"{'':14}",
        row.get("plan") or "", row.get("check") or "", row.get("error") or "",
    ]
    return "  ".join(cells).rstrip()


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
    if args.part in ("all", "ce"):
        run_ce(args, torch, F, device, env, copy_gbps, rows)
    if args.part in ("all", "linear"):
        run_linear(args, torch, F, device, env, rows)
    if args.part in ("all", "int64"):
        run_int64(args, torch, F, device, env, rows)

    print("\n" + "\n".join(_line(r) for r in rows))
    failed = [r for r in rows if (r.get("check") or "").startswith("FAIL")]
    if not args.no_csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        new = not (args.append and args.csv.exists())
        with open(args.csv, "a" if args.append else "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerows(rows)
        print(f"\nwrote {args.csv}")
    if failed:
        print(f"\n{len(failed)} self-check(s) FAILED", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

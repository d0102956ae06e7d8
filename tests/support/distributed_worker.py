"""The gloo cases of ``tests/torch/test_distributed_gloo.py``: one run of 4 processes.

``python distributed_worker.py OUT_DIR`` imports torch once, forks 4 ranks that form a
gloo process group (CPU), runs every case on the groups it needs (2 and 3 ranks of the
world, and the 2 x 2 data x tensor mesh of all four), and writes each rank's results to
``OUT_DIR/rank<r>.json``: per case, the worst errors against the float64 reference, the
counted collectives and anything else the test asserts.  An exception in a case is recorded
as that case's ``error`` (the other cases still run); the test turns it into a failure.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

WORLD = 4
C = 1001  # the example: V = 1001 over 3 ranks, uneven
BOUNDS = {2: [0, 600, C], 3: [0, 334, 668, C]}


def _err(a, b):
    return float((a.detach().double() - b.detach().double()).abs().max())


def _counts(mode):
    return {str(op).split(".")[-1].split("'")[0]: n for op, n in mode.get_comm_counts().items()}


def _data(seed, rows=24, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, C, generator=g, dtype=dtype) * 3
    y = torch.randint(0, C, (rows,), generator=g)
    y[::5] = -100
    w = torch.rand(C, generator=g, dtype=dtype) + 0.1
    return x, y, w


def case_options(group, size, rank):
    """Every option of the loss on 2 and 3 uneven ranks, against F.cross_entropy /
    crossent.torch.cross_entropy in float64; both exchanges; counted collectives."""
    from torch.distributed.tensor.debug import CommDebugMode

    import crossent.torch as ct
    from crossent.torch.distributed import vocab_parallel_cross_entropy

    a, b = BOUNDS[size][rank], BOUNDS[size][rank + 1]
    x, y, w = _data(1)
    out = {}
    grid = [
        ("plain", {}),
        ("weight-smooth", dict(weight=w, label_smoothing=0.1)),
        ("sum-zloss-softcap", dict(reduction="sum", z_loss=1e-3, softcap=20.0)),
        ("none-ignore3", dict(reduction="none", ignore_index=3, label_smoothing=0.2)),
    ]
    y3 = torch.where(y == -100, 3, y)  # ignore_index=3 is a real class here
    for name, kw in grid:
        target = y3 if kw.get("ignore_index") == 3 else y
        for combine in ("all_gather", "all_reduce"):
            xs = x[:, a:b].clone().requires_grad_()
            with CommDebugMode() as fwd:
                loss = vocab_parallel_cross_entropy(xs, target, group=group, vocab_start=a,
                                                    num_classes=C, combine=combine, **kw)
            upstream = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype)
            with CommDebugMode() as bwd:
                loss.backward(upstream.reshape(loss.shape))
            xx = x.clone().requires_grad_()
            ref = ct.cross_entropy(xx, target, **kw)
            ref.backward(upstream.reshape(ref.shape))
            out[f"{name}/{combine}"] = dict(
                loss=_err(loss, ref.detach()), grad=_err(xs.grad, xx.grad[:, a:b]),
                fwd=_counts(fwd), bwd=_counts(bwd))
    # probability targets: this rank's slice
    g = torch.Generator().manual_seed(11)  # the same on every rank
    t = torch.softmax(torch.randn(24, C, generator=g, dtype=torch.float64), 1)
    xs = x[:, a:b].clone().requires_grad_()
    loss = vocab_parallel_cross_entropy(xs, t[:, a:b].contiguous(), group=group,
                                        vocab_start=a, num_classes=C, label_smoothing=0.1)
    loss.backward()
    xx = x.clone().requires_grad_()
    ref = F.cross_entropy(xx, t, label_smoothing=0.1)
    ref.backward()
    out["probability"] = dict(loss=_err(loss, ref.detach()), grad=_err(xs.grad,
                                                                       xx.grad[:, a:b]))
    # padded vocabulary: the last rank holds 7 padded columns; vocab_start derived
    pad = 7
    xp = torch.cat([x, torch.full((24, pad), 50.0, dtype=x.dtype)], 1)
    bounds = [*BOUNDS[size][:-1], C + pad]
    a2, b2 = bounds[rank], bounds[rank + 1]
    xs = xp[:, a2:b2].clone().requires_grad_()
    loss = vocab_parallel_cross_entropy(xs, y, group=group, num_classes=C, label_smoothing=0.1)
    loss.backward()
    xx = x.clone().requires_grad_()
    ref = F.cross_entropy(xx, y, label_smoothing=0.1)
    ref.backward()
    real = max(0, min(b2, C) - a2)
    out["padded-derived"] = dict(
        loss=_err(loss, ref.detach()), grad=_err(xs.grad[:, :real], xx.grad[:, a2:a2 + real]),
        padding_grad=float(xs.grad[:, real:].abs().sum()))
    # label smoothing: every rank holds the same loss, bit for bit
    xs = x[:, a:b].float().clone()
    loss = vocab_parallel_cross_entropy(xs, y, group=group, vocab_start=a, num_classes=C,
                                        label_smoothing=0.1)
    gathered = [torch.zeros_like(loss) for _ in range(size)]
    dist.all_gather(gathered, loss, group=group)
    out["same-on-every-rank"] = dict(spread=float(max(gathered) - min(gathered)),
                                     loss=_err(loss, F.cross_entropy(x.float(), y,
                                                                     label_smoothing=0.1)))
    return out


def case_linear(group, size, rank):
    """The linear op with and without sequence parallelism, float64, counted."""
    from torch.distributed.tensor.debug import CommDebugMode

    from crossent.torch.distributed import vocab_parallel_linear_cross_entropy

    a, b = BOUNDS[size][rank], BOUNDS[size][rank + 1]
    g = torch.Generator().manual_seed(2)
    S = 4 * size
    h = torch.randn(S, 2, 16, generator=g, dtype=torch.float64)
    W = torch.randn(C, 16, generator=g, dtype=torch.float64)
    bias = torch.randn(C, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (S, 2), generator=g)
    y[1] = -100
    hh, WW, bb = (t.clone().requires_grad_() for t in (h, W, bias))
    ref = F.cross_entropy(F.linear(hh, WW, bb).reshape(-1, C), y.reshape(-1),
                          label_smoothing=0.1)
    ref.backward()
    out = {}
    for sp in (False, True):
        local = h[4 * rank:4 * rank + 4] if sp else h
        hs = local.clone().requires_grad_()
        ws = W[a:b].clone().requires_grad_()
        bs = bias[a:b].clone().requires_grad_()
        with CommDebugMode() as fwd:
            loss = vocab_parallel_linear_cross_entropy(
                hs, ws, y, group=group, linear_bias=bs, vocab_start=a, num_classes=C,
                sequence_parallel=sp, label_smoothing=0.1, chunk_size=7)
        with CommDebugMode() as bwd:
            loss.backward()
        dh_ref = hh.grad[4 * rank:4 * rank + 4] if sp else hh.grad
        out["sp" if sp else "replicated"] = dict(
            loss=_err(loss, ref.detach()), dh=_err(hs.grad, dh_ref),
            dw=_err(ws.grad, WW.grad[a:b]), db=_err(bs.grad, bb.grad[a:b]),
            fwd=_counts(fwd), bwd=_counts(bwd))
    return out


def case_loss_parallel(group, size, rank):
    """Parity with torch.distributed.tensor.parallel.loss_parallel where it supports the
    options: index targets, weight, ignore_index, every reduction, 1-D mesh."""
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import Shard, distribute_tensor
    from torch.distributed.tensor.parallel import loss_parallel

    from crossent.torch.distributed import vocab_parallel_cross_entropy

    mesh = DeviceMesh.from_group(group, "cpu")
    x, y, w = _data(3, dtype=torch.float32)
    y_no_ignore = y.clone()
    y_no_ignore[::5] = 1
    out = {}
    # loss_parallel fails in backward with weight and ignored targets (a negative index
    # reaches torch.gather): weights are compared on targets without ignored rows
    for name, target, weight in (("ignore", y, None), ("weight", y_no_ignore, w)):
        for reduction in ("mean", "sum", "none"):
            xd = distribute_tensor(x, mesh, [Shard(1)]).requires_grad_()
            with loss_parallel():
                lp = F.cross_entropy(xd, target, weight, reduction=reduction)
                (lp.sum() if reduction == "none" else lp).backward()
            xc = distribute_tensor(x, mesh, [Shard(1)]).requires_grad_()
            ours = vocab_parallel_cross_entropy(xc, target, weight=weight, reduction=reduction)
            (ours.sum() if reduction == "none" else ours).backward()
            xx = x.double().requires_grad_()
            ref = F.cross_entropy(xx, target, weight.double() if weight is not None else None,
                                  reduction=reduction)
            (ref.sum() if reduction == "none" else ref).backward()
            out[f"{name}/{reduction}"] = dict(
                ours=_err(ours.full_tensor(), ref.detach()),
                loss_parallel=_err(lp.full_tensor(), ref.detach()),
                ours_grad=_err(xc.grad.full_tensor(), xx.grad),
                loss_parallel_grad=_err(xd.grad.full_tensor(), xx.grad),
                parity=_err(ours.full_tensor(), lp.full_tensor()))
    # what loss_parallel refuses
    xd = distribute_tensor(x, mesh, [Shard(1)]).requires_grad_()
    try:
        with loss_parallel():
            F.cross_entropy(xd, y, label_smoothing=0.1)
        refused = ""
    except Exception as exc:  # noqa: BLE001 - recorded
        refused = f"{type(exc).__name__}: {exc}"[:200]
    ours = vocab_parallel_cross_entropy(distribute_tensor(x, mesh, [Shard(1)]), y,
                                        label_smoothing=0.1)
    out["smoothing"] = dict(loss_parallel_refuses=refused,
                            ours=_err(ours.full_tensor(),
                                      F.cross_entropy(x.double(), y, label_smoothing=0.1)))
    return out


def case_mesh_2x2(rank):
    """A 2 x 2 (data x tensor) mesh: DTensor logits sharded (Shard(0), Shard(1)), every
    reduction, parity with loss_parallel on 'sum' and 'none' (it refuses 'mean' there)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    from torch.distributed.tensor.parallel import loss_parallel

    from crossent.torch.distributed import vocab_parallel_cross_entropy

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    x, y, w = _data(4, dtype=torch.float32)
    out = {}
    for reduction in ("mean", "sum", "none"):
        xd = distribute_tensor(x, mesh, [Shard(0), Shard(1)]).requires_grad_()
        yd = distribute_tensor(y, mesh, [Shard(0), Replicate()])
        ours = vocab_parallel_cross_entropy(xd, yd, reduction=reduction, label_smoothing=0.1)
        (ours.sum() if reduction == "none" else ours).backward()
        xx = x.double().requires_grad_()
        ref = F.cross_entropy(xx, y, reduction=reduction, label_smoothing=0.1)
        (ref.sum() if reduction == "none" else ref).backward()
        entry = dict(ours=_err(ours.full_tensor(), ref.detach()),
                     grad=_err(xd.grad.full_tensor(), xx.grad), placements=str(ours.placements))
        if reduction != "mean":
            xl = distribute_tensor(x, mesh, [Shard(0), Shard(1)]).requires_grad_()
            plain = distribute_tensor(x, mesh, [Shard(0), Shard(1)])
            with loss_parallel():
                lp = F.cross_entropy(xl, yd, reduction=reduction)
                (lp.sum() if reduction == "none" else lp).backward()
            ours_plain = vocab_parallel_cross_entropy(plain, yd, reduction=reduction)
            entry["parity"] = _err(ours_plain.full_tensor(), lp.full_tensor())
        out[reduction] = entry
    return out


def run_rank(rank, out_dir):
    torch.set_num_threads(1)
    os.environ["CROSSENT_NUM_THREADS"] = "1"
    dist.init_process_group("gloo", rank=rank, world_size=WORLD,
                            init_method=f"file://{out_dir}/store")
    groups = {size: dist.new_group(list(range(size))) for size in (2, 3)}
    results = {}

    def record(name, fn, *args):
        start = time.perf_counter()
        try:
            results[name] = fn(*args)
        except Exception:  # noqa: BLE001 - recorded for the test to report
            results[name] = {"error": traceback.format_exc()}
        results.setdefault("seconds", {})[name] = round(time.perf_counter() - start, 2)

    for size, group in groups.items():
        if rank < size:
            record(f"options-{size}", case_options, group, size, rank)
            record(f"linear-{size}", case_linear, group, size, rank)
            record(f"loss_parallel-{size}", case_loss_parallel, group, size, rank)
        dist.barrier()
    record("mesh-2x2", case_mesh_2x2, rank)
    dist.barrier()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    out_dir = sys.argv[1]
    import crossent.torch.distributed  # noqa: F401 - imported once, before the fork
    # fork: the children share this process's imports (torch, crossent) instead of each
    # importing them again; nothing has started threads or a process group yet
    mp.start_processes(run_rank, args=(out_dir,), nprocs=WORLD, start_method="fork")

"""crossent.torch.distributed on a real ``torch.distributed`` process group whose ranks are
threads (PyTorch's threaded test backend): the functional collectives, DTensor meshes and
autograd run for real, in a fraction of a second per case.  The collectives are counted
with ``CommDebugMode``: forward at most two, backward none for the loss and exactly one
(``d input``) for the linear op."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)
import torch.nn.functional as F  # noqa: E402
from shard_cases import run_threaded_group  # noqa: E402
from torch.distributed.device_mesh import init_device_mesh  # noqa: E402
from torch.distributed.tensor import Replicate, Shard, distribute_tensor  # noqa: E402
from torch.distributed.tensor.debug import CommDebugMode  # noqa: E402

from crossent.torch.distributed import (  # noqa: E402
    global_mean_scale,
    vocab_parallel_cross_entropy,
    vocab_parallel_linear_cross_entropy,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning",
                                        "ignore::FutureWarning", "ignore::UserWarning")

C = 11


def counts(mode: CommDebugMode) -> dict[str, int]:
    """Collective name -> calls, e.g. {'all_gather_into_tensor': 1}."""
    return {str(op).split(".")[-1].split("'")[0]: n for op, n in mode.get_comm_counts().items()}


def graph_collectives(gm) -> dict[str, int]:
    """Functional collectives called in a traced FX graph, by name."""
    found: dict[str, int] = {}
    for node in gm.graph.nodes:
        name = str(node.target)
        if node.op == "call_function" and "c10d_functional" in name and "wait" not in name:
            key = name.split(".")[1]
            found[key] = found.get(key, 0) + 1
    return found


def case(seed=0, rows=8, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, C, generator=g, dtype=dtype) * 3
    y = torch.randint(0, C, (rows,), generator=g)
    y[2] = -100
    w = torch.rand(C, generator=g, dtype=dtype) + 0.1
    return x, y, w


def reference(x, y, **kw):
    xx = x.clone().requires_grad_()
    loss = F.cross_entropy(xx, y, **kw)
    loss.backward()
    return loss.detach(), xx.grad


@pytest.mark.parametrize("bounds", [[0, 6, 11], [0, 1, 4, 11], [0, 3, 4, 10, 11]],
                         ids=["2-uneven", "3-one-column", "4-uneven"])
def test_collectives_counted_and_values(bounds):
    world = len(bounds) - 1
    x, y, w = case(1)
    kw = dict(weight=w, label_smoothing=0.1)

    def rank_fn(rank):
        a, b = bounds[rank], bounds[rank + 1]
        out = {}
        for combine in ("all_gather", "all_reduce"):
            xs = x[:, a:b].clone().requires_grad_()
            with CommDebugMode() as fwd:
                loss = vocab_parallel_cross_entropy(xs, y, vocab_start=a, num_classes=C,
                                                    combine=combine, **kw)
            with CommDebugMode() as bwd:
                loss.backward()
            out[combine] = (loss.detach(), xs.grad, counts(fwd), counts(bwd))
        xs = x[:, a:b].clone().requires_grad_()
        with CommDebugMode() as derived:  # vocab_start from the shard sizes: one more
            loss = vocab_parallel_cross_entropy(xs, y, **kw)
        out["derived"] = (loss.detach(), counts(derived))
        return out

    results = run_threaded_group(world, rank_fn)
    expected, expected_grad = reference(x, y, **kw)
    for combine, fwd_counts in (("all_gather", {"all_gather_into_tensor": 1}),
                                ("all_reduce", {"all_reduce": 2})):
        for loss, _, fwd, bwd in (r[combine] for r in results):
            torch.testing.assert_close(loss, expected, rtol=1e-13, atol=1e-13)
            assert fwd == fwd_counts and bwd == {}
        grad = torch.cat([r[combine][1] for r in results], 1)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-13, atol=1e-13)
    for loss, derived in (r["derived"] for r in results):
        torch.testing.assert_close(loss, expected, rtol=1e-13, atol=1e-13)
        assert derived == {"all_gather_into_tensor": 2}


@pytest.mark.parametrize("sequence_parallel", [False, True])
def test_linear_op_collectives_and_sequence_parallel(sequence_parallel):
    bounds = [0, 4, 11]
    g = torch.Generator().manual_seed(2)
    h = torch.randn(6, 2, 5, generator=g, dtype=torch.float64)  # (S, B, D), S split under SP
    W = torch.randn(C, 5, generator=g, dtype=torch.float64)
    b = torch.randn(C, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (6, 2), generator=g)
    y[1, 1] = -100

    def rank_fn(rank):
        a, e = bounds[rank], bounds[rank + 1]
        hh = (h[3 * rank:3 * rank + 3] if sequence_parallel else h).clone().requires_grad_()
        ws = W[a:e].clone().requires_grad_()
        bs = b[a:e].clone().requires_grad_()
        with CommDebugMode() as fwd:
            loss = vocab_parallel_linear_cross_entropy(
                hh, ws, y, linear_bias=bs, vocab_start=a, num_classes=C, label_smoothing=0.1,
                z_loss=1e-3, sequence_parallel=sequence_parallel, chunk_size=5)
        with CommDebugMode() as bwd:
            loss.backward()
        return loss.detach(), hh.grad, ws.grad, bs.grad, counts(fwd), counts(bwd)

    results = run_threaded_group(2, rank_fn)
    hh, WW, bb = (t.clone().requires_grad_() for t in (h, W, b))
    import crossent.torch as ct

    expected = ct.cross_entropy(F.linear(hh, WW, bb).reshape(-1, C), y.reshape(-1),
                                label_smoothing=0.1, z_loss=1e-3)
    expected.backward()
    for rank, (loss, dh, _, _, fwd, bwd) in enumerate(results):
        torch.testing.assert_close(loss, expected.detach(), rtol=1e-13, atol=1e-13)
        if sequence_parallel:  # this rank's rows of d input, by a reduce-scatter
            torch.testing.assert_close(dh, hh.grad[3 * rank:3 * rank + 3], rtol=1e-13,
                                       atol=1e-13)
            assert fwd == {"all_gather_into_tensor": 2}  # the input, then the statistics
            assert bwd == {"reduce_scatter_tensor": 1}
        else:
            torch.testing.assert_close(dh, hh.grad, rtol=1e-13, atol=1e-13)
            assert fwd == {"all_gather_into_tensor": 1} and bwd == {"all_reduce": 1}
    torch.testing.assert_close(torch.cat([r[2] for r in results]), WW.grad, rtol=1e-13,
                               atol=1e-13)
    torch.testing.assert_close(torch.cat([r[3] for r in results]), bb.grad, rtol=1e-13,
                               atol=1e-13)


def test_dtensor_on_a_1d_mesh_and_a_2x2_data_tensor_mesh():
    """A DTensor brings its group and offset: on a 1-D mesh the loss is replicated; on a
    (data, tensor) mesh with rows sharded over 'dp' the 'mean' is the global batch's (via a
    Partial placement and a global denominator; loss_parallel refuses 'mean' there)."""
    x, y, w = case(3, rows=8)
    kw = dict(weight=w, label_smoothing=0.1)

    def rank_fn(rank):
        out = {}
        mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
        for reduction in ("mean", "sum", "none"):
            xd = distribute_tensor(x, mesh, [Shard(0), Shard(1)]).requires_grad_()
            yd = distribute_tensor(y, mesh, [Shard(0), Replicate()])
            loss = vocab_parallel_cross_entropy(xd, yd, reduction=reduction, **kw)
            (loss.sum() if reduction == "none" else loss).backward()
            out[reduction] = (loss.full_tensor(), xd.grad.full_tensor(), loss.placements)
        tp = mesh["tp"]  # the 1-D tensor-parallel sub-mesh, as torchtitan's model holds it
        xd = distribute_tensor(x, tp, [Shard(1)]).requires_grad_()
        with CommDebugMode() as fwd:
            loss = vocab_parallel_cross_entropy(xd, y, **kw)
        loss.backward()
        out["1d"] = (loss.full_tensor(), xd.grad.full_tensor(), loss.placements, counts(fwd))
        # the linear op with the head's rows sharded over 'tp', input rows over 'dp'
        g = torch.Generator().manual_seed(4)
        h = torch.randn(8, 5, generator=g, dtype=torch.float64)
        W = torch.randn(C, 5, generator=g, dtype=torch.float64)
        hd = distribute_tensor(h, mesh, [Shard(0), Replicate()]).requires_grad_()
        Wd = distribute_tensor(W, mesh, [Replicate(), Shard(0)]).requires_grad_()
        yd = distribute_tensor(y, mesh, [Shard(0), Replicate()])
        loss = vocab_parallel_linear_cross_entropy(hd, Wd, yd, **kw)
        loss.backward()
        out["linear"] = (loss.full_tensor(), hd.grad.full_tensor(), Wd.grad.full_tensor())
        return out

    results = run_threaded_group(4, rank_fn)
    for reduction, placements in (("mean", "(Partial(sum), Replicate())"),
                                  ("sum", "(Partial(sum), Replicate())"),
                                  ("none", "(Shard(dim=0), Replicate())")):
        expected, expected_grad = reference(
            x, y, reduction=reduction, **kw) if reduction != "none" else _none_ref(x, y, kw)
        for loss, grad, got in (r[reduction] for r in results):
            assert str(got) == placements
            torch.testing.assert_close(loss, expected, rtol=1e-13, atol=1e-13)
            torch.testing.assert_close(grad, expected_grad, rtol=1e-13, atol=1e-13)
    expected, expected_grad = reference(x, y, **kw)
    for loss, grad, got, fwd in (r["1d"] for r in results):
        assert str(got) == "(Replicate(),)" and fwd == {"all_gather_into_tensor": 1}
        torch.testing.assert_close(loss, expected, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-13, atol=1e-13)
    g = torch.Generator().manual_seed(4)
    h = torch.randn(8, 5, generator=g, dtype=torch.float64).requires_grad_()
    W = torch.randn(C, 5, generator=g, dtype=torch.float64).requires_grad_()
    ref = F.cross_entropy(h @ W.T, y, **kw)
    ref.backward()
    for loss, dh, dw in (r["linear"] for r in results):
        torch.testing.assert_close(loss, ref.detach(), rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(dh, h.grad, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(dw, W.grad, rtol=1e-13, atol=1e-13)


def test_dtensor_sequence_parallel_linear_op():
    """An input DTensor sharded on its rows over the tensor-parallel mesh means sequence
    parallelism: gathered in forward, d input reduce-scattered back to this rank's rows."""
    g = torch.Generator().manual_seed(8)
    h = torch.randn(6, 3, 5, generator=g, dtype=torch.float64)
    W = torch.randn(C, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (6, 3), generator=g)

    def rank_fn(rank):
        mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("tp",))
        hd = distribute_tensor(h, mesh, [Shard(0)]).requires_grad_()
        Wd = distribute_tensor(W, mesh, [Shard(0)]).requires_grad_()
        loss = vocab_parallel_linear_cross_entropy(hd, Wd, y, z_loss=1e-3)
        with CommDebugMode() as bwd_mode:
            loss.backward()
        return (loss.full_tensor(), hd.grad.full_tensor(), Wd.grad.full_tensor(),
                str(hd.grad.placements), counts(bwd_mode))

    results = run_threaded_group(2, rank_fn)
    import crossent.torch as ct

    hh, WW = h.clone().requires_grad_(), W.clone().requires_grad_()
    ref = ct.cross_entropy((hh @ WW.T).reshape(-1, C), y.reshape(-1), z_loss=1e-3)
    ref.backward()
    for loss, dh, dw, placements, bwd in results:
        torch.testing.assert_close(loss, ref.detach(), rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(dh, hh.grad, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(dw, WW.grad, rtol=1e-13, atol=1e-13)
        assert placements == "(Shard(dim=0),)"
        assert bwd.get("reduce_scatter_tensor") == 1 and "all_reduce" not in bwd


def test_dtensor_linear_op_none_keeps_the_global_shape_of_uneven_rows():
    """reduction='none' of the linear op is a DTensor of the global loss shape, also when the
    rows split unevenly over 'dp' (7 rows over 2 ranks: its shape cannot be inferred from one
    rank's piece); a DTensor target on another mesh is refused, naming both meshes."""
    g = torch.Generator().manual_seed(9)
    h = torch.randn(7, 5, generator=g, dtype=torch.float64)
    W = torch.randn(C, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (7,), generator=g)

    def rank_fn(rank):
        mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
        hd = distribute_tensor(h, mesh, [Shard(0), Replicate()])
        Wd = distribute_tensor(W, mesh, [Replicate(), Shard(0)])
        yd = distribute_tensor(y, mesh, [Shard(0), Replicate()])
        loss = vocab_parallel_linear_cross_entropy(hd, Wd, yd, reduction="none",
                                                   label_smoothing=0.1)
        flat = init_device_mesh("cpu", (4,))
        xd = distribute_tensor(h @ W.T, mesh, [Shard(0), Shard(1)])
        try:
            vocab_parallel_cross_entropy(xd, distribute_tensor(y, flat, [Replicate()]))
            refusal = None
        except ValueError as error:
            refusal = str(error)
        return tuple(loss.shape), tuple(loss.stride()), loss.full_tensor(), refusal

    results = run_threaded_group(4, rank_fn)
    expected = F.cross_entropy(h @ W.T, y, reduction="none", label_smoothing=0.1)
    for shape, stride, loss, refusal in results:
        assert shape == (7,) and stride == (1,)
        torch.testing.assert_close(loss, expected, rtol=1e-13, atol=1e-13)
        assert refusal.startswith("target must be on the logits' device mesh DeviceMesh(")
        assert ", got DeviceMesh(" in refusal


def _none_ref(x, y, kw):
    xx = x.clone().requires_grad_()
    loss = F.cross_entropy(xx, y, reduction="none", **kw)
    loss.sum().backward()
    return loss.detach(), xx.grad


def test_global_mean_over_data_parallel_ranks_and_micro_batches():
    """2 data-parallel ranks x 3 micro-batches each (uneven, with ignored tokens and class
    weights), a 2-way tensor-parallel head: 'sum' losses times global_mean_scale, gradients
    accumulated over the micro-batches and averaged over the data-parallel ranks as DDP does,
    are exactly the gradient of F.cross_entropy over the whole global batch."""
    g = torch.Generator().manual_seed(5)
    sizes = [[3, 5, 2], [4, 1, 6]]  # rows per micro-batch, per data-parallel rank
    batches = [[(torch.randn(n, C, generator=g, dtype=torch.float64),
                 torch.randint(0, C, (n,), generator=g)) for n in ranks] for ranks in sizes]
    batches[0][1][1][2] = -100
    batches[1][2][1][:3] = -100
    w = torch.rand(C, generator=g, dtype=torch.float64) + 0.2
    bounds = [0, 7, C]

    def rank_fn(rank):
        mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
        dp, tp = mesh.get_local_rank("dp"), mesh.get_local_rank("tp")
        a, b = bounds[tp], bounds[tp + 1]
        with CommDebugMode() as comm:
            scale = global_mean_scale([y for _, y in batches[dp]], group=mesh["dp"], weight=w,
                                      dtype=torch.float64)
        grads, total = [], 0.0
        for x, y in batches[dp]:
            xs = x[:, a:b].clone().requires_grad_()
            loss = vocab_parallel_cross_entropy(xs, y, group=mesh["tp"], vocab_start=a,
                                                num_classes=C, weight=w, reduction="sum")
            (loss * scale).backward()
            grads.append(xs.grad)
            total += float(loss * scale)
        return dp, tp, grads, total, counts(comm), scale.dtype

    results = run_threaded_group(4, rank_fn)
    xs = [x for ranks in batches for x, _ in ranks]
    ys = [y for ranks in batches for _, y in ranks]
    big = torch.cat(xs).requires_grad_()
    expected = F.cross_entropy(big, torch.cat(ys), w)
    expected.backward()
    expected_grads = big.grad.split([x.shape[0] for x in xs])
    k = 0
    for dp in range(2):
        for mb in range(3):
            # DDP averages over the data-parallel ranks: its gradient is a rank's over 2
            ours = torch.cat([r[2][mb] for r in sorted(results, key=lambda r: r[1])
                              if r[0] == dp], 1) / 2
            torch.testing.assert_close(ours, expected_grads[k], rtol=1e-13, atol=1e-14)
            k += 1
    mean_of_totals = sum(r[3] for r in results if r[1] == 0) / 2
    assert abs(mean_of_totals - expected.item()) < 1e-12
    assert all(r[4] == {"all_reduce": 1} and r[5] == torch.float64 for r in results)


@pytest.mark.skipif(not dist.is_gloo_available(), reason="gloo is not available")
def test_compile_fullgraph_traces_the_functional_collectives():
    """torch.compile(fullgraph=True) traces the loss (both exchanges), the linear op and
    global_mean_scale: functional collectives and crossent's custom ops, no graph break and
    no host synchronisation (a .item() would break the graph).  On a one-rank gloo group with
    the exchanges forced, so the collectives are in the graph; numbers equal eager's."""
    if dist.is_initialized():
        pytest.skip("a default process group already exists in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        x, y, w = case(6, dtype=torch.float32)
        g = torch.Generator().manual_seed(7)
        h = torch.randn(8, 5, generator=g)
        W = torch.randn(C, 5, generator=g)

        def step(xs, hs, ws):
            scale = global_mean_scale(y, weight=w)
            loss = vocab_parallel_cross_entropy(xs, y, vocab_start=0, num_classes=C, weight=w,
                                                label_smoothing=0.1, reduction="sum",
                                                combine="all_gather")
            lin = vocab_parallel_linear_cross_entropy(hs, ws, y, vocab_start=0, num_classes=C,
                                                      z_loss=1e-3, combine="all_reduce")
            return loss * scale, lin

        from functorch.compile import make_boxed_func, min_cut_rematerialization_partition
        from torch._dynamo.backends.common import aot_autograd

        graphs = {}

        def keep(name):
            def compiler(gm, example_inputs):
                graphs[name] = gm
                return make_boxed_func(gm.forward)

            return compiler

        # the partitioner of aot_eager and inductor (the default one leaves dead forward code,
        # collectives included, in the backward graph)
        backend = aot_autograd(fw_compiler=keep("forward"), bw_compiler=keep("backward"),
                               partition_fn=min_cut_rematerialization_partition)
        compiled = torch.compile(step, fullgraph=True, backend=backend)
        args = [t.clone().requires_grad_() for t in (x, h, W)]
        loss, lin = compiled(*args)
        (loss + lin).backward()
        eager = [t.clone().requires_grad_() for t in (x, h, W)]
        eloss, elin = step(*eager)
        (eloss + elin).backward()
        torch.testing.assert_close(loss, eloss, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(lin, elin, rtol=1e-6, atol=1e-6)
        for ours, theirs in zip(args, eager):
            torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(eloss, F.cross_entropy(x, y, w, label_smoothing=0.1),
                                   rtol=1e-6, atol=1e-6)
        # the collectives in the traced graphs: forward, the loss's all-gather and the linear
        # op's MAX + SUM all-reduces; backward, only the linear op's d input all-reduce
        assert graph_collectives(graphs["forward"]) == {"all_gather_into_tensor": 1,
                                                        "all_reduce": 2}
        assert graph_collectives(graphs["backward"]) == {"all_reduce": 1}
    finally:
        dist.destroy_process_group()

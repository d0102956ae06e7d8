"""Shared by the shard-pass tests: run the pass over a split of the classes, and the
float64 reference it must equal (``crossent.torch.cross_entropy_ref``: ``F.cross_entropy``
plus the z-loss and softcap formulas)."""

from __future__ import annotations

import torch

from crossent.torch import _shard
from crossent.torch._params import CrossEntropyParams
from crossent.torch.reference import cross_entropy_ref

# (id, params, weighted): every option of the family, each for a reason
OPTIONS = [
    ("index", CrossEntropyParams(), False),
    # weights scale the target term and the 'mean' denominator
    ("index-weight", CrossEntropyParams(), True),
    # smoothing with weights: every class of every shard enters the dot, eps/C over real C
    ("index-smooth-weight", CrossEntropyParams(label_smoothing=0.1), True),
    # eps = 1: the target's own coefficient is 0, only the uniform part is left
    ("index-smooth-1", CrossEntropyParams(label_smoothing=1.0), False),
    # z-loss weighted by w[y]: lse is global, so every shard's gradient has 2 z w lse p
    ("index-zloss-weight", CrossEntropyParams(z_loss=1e-2), True),
    # softcap applied elementwise before the statistics
    ("index-softcap", CrossEntropyParams(softcap=2.5), False),
    # everything, with ignore_index a real class (3): class 3 stays in every softmax
    ("index-all", CrossEntropyParams(ignore_index=3, label_smoothing=0.2, z_loss=1e-3,
                                     softcap=4.0), True),
    ("prob", CrossEntropyParams(probability=True), False),
    ("prob-smooth-weight", CrossEntropyParams(probability=True, label_smoothing=0.1), True),
    ("prob-zloss-softcap", CrossEntropyParams(probability=True, z_loss=1e-2, softcap=3.0),
     False),
]


def make_case(rows, classes, params, weighted, gen, dtype=torch.float64):
    """Logits ``(rows, classes)``, a target (two ignored rows for index targets) and weights."""
    x = (torch.randn(rows, classes, generator=gen, dtype=torch.float64) * 3).to(dtype)
    if params.probability:
        t = torch.rand(rows, classes, generator=gen, dtype=torch.float64) ** 4
        t[0, : classes // 2] = 0.0  # exact zeros
        target = t / t.sum(1, keepdim=True)
    else:
        target = torch.randint(0, classes, (rows,), generator=gen)
        target[1 % rows] = params.ignore_index  # ignored rows (index 3 is a real class)
        if rows > 4:
            target[4] = params.ignore_index
    weight = (torch.rand(classes, generator=gen, dtype=torch.float64) * 2 + 0.05
              if weighted else None)
    return x, target, weight


def pad_columns(t: torch.Tensor, columns: int, fill: float) -> torch.Tensor:
    """``t`` with ``columns`` more columns of ``fill`` (padding past the real classes)."""
    if columns == 0:
        return t
    extra = torch.full((t.shape[0], columns), fill, dtype=t.dtype)
    return torch.cat([t, extra], dim=1)


def split_points(classes_padded: int, shards: int, gen) -> list[int]:
    """``shards`` contiguous, uneven, non-empty pieces of ``range(classes_padded)``."""
    cuts = torch.randperm(classes_padded - 1, generator=gen)[: shards - 1] + 1
    return [0, *sorted(int(c) for c in cuts), classes_padded]


def sharded(x, target, params, weight, bounds, num_classes, *, impl, grad_scale=None,
            merge="stack", inplace=False):
    """Per-row losses and the gradient (None without ``grad_scale``) over the shards
    ``bounds`` of the (possibly padded) logits ``x``, through the three steps."""
    shard_cols = [(a, b) for a, b in zip(bounds[:-1], bounds[1:])]

    def target_of(a, b):
        return target[:, a:b].contiguous() if params.probability else target

    stats = [_shard.shard_statistics(x[:, a:b].contiguous(), target_of(a, b), params, weight,
                                     a, num_classes, impl=impl) for a, b in shard_cols]
    if merge == "stack":  # what an all-gather gives
        combined = _shard.combine(torch.stack(stats))
    elif merge == "running":  # a vocabulary-blocked schedule: one block at a time
        combined = stats[0]
        for s in stats[1:]:
            combined = _shard.merge(combined, s)
    else:  # "rebase": a MAX all-reduce, then a SUM all-reduce of the rebased statistics
        new_max = torch.stack([s[_shard.MAX] for s in stats]).amax(0)
        combined = torch.stack([_shard.rebase(s, new_max) for s in stats]).sum(0)
        combined[_shard.MAX] = new_max
    loss = _shard.finish_loss(combined, target if not params.probability
                              else target[:, :num_classes], params, weight)
    if grad_scale is None:
        return loss, None
    grads = []
    for a, b in shard_cols:
        xs = x[:, a:b].contiguous()
        out = xs if inplace else torch.empty_like(xs)
        _shard.shard_gradient(xs, combined, target_of(a, b), params, weight, a, num_classes,
                              grad_scale, out, impl=impl)
        grads.append(out)
    return loss, torch.cat(grads, dim=1)


def reference(x, target, params, weight, grad_scale=None):
    """float64 per-row losses and ``d (sum_n scale_n loss_n) / dx`` by autograd."""
    xx = x.detach().to(torch.float64).requires_grad_(grad_scale is not None)
    t = target.to(torch.float64) if params.probability else target
    loss = cross_entropy_ref(xx, t, weight, params.ignore_index, "none",
                             params.label_smoothing, z_loss=params.z_loss,
                             softcap=params.softcap)
    if grad_scale is None:
        return loss.detach(), None
    (grad,) = torch.autograd.grad((loss * grad_scale.to(torch.float64)).sum(), xx)
    return loss.detach(), grad


class ThreadedShards:
    """``world`` ranks as threads of this process, exchanging statistics through an
    injected ``combine`` (a rendezvous that stacks every rank's ``(4, M)`` statistics and
    merges them, as an all-gather would).  ``run(fn)`` calls ``fn(rank, combine)`` on every
    rank at once and returns the results in rank order, re-raising a rank's exception."""

    def __init__(self, world: int):
        import threading

        self.world = world
        self.barrier = threading.Barrier(world, timeout=60)
        self.slots: list = [None] * world
        self.calls = 0

    def _rendezvous(self, rank, value, reduce):
        self.slots[rank] = value
        self.barrier.wait()
        out = reduce(torch.stack(self.slots))
        self.barrier.wait()  # everyone has read the slots before any is reused
        if rank == 0:
            self.calls += 1
        return out

    def combine_for(self, rank: int):
        def combine(stats):
            return self._rendezvous(rank, stats, _shard.combine)

        # the linear op's d input: the sum over the ranks
        combine.all_reduce = lambda t: self._rendezvous(rank, t, lambda s: s.sum(0))
        return combine

    def run(self, fn):
        import threading

        results: list = [None] * self.world
        errors: list = [None] * self.world

        def target(rank):
            try:
                results[rank] = fn(rank, self.combine_for(rank))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                errors[rank] = exc
                self.barrier.abort()

        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for exc in errors:
            if exc is not None and not isinstance(exc, threading.BrokenBarrierError):
                raise exc
        for exc in errors:
            if exc is not None:
                raise exc
        return results


def run_threaded_group(world: int, fn, timeout: float = 120.0):
    """Run ``fn(rank)`` on ``world`` threads that form a real ``torch.distributed`` process
    group (PyTorch's threaded test backend: the collectives are the real ones, the ranks are
    threads).  Returns the results in rank order; re-raises the first rank's exception."""
    import threading

    import torch.distributed as dist
    from torch.testing._internal.distributed.multi_threaded_pg import (
        ProcessLocalGroup,
        _install_threaded_pg,
        _uninstall_threaded_pg,
    )

    torch._C._distributed_c10d._set_thread_isolation_mode(True)
    world_data = _install_threaded_pg()
    store = dist.HashStore()
    results: list = [None] * world
    errors: list = [None] * world

    def worker(rank):
        dist.init_process_group("threaded", rank=rank, world_size=world, store=store)
        try:
            results[rank] = fn(rank)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            errors[rank] = exc
            ProcessLocalGroup.exception_handle(exc)  # wake the ranks waiting for this one
        finally:
            if world_data == dist.distributed_c10d._world:
                dist.destroy_process_group()

    try:
        threads = [threading.Thread(target=worker, args=(r,)) for r in range(world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout)
        if any(t.is_alive() for t in threads):
            raise TimeoutError(f"a rank did not finish within {timeout} s")
        ProcessLocalGroup.reset()
    finally:
        _uninstall_threaded_pg()
        torch._C._distributed_c10d._set_thread_isolation_mode(False)
    for exc in errors:
        if exc is not None:
            raise exc
    return results

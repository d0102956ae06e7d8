"""Train a small language model whose output layer is sharded over processes.

Run on CPU with two processes (gloo):

    torchrun --standalone --nproc-per-node 2 examples/vocab_parallel_training.py

Each process holds the whole trunk (an embedding and one hidden layer, replicated) and its
own slice of the output layer's rows: with V = 1001 classes over 2 processes, 501 and 500.
``crossent.torch.distributed.vocab_parallel_linear_cross_entropy`` computes the loss of the
whole vocabulary from those slices, exchanging four numbers per token, never the logits;
its gradient for the hidden states is summed over the processes inside the op, so the
replicated trunk gets the same gradient everywhere and stays in sync without any other
communication.  Label smoothing (0.1) is exact on every rank.

``--check`` also trains the same model in one process with the whole output layer and
``torch.nn.functional.cross_entropy`` and compares the losses step by step (it exits with
status 1 if they differ).  Without torchrun the script runs as a single process.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from crossent.torch.distributed import vocab_parallel_linear_cross_entropy


def make_data(vocab: int, batch: int, seq: int, steps: int, seed: int = 0):
    """Token sequences with a learnable pattern (each token predicts a fixed successor)."""
    g = torch.Generator().manual_seed(seed)
    successor = torch.randperm(vocab, generator=g)
    batches = []
    for _ in range(steps):
        tokens = torch.randint(0, vocab, (batch, seq), generator=g)
        targets = successor[tokens]
        targets[:, -1] = -100  # the last position has nothing to predict
        batches.append((tokens, targets))
    return batches


def init_params(vocab: int, dim: int, seed: int = 1):
    """The whole model's parameters, the same on every process (same seed)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "embed": torch.randn(vocab, dim, generator=g) * 0.5,
        "hidden": torch.randn(dim, dim, generator=g) / dim**0.5,
        "head": torch.randn(vocab, dim, generator=g) / dim**0.5,
    }


def shard_bounds(vocab: int, world: int) -> list[int]:
    """Contiguous shards of the vocabulary, the first ones one class larger (uneven)."""
    base, extra = divmod(vocab, world)
    bounds = [0]
    for r in range(world):
        bounds.append(bounds[-1] + base + (1 if r < extra else 0))
    return bounds


def trunk(params, tokens):
    return torch.tanh(params["embed"][tokens] @ params["hidden"])


def train_sharded(args, rank: int, world: int) -> list[float]:
    bounds = shard_bounds(args.vocab, world)
    start, stop = bounds[rank], bounds[rank + 1]
    full = init_params(args.vocab, args.dim)
    params = {
        "embed": full["embed"].clone().requires_grad_(),
        "hidden": full["hidden"].clone().requires_grad_(),
        "head": full["head"][start:stop].clone().requires_grad_(),  # this rank's rows only
    }
    optimizer = torch.optim.SGD(params.values(), lr=args.lr)
    losses = []
    for step, (tokens, targets) in enumerate(make_data(args.vocab, args.batch, args.seq,
                                                       args.steps)):
        hidden = trunk(params, tokens)  # (batch, seq, dim), the same on every rank
        loss = vocab_parallel_linear_cross_entropy(
            hidden, params["head"], targets, vocab_start=start, num_classes=args.vocab,
            label_smoothing=0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if rank == 0:
            print(f"step {step}: loss {loss.item():.6f}", flush=True)
    return losses


def train_single(args) -> list[float]:
    """The same model and data in one process, with plain PyTorch."""
    params = {k: v.clone().requires_grad_() for k, v in init_params(args.vocab, args.dim).items()}
    optimizer = torch.optim.SGD(params.values(), lr=args.lr)
    losses = []
    for tokens, targets in make_data(args.vocab, args.batch, args.seq, args.steps):
        logits = trunk(params, tokens) @ params["head"].T
        loss = F.cross_entropy(logits.reshape(-1, args.vocab), targets.reshape(-1),
                               label_smoothing=0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=1001)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--lr", type=float, default=20.0)
    p.add_argument("--check", action="store_true",
                   help="compare with the single-process run (exit 1 if they differ)")
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    if "RANK" in os.environ:  # started by torchrun
        dist.init_process_group("gloo")
    else:  # a single process: a group of one
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank == 0:
        sizes = [b - a for a, b in zip(shard_bounds(args.vocab, world)[:-1],
                                       shard_bounds(args.vocab, world)[1:])]
        print(f"{world} process(es), vocabulary {args.vocab} sharded as {sizes}", flush=True)
    try:
        losses = train_sharded(args, rank, world)
        status = 0
        if args.check and rank == 0:
            single = train_single(args)
            worst = max(abs(a - b) for a, b in zip(losses, single))
            same = worst <= 1e-4
            print(f"single-process run: {' '.join(f'{v:.6f}' for v in single)}")
            print(f"{'matches' if same else 'DIFFERS FROM'} the single-process run "
                  f"(largest difference {worst:.2e})", flush=True)
            status = 0 if same else 1
    finally:
        dist.destroy_process_group()
    return status


if __name__ == "__main__":
    sys.exit(main())

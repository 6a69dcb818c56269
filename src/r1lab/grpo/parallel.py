"""Data-parallel GRPO: what each process of a ``torchrun`` run does with its share of a step.

    torchrun --nproc_per_node 8 -m r1lab.cli grpo recipes/micro/r1_zero.yaml prompts_per_step=64

Every process holds the whole model and the whole prompt stream (so the data position in a
checkpoint is global). A step's P prompts are cut into contiguous, equal shares; each process
samples and scores the G completions of its prompts (a group never straddles processes), then
the scored groups are gathered so that every process sees the step's whole batch: group or
batch advantages, dynamic-sampling refills and metrics are computed on it exactly as one process
would. Each process then trains on its own groups; the loss normalisers are summed over
processes and so are the gradients, so the optimiser step is the one-process step.

Same result as one process: each prompt group samples from its own random stream
(`group_seed`), so a prompt's completions don't depend on which process drew it or what else
was in its batch (up to float rounding in batched forwards; tests/test_distributed.py compares
a 2-process run with a 1-process one).

Why not DistributedDataParallel's wrapper: the training forward runs each group's shared prompt
once through r1lab.models.fast_decoder, which calls the model's layers without the model's `forward` (DDP
prepares its gradient reduction in `forward`), and with `minibatches > 1` the processes get
unequal numbers of micro-batches. One summed all-reduce of the gradients per optimiser step
(what DDP with `no_sync` does, minus the overlap with the backward) has neither problem.
"""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist

from r1lab.training import distributed
from r1lab.grpo.rollout import Scored

# Gradients are summed in flat buckets of at most this many elements: few collective calls,
# bounded extra memory.
BUCKET_ELEMENTS = 1 << 25


def group_seed(seed: int, step: int | str, draw: int, index: int) -> int:
    """The sampling seed of prompt `index` of draw `draw` (0, then dynamic-sampling refills) of
    `step`: a function of the prompt's global position only, not of the process that samples it."""
    digest = hashlib.blake2b(f"{seed}/{step}/{draw}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # < 2**63: any torch.Generator seed


def share(count: int, rank: int | None = None, world: int | None = None) -> range:
    """This process's contiguous share of `count` items; shares differ in size by at most one.

    Contiguous (not strided like r1lab.training.distributed.shard): gathered shares then concatenate in
    the global order. A share may be empty.

    >>> [share(5, r, 2) for r in range(2)]
    [range(0, 3), range(3, 5)]
    """
    rank = distributed.rank() if rank is None else rank
    world = distributed.world_size() if world is None else world
    base, extra = divmod(count, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def gather_scored(part: Scored | None) -> Scored | None:
    """Every process's scored groups, concatenated in rank order (the global order), on every
    process; None if all shares were empty. `part` is this process's (None: it had none)."""
    if distributed.world_size() == 1:
        return part
    parts: list[Scored | None] = [None] * distributed.world_size()
    dist.all_gather_object(parts, part)
    parts = [p for p in parts if p is not None and p.rows]
    return Scored.concat(parts) if parts else None


def gather_lists(items: list) -> list:
    """Every process's list, concatenated in rank order, on every process."""
    if distributed.world_size() == 1:
        return items
    parts: list[list] = [[] for _ in range(distributed.world_size())]
    dist.all_gather_object(parts, items)
    return [x for p in parts for x in p]


def sum_over_processes(values: dict[str, float], device) -> dict[str, float]:
    """Each value summed over processes (unchanged in a single process)."""
    if distributed.world_size() == 1 or not values:
        return values
    keys = sorted(values)
    summed = distributed.all_reduce_sum(torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device))
    return dict(zip(keys, summed.tolist()))


def sum_gradients(parameters) -> None:
    """Sum the gradients of the trainable `parameters` over processes, in place.

    A process that ran no backward for a parameter (an empty share of a minibatch) contributes
    zeros, and gets the sum too, so every process takes the same optimiser step.
    """
    if distributed.world_size() == 1:
        return
    params = [p for p in parameters if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    buckets: dict[tuple, list[list[torch.Tensor]]] = {}
    for p in params:
        groups = buckets.setdefault((p.grad.dtype, p.grad.device), [[]])
        if groups[-1] and sum(g.numel() for g in groups[-1]) + p.grad.numel() > BUCKET_ELEMENTS:
            groups.append([])
        groups[-1].append(p.grad)
    for groups in buckets.values():
        for grads in groups:
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            for g, summed in zip(grads, flat.split([g.numel() for g in grads])):
                g.copy_(summed.view_as(g))

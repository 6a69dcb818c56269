"""Small helpers for running a stage under ``torchrun`` (data parallel, one process per device).

    torchrun --nproc_per_node 8 -m r1lab.cli sft model=... train_data=...

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init_from_env` reads
them and joins the process group (nccl on CUDA, gloo on CPU). Without them (a plain ``r1lab``
run) it does nothing, and every helper below answers as a single process would: rank 0 of 1,
`barrier` and `all_reduce_sum` are no-ops. So stage code calls them unconditionally.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")


def init_from_env() -> bool:
    """Join the process group torchrun describes; return True if this is a multi-process run.

    On CUDA each process uses the device LOCAL_RANK (see `device`). Calling it twice is harmless.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if dist.is_available() and dist.is_initialized():
        return True
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return True


def cleanup() -> None:
    """Leave the process group (no-op when none was joined)."""
    if _active():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if _active() else 0


def world_size() -> int:
    return dist.get_world_size() if _active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """True on the one process that writes files (checkpoints, metrics, the final model)."""
    return rank() == 0


def device(requested: str = "auto") -> str:
    """The device for this process: `requested`, or with "auto" cuda:LOCAL_RANK if CUDA is there, else cpu."""
    if requested != "auto":
        return requested
    return f"cuda:{local_rank()}" if torch.cuda.is_available() else "cpu"


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all processes, in place; returns it (unchanged in a single process)."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise max of `tensor` over all processes, in place; returns it."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def data_parallel(model):
    """`model` wrapped in DistributedDataParallel under torchrun; `model` itself otherwise.

    The wrapper is for the training steps only: checkpoints, evaluation and saving use `model`.
    """
    if world_size() == 1:
        return model
    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """This rank's share of `items`: every `world`-th item starting at `rank`.

    Strided rather than contiguous: a length-sorted batch then gives every rank a similar mix of
    lengths, so no rank waits for one that got all the long examples. A share may be empty.

    >>> shard([0, 1, 2, 3, 4], 1, 2)
    [1, 3]
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank}")
    return list(items[rank::world])


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def peak_memory_mb() -> float:
    """This process's peak memory so far, in MiB: CUDA's peak allocation on a GPU, else peak RSS."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux reports KiB


def launched(stage: Callable[[Any], dict]) -> Callable[[Any], dict]:
    """A stage's ``main(config)`` run with torch.distributed set up from torchrun's environment (a
    no-op in a plain process) and torn down afterwards, also when it fails."""
    @functools.wraps(stage)
    def main(config: Any) -> dict:
        init_from_env()
        try:
            return stage(config)
        finally:
            cleanup()

    return main

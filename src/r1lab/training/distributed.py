"""Small helpers for running a stage under ``torchrun`` (data parallel, one process per device).

    torchrun --nproc_per_node 8 -m r1lab.cli sft model=... train_data=...

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init_from_env` reads
them and joins the process group (nccl on CUDA, gloo on CPU). Without them (a plain ``r1lab``
run) it does nothing, and every helper below answers as a single process would: rank 0 of 1,
`barrier` and `all_reduce_sum` are no-ops. So stage code calls them unconditionally.

Every collective waits at most the stage's ``distributed_timeout_s`` (default 600 s): a process
that died or hangs then ends the others with an error, instead of leaving them waiting forever.
With gloo (CPU) a process that dies is usually noticed at once (its connections close); one that
hangs, or a dead one under NCCL, after the timeout. torchrun's own summary names the rank that
failed first.
"""

from __future__ import annotations

import functools
import os
from datetime import timedelta
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from r1lab.errors import R1labError

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 600.0  # a stage config's `distributed_timeout_s` default


def init_from_env(timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Join the process group torchrun describes; return True if this is a multi-process run.

    Every collective of the group (and joining it) fails after `timeout_s` seconds of waiting.
    On CUDA each process uses the device LOCAL_RANK (see `device`). Calling it twice is harmless.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if dist.is_available() and dist.is_initialized():
        return True
    timeout = timedelta(seconds=timeout_s)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl", timeout=timeout)
    else:
        dist.init_process_group("gloo", timeout=timeout)
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
    no-op in a plain process) and torn down afterwards, also when it fails.

    The config's ``distributed_timeout_s`` bounds every collective; a collective that fails (another
    process died, or hung past the timeout) becomes an `R1labError` naming this rank."""
    @functools.wraps(stage)
    def main(config: Any) -> dict:
        timeout_s = config.distributed_timeout_s
        joined_before = _active()
        if not init_from_env(timeout_s):
            try:
                return stage(config)
            finally:
                if not joined_before:
                    cleanup()  # the group of one FSDP makes in a plain process ends with the stage
        try:
            return stage(config)
        except RuntimeError as e:
            if not is_collective_failure(e):
                raise
            raise R1labError(lost_contact(rank(), world_size(), timeout_s, e)) from e
        finally:
            cleanup()

    return main


# gloo raises a plain RuntimeError whose text names its transport; NCCL and the store raise DistError
_COLLECTIVE_MARKERS = ("gloo/transport", "Connection reset by peer", "Connection closed by peer", "Timed out waiting",
                       "NCCL communicator was aborted", "Watchdog caught collective operation timeout")


def is_collective_failure(error: BaseException) -> bool:
    """True for the error of a collective whose peer died or hung (not a bug in the stage)."""
    return isinstance(error, dist.DistError) or any(m in str(error) for m in _COLLECTIVE_MARKERS)


def lost_contact(rank: int, world: int, timeout_s: float, error: BaseException) -> str:
    """The one-line error of a process whose collective failed."""
    detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    return (f"rank {rank} of {world}: lost contact with the other processes: one died or waited over "
            f"distributed_timeout_s={timeout_s:g} s ({detail}); torchrun's summary names the rank that failed first")

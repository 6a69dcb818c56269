"""Fully sharded data parallel (FSDP2) for GRPO: ``sharding=fsdp``.

    torchrun --nproc_per_node 8 -m r1lab.cli grpo recipe.yaml sharding=fsdp [fsdp_cpu_offload=true]
    r1lab grpo recipe.yaml sharding=fsdp      # one process: a process group of one, same files

What is sharded: `shard` calls ``torch.distributed.fsdp.fully_shard`` on each decoder layer, then
on the whole model (the embeddings, final norm and output head). Every process then holds 1/N of
the float32 weights, of their gradients and of the AdamW state; a layer's weights are gathered
for its forward and backward and freed after. The frozen reference model is sharded the same
way. With ``precision=bf16-mixed`` the layers gather bf16 copies of the float32 shards and reduce
gradients in float32 (MixedPrecisionPolicy; the root stays float32, so logits and log-probs come
from float32 weights); with ``precision=bf16`` the shards themselves are bf16 and only the
gradient reduction runs in float32.
``fsdp_cpu_offload=true`` keeps the shards and AdamW state in CPU memory (CPUOffloadPolicy).

What is not: sampling. Decoding runs a forward per token, with a different number of steps on
each process, which sharded weights (gathered by collectives every process must join) can't
follow. Each process keeps one unsharded copy of the policy for its rollouts and evaluation,
refreshed from the shards before every rollout (`refresh`), as RL trainers that pair FSDP with a
generation engine do. r1lab.models.fast_decoder reads weights outside the model's `forward`,
so sharded models run through their own forward (and every process runs the same number of
forwards: `pad_calls`).

Gradients are summed over processes, not averaged: r1lab's GRPO loss normalisers are already
global (grpo/update.py). Files: the final model and reference snapshots are Hugging Face folders
gathered on rank 0 (`save_pretrained`); a checkpoint's model and optimizer state are sharded with
torch.distributed.checkpoint in ``sharded/``, which reshards on load, so a run resumes at any
world size.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard

from r1lab.training import distributed
from r1lab.training.checkpoint import save_final
from r1lab.errors import R1labError

SHARDINGS = ("ddp", "fsdp")
SHARDED_DIR = "sharded"  # a checkpoint's torch.distributed.checkpoint folder


def ensure_process_group() -> None:
    """A process group of one in a plain process (FSDP needs a group even alone); torchrun's as is."""
    if dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def mixed_precision(precision: str) -> MixedPrecisionPolicy:
    """The decoder layers' policy (r1lab.models.precision). bf16-mixed: bf16 gathers and compute
    with float32 gradient reduction and float32 layer outputs (the residual stream between layers).
    bf16: the weights are bf16 already, as the unsharded model's layers are; gradients are summed
    in float32. fp32: nothing."""
    if precision == "bf16-mixed":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                    output_dtype=torch.float32)
    if precision == "bf16":
        return MixedPrecisionPolicy(reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard(model: nn.Module, precision: str = "fp32", cpu_offload: bool = False) -> nn.Module:
    """`model` with each decoder layer, then the whole, under fully_shard (in place; returned)."""
    if cpu_offload and next(model.parameters()).device.type == "cpu":
        raise R1labError("fsdp_cpu_offload=true moves GPU shards to CPU memory: on a CPU run they are "
                         "there already; drop it")
    ensure_process_group()
    offload = CPUOffloadPolicy() if cpu_offload else OffloadPolicy()
    layers = decoder_layers(model)
    for layer in layers:
        fully_shard(layer, mp_policy=mixed_precision(precision), offload_policy=offload)
    fully_shard(model, offload_policy=offload)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            # sum, not mean: the loss normalisers are global. Gloo has no pre-scaled sum: force SUM.
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    return model


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks: modules of the classes transformers keeps whole when it splits
    a model across devices (`_no_split_modules`, e.g. Qwen2DecoderLayer)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise R1labError(f"sharding=fsdp: can't find the decoder layers of {type(model).__name__} "
                         "(its _no_split_modules names none); use sharding=ddp")
    return layers


def is_sharded(model) -> bool:
    return isinstance(model, FSDPModule)


def pad_calls(count: int, device) -> int:
    """How many extra forwards this process must run so that every process runs as many as the
    busiest one (a sharded forward gathers weights with collectives all processes join)."""
    if distributed.world_size() == 1:
        return 0
    most = torch.tensor([count], dtype=torch.int64, device=device)
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    return int(most) - count


def idle_forward(model, device, backward: bool = False) -> None:
    """One forward (and backward) of a 2-token row that changes nothing: this process's part of
    the collectives of a call another process makes on real data. Its gradient is exactly zero."""
    ids = torch.zeros(1, 2, dtype=torch.long, device=device)
    with torch.set_grad_enabled(backward):
        logits = model(input_ids=ids, use_cache=False).logits
        if backward:
            (logits.float().sum() * 0.0).backward()


def clip_grad_norm(model, max_norm: float) -> float:
    """clip_grad_norm_ over sharded gradients; the total norm (of the whole model) as a float."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def full_state_dict(model, everywhere: bool = False) -> dict[str, torch.Tensor]:
    """The whole model's weights, gathered: on rank 0 only, in CPU memory (for saving), or with
    `everywhere` on every process, on the model's device (to refresh an unsharded copy).
    Every process must call it."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=not everywhere)
    return get_model_state_dict(model, options=options)


def refresh(copy: nn.Module, model) -> nn.Module:
    """`copy` (an unsharded model of the same architecture) given `model`'s current weights."""
    copy.load_state_dict(full_state_dict(model, everywhere=True), strict=False)
    return copy


def save_model(path: str | Path, model, tokenizer) -> None:
    """The sharded `model` as a Hugging Face folder written by rank 0, replaced atomically.
    Every process must call it."""
    state = full_state_dict(model)
    for name in tied_names(model):  # gathered as separate copies: written once, as save_pretrained does
        state.pop(name, None)
    if distributed.is_main():
        save_final(path, _Gathered(model, state), tokenizer)
    distributed.barrier()


def tied_names(model: nn.Module) -> list[str]:
    """Names of parameters that are another name's parameter (lm_head.weight with tied embeddings)."""
    seen: set[int] = set()
    tied = []
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            tied.append(name)
        seen.add(id(param))
    return tied


def load_model(path: str | Path, model) -> None:
    """A Hugging Face folder's weights into the sharded `model` (each process keeps its shards)."""
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise R1labError(f"{path}: no .safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(file))
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))


def save_sharded(staging: Path, model, optimizer) -> None:
    """Model and optimizer state, each process its shards, into `staging` (emptied first).
    Every process must call it; `r1lab.training.checkpoint.save_checkpoint(shards=staging)` then moves it in."""
    if distributed.is_main() and staging.exists():
        shutil.rmtree(staging)
    distributed.barrier()
    dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)},
             checkpoint_id=staging)
    distributed.barrier()


def load_sharded(checkpoint: Path, model, optimizer) -> None:
    """Model and optimizer state from a checkpoint's ``sharded/`` folder, resharded to this run's
    world size. Every process must call it."""
    folder = Path(checkpoint) / SHARDED_DIR
    if not folder.is_dir():
        raise R1labError(f"{checkpoint}: has no {SHARDED_DIR}/ state (written with sharding=ddp?); "
                         "resume it with sharding=ddp")
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=folder)
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optim"])


class _Gathered:
    """A sharded model seen as `save_pretrained` needs it: its own method, with the gathered weights."""

    def __init__(self, model, state: dict[str, torch.Tensor]):
        self.model, self.state = model, state

    def save_pretrained(self, path, **kwargs) -> None:
        self.model.save_pretrained(path, state_dict=self.state, **kwargs)

"""The fast decoder's key/value caches: pre-allocated for sampling (`KVCache`), growing for the
training forward (`GrowingCache`), and a prompt's keys and values held once for the rows that
continue it (`SharedPrefix`, see `KVCache.share_prefix`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from r1lab.models.precision import autocast_dtype


@dataclass(frozen=True)
class SharedPrefix:
    """Keys and values that several batch rows continue, stored once (see KVCache.share_prefix)."""

    keys: list[Tensor]  # per layer [P, K, D, Tp]: transposed for the matmul with the queries
    values: list[Tensor]  # per layer [P, K, Tp, D]
    owner: Tensor  # [B] the prefix row each batch row continues
    slot: Tensor  # [B] its place among that prefix's rows, < per_prompt
    per_prompt: int
    dense: bool  # every prefix has per_prompt rows, in order: owner = 0,0,..,1,1,..; slot = 0,1,..,0,1,..


class KVCache:
    """Pre-allocated keys and values, [B, kv_heads, capacity, head_dim] per layer, written in
    place (inference only); the first `length` positions are filled. After `share_prefix`, the
    first `prefix_len` of them are held once per prompt, not once per row."""

    def __init__(self, num_layers: int, batch: int, kv_heads: int, capacity: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (batch, kv_heads, capacity, head_dim)
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.capacity, self.length, self.prefix_len = capacity, 0, 0
        self.prefix: SharedPrefix | None = None

    def update(self, layer: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Write keys/values [B, K, S, D] after the filled positions; return the rows' own filled
        ones [B, K, T, D] (all of them, or those after the shared prefix)."""
        end = self.length + keys.shape[2]
        if end > self.capacity:
            self._grow(max(end, 2 * self.capacity))
        lo, hi = self.length - self.prefix_len, end - self.prefix_len
        self.keys[layer][:, :, lo:hi] = keys
        self.values[layer][:, :, lo:hi] = values
        return self.keys[layer][:, :, :hi], self.values[layer][:, :, :hi]

    def _grow(self, capacity: int) -> None:
        """Room for `capacity` positions, the filled ones copied over (a sampler starts with room
        for what a sequence usually needs, not for the longest it may get)."""
        filled = self.length - self.prefix_len
        for buffers in (self.keys, self.values):
            for i, buffer in enumerate(buffers):
                out = buffer.new_empty(*buffer.shape[:2], capacity - self.prefix_len, buffer.shape[3])
                out[:, :, :filled] = buffer[:, :, :filled]
                buffers[i] = out
        self.capacity = capacity

    def select(self, rows: Tensor) -> None:
        """Keep (or repeat) batch rows `rows`, copying only the filled positions."""
        filled = self.length - self.prefix_len
        for buffers in (self.keys, self.values):
            for i, buffer in enumerate(buffers):
                out = buffer.new_empty(len(rows), *buffer.shape[1:])
                out[:, :, :filled] = buffer[:, :, :filled].index_select(0, rows)
                buffers[i] = out
        if self.prefix is not None:
            self.prefix = SharedPrefix(self.prefix.keys, self.prefix.values, self.prefix.owner[rows],
                                  self.prefix.slot[rows], self.prefix.per_prompt, dense=False)

    def share_prefix(self, owner: Tensor, per_prompt: int) -> None:
        """Continue each of the P filled rows in the rows `owner` [B] (sorted: prompt-major, at most
        `per_prompt` rows each) without copying the filled positions: they stay once per prompt.

        What it saves (2-core EPYC, bf16, 32 rows = 4 prompts x 8, 64 new tokens): the G copies
        of each prompt's keys that every decode step read, and the copy itself; the prompt's
        part of attention becomes a matmul over the G rows of each prompt.
        """
        slot, dense = prompt_slots(owner, self.keys[0].shape[0], per_prompt)
        # Stored as the prompt part of attention reads them: in the dtype of the caller's autocast
        # (which would otherwise cast them again at every decode step), keys transposed.
        dtype = autocast_dtype(owner.device)
        keys = [k[:, :, :self.length].transpose(-1, -2).to(dtype).contiguous() for k in self.keys]
        values = [v[:, :, :self.length].to(dtype).contiguous() for v in self.values]
        self.prefix = SharedPrefix(keys, values, owner, slot, per_prompt, dense)
        self.prefix_len = self.length
        shape = (len(owner), self.keys[0].shape[1], self.capacity - self.length, self.keys[0].shape[3])
        self.keys = [k.new_empty(shape) for k in self.keys]
        self.values = [v.new_empty(shape) for v in self.values]


class GrowingCache:
    """Keys and values concatenated as they come: no in-place writes, so autograd can flow."""

    def __init__(self, num_layers: int):
        self.keys: list[Tensor | None] = [None] * num_layers
        self.values: list[Tensor | None] = [None] * num_layers
        self.length = 0
        self.prefix: SharedPrefix | None = None

    def share_prefix(self, owner: Tensor) -> None:
        """Continue each of the P rows so far in the rows `owner` [B], its keys and values kept once
        (the prompt part of attention is then a matmul per prompt, as in KVCache.share_prefix)."""
        P = self.keys[0].shape[0]
        per_prompt = int(torch.bincount(owner, minlength=P).max())
        slot, dense = prompt_slots(owner, P, per_prompt)
        dtype = autocast_dtype(owner.device)
        self.prefix = SharedPrefix([k.transpose(-1, -2).to(dtype) for k in self.keys], [v.to(dtype) for v in self.values],
                              owner, slot, per_prompt, dense)
        self.keys, self.values = [None] * len(self.keys), [None] * len(self.values)

    def update(self, layer: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Hold one pass's keys and values (a pass's own keys are all it reads after share_prefix).
        Idempotent, so a checkpointed layer recomputed in the backward may call it again."""
        self.keys[layer], self.values[layer] = keys, values
        return keys, values


def prompt_slots(owner: Tensor, prompts: int, per_prompt: int) -> tuple[Tensor, bool]:
    """Each row's place among its prompt's rows [B], and whether the rows are dense: every prompt
    has per_prompt rows, in order (owner = 0,..,0,1,..,1,...)."""
    counts = torch.bincount(owner, minlength=prompts)
    order = owner.argsort(stable=True)
    rank = torch.arange(len(owner), device=owner.device) - (counts.cumsum(0) - counts)[owner[order]]
    slot = torch.empty_like(owner).scatter_(0, order, rank)
    dense = (len(owner) == prompts * per_prompt and bool((owner[1:] >= owner[:-1]).all())
             and bool((counts == per_prompt).all()))
    return slot, dense

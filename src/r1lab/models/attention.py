"""Softmax attention for r1lab.models.fast_decoder's LeanModel: grouped-query heads, a causal
and padding bias, and a shared prompt prefix read once per prompt (r1lab.models.kv_cache).

    bias = attention_bias(key_mask, start, dtype)          # [B, 1, S, T]: 0 allowed, -inf not
    out = attention(q, keys, values, bias, (prefix, layer))  # [B, H, S, D]

`attention` picks torch's scaled_dot_product_attention (fused kernels, no [B, H, S, T]
probabilities kept for the backward) or the hand-written `attend`, by where each is faster.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from r1lab.models.kv_cache import SharedPrefix

# attention through SDPA on CPU from this many [B, H, S, T] scores (see `attention`)
SDPA_MIN_SCORES = 1 << 22


def attention_bias(key_mask: Tensor, start: int, dtype: torch.dtype) -> Tensor:
    """Additive attention bias [B, 1, S, T] for queries at cache positions start..T-1: 0 where
    the key is a real token at or before the query (or is the query itself), -inf elsewhere."""
    T = key_mask.shape[1]
    real = key_mask.bool()[:, None, None, :]  # [B, 1, 1, T]
    if T - start == 1:  # one new token: every real key is at or before it, and it is real itself
        allowed = real
    else:
        query = torch.arange(start, T, device=key_mask.device)[:, None]  # [S, 1]
        key = torch.arange(T, device=key_mask.device)[None]  # [1, T]
        allowed = (real & (key <= query)) | (key == query)
    zero = torch.zeros((), dtype=dtype, device=key_mask.device)
    return torch.where(allowed, zero, torch.tensor(float("-inf"), dtype=dtype, device=key_mask.device))


def attention(q: Tensor, keys: Tensor, values: Tensor, bias: Tensor,
              prefix: tuple[SharedPrefix, int] | None = None) -> Tensor:
    """Softmax attention (shapes: `attend`) through torch's scaled_dot_product_attention where it
    wins, else `attend`. SDPA's fused kernels (flash / memory-efficient on GPU, flash on CPU)
    keep no [B, H, S, T] probabilities for the backward. Measured on the 2-core CPU (2 threads,
    a busy machine), 8 rows x 14 heads (2 key heads) x 320 tokens, forward + backward: fp32 0.93 s
    against 3.76 s, bf16 autocast 0.45 s against 0.98 s; but at micro sizes the fused kernel's
    per-call overhead lost (1.8x slower in a bf16 GRPO step of the micro `small` model).
    So: always on GPU; on CPU when the scores tensor would hold >= SDPA_MIN_SCORES elements."""
    B, H, S, _ = q.shape
    T = keys.shape[2] + (0 if prefix is None else prefix[0].values[prefix[1]].shape[2])
    if S > 1 and (q.device.type != "cpu" or B * H * S * T >= SDPA_MIN_SCORES):
        return _attend_sdpa(q, keys, values, bias, prefix)
    return attend(q, keys, values, bias, prefix)


def _attend_sdpa(q: Tensor, keys: Tensor, values: Tensor, bias: Tensor,
                 prefix: tuple[SharedPrefix, int] | None) -> Tensor:
    """`attend` by F.scaled_dot_product_attention; a shared prefix's keys and values are
    gathered per row first (K heads: small next to the queries' H)."""
    if prefix is not None:
        shared, i = prefix
        owner = shared.owner
        keys = torch.cat([shared.keys[i].transpose(-1, -2)[owner].to(keys.dtype), keys], dim=2)
        values = torch.cat([shared.values[i][owner].to(values.dtype), values], dim=2)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=bias == 0,
                                          enable_gqa=keys.shape[1] != q.shape[1])


def attend(q: Tensor, keys: Tensor, values: Tensor, bias: Tensor,
            prefix: tuple[SharedPrefix, int] | None = None) -> Tensor:
    """Softmax attention with grouped-query heads. q [B, H, S, D], keys/values [B, K, T, D],
    bias [B, 1, S, Tp + T] -> [B, H, S, D]. Query head h reads key head h // (H/K), as in
    transformers. `prefix` (a KVCache's shared prefix and the layer): Tp keys before the rows' own.

    One query per row (a decode step) is B*H matrix-vector products: as batched matmuls that was
    ~2.4 ms of a 7 ms decode step (32 rows x 4 layers, ~50 keys), mostly per-product call overhead;
    as broadcast multiply-and-sum it was ~0.4 ms less, so decode steps take that form (measured
    again with torch 2.13: batched matmuls 6-10% slower per generate call).
    """
    B, H, S, D = q.shape
    K = keys.shape[1]
    g = H // K
    q = (q * D ** -0.5).reshape(B, K, g * S, D)
    if S == 1:
        scores = (keys[:, :, None] * q[:, :, :, None]).sum(-1)  # [B, K, g, T]
    else:
        scores = torch.matmul(q, keys.transpose(-1, -2))  # [B, K, g*S, T]
    if prefix is not None:
        shared = _per_prompt(q, prefix, prefix[0].keys[prefix[1]])
        T = shared.shape[-1] + scores.shape[-1]
        scores = torch.cat([shared, _by_rows(scores, shared)], dim=-1).view(B, K, g * S, T)
    T = scores.shape[-1]
    probs = (scores.view(B, K, g, S, T) + bias[:, :, None]).softmax(dim=-1).view(B, K, g * S, T)
    tp = 0 if prefix is None else T - keys.shape[2]
    own = probs[..., tp:]
    if S == 1:
        out = (own[..., None] * values[:, :, None]).sum(-2)  # [B, K, g, D]
    else:
        out = torch.matmul(own, values)
    if prefix is not None:
        shared = _per_prompt(probs[..., :tp], prefix, prefix[0].values[prefix[1]])
        out = (_by_rows(out, shared) + shared).reshape(B, K, g * S, D)
    return out.view(B, H, S, D)


def _per_prompt(x: Tensor, prefix: tuple[SharedPrefix, int], other: Tensor) -> Tensor:
    """x [B, K, M, N] @ other[owner] [P, K, N, O] without gathering `other` per row: each prompt's
    rows are stacked (zero-padded to per_prompt) and multiplied once, in other's dtype.

    Returns [R, r, K, M, O] with R * r = B, the rows in order: [P, per_prompt, ...] (a strided view,
    no copy back) when the rows are dense, else [B, 1, ...]; `_by_rows` views a [B, ...] tensor alike.
    """
    shared = prefix[0]
    B, K, M, N = x.shape
    P, n = other.shape[0], shared.per_prompt
    if shared.dense:  # the rows are already stacked by prompt: one copy (and cast) into place
        stacked = x.new_empty((P, K, n, M, N), dtype=other.dtype)
        stacked.copy_(x.view(P, n, K, M, N).transpose(1, 2))
        out = torch.matmul(stacked.view(P, K, n * M, N), other)  # [P, K, n*M, O]
        return out.view(P, K, n, M, other.shape[-1]).transpose(1, 2)
    stacked = x.new_zeros((P, n, K, M, N), dtype=other.dtype)
    stacked[shared.owner, shared.slot] = x.to(other.dtype)
    out = torch.matmul(stacked.transpose(1, 2).reshape(P, K, n * M, N), other)  # [P, K, n*M, O]
    return out.view(P, K, n, M, other.shape[-1]).transpose(1, 2)[shared.owner, shared.slot][:, None]


def _by_rows(x: Tensor, like: Tensor) -> Tensor:
    """x [B, ...] viewed as [R, r, ...], the two leading dimensions of `like` (from _per_prompt)."""
    return x.view(*like.shape[:2], *x.shape[1:])

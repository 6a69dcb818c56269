"""The GRPO maths as pure tensor functions (DeepSeekMath Eq. 3-4, R1 Eq. 1-3, DAPO, Dr. GRPO).

Nothing here knows about models, tokenizers or optimisers: every function maps tensors to
tensors, with shapes in its docstring. Variants are small separate functions chosen by name:

    ADVANTAGES["group" | "batch" | "none"](rewards)              [P, G] -> [P, G]
    KL_ESTIMATORS["k1" | "k2" | "k3"](logp, ref_logp)            [N, T] -> [N, T]
    AGGREGATIONS["seq_mean" | "token_mean" | "constant"](loss, mask, ...)  [N, T] -> []

Shapes: P prompts, G completions per prompt, N = P * G completion rows (prompt-major, so
``advantages.reshape(-1)`` lines up with the rows), T padded completion length.

Where this departs from the paper's formulas:

1. The group std is the unbiased one (``correction=1``, as TRL does) and gets ``eps`` added, so a
   group whose rewards are all equal gets advantage exactly 0 instead of 0/0 (the paper is silent).
2. Log-ratios are clamped to [-20, 20] before ``exp`` so a diverged token can't overflow to inf;
   exp(20) ~ 5e8 is far beyond any ratio a healthy run produces, so the clamp never bites there.
3. The token aggregation is a choice (the paper's 1/|o_i| is "seq_mean"); each aggregation takes
   optional batch-wide normalisers so gradient accumulation over chunks gives the same gradient
   as one big batch (see `count_normalisers`).

Run the tests with ``python -m pytest tests/test_grpo_losses.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

# exp(20) ~ 4.9e8: large enough never to change a healthy ratio, small enough never to overflow.
LOG_RATIO_CLAMP = 20.0


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over the entries where `mask` is true; 0 where nothing is masked in.

    x, mask: same shape (mask bool or 0/1). dim=None -> 0-d tensor, else `dim` is reduced.
    Masked-out entries are replaced rather than multiplied by 0, so padding holding inf or NaN
    (log-probs of pad tokens) can't leak into the result.
    """
    keep = mask.bool()
    total = torch.where(keep, x, torch.zeros_like(x))
    count = keep.to(x.dtype)
    if dim is None:
        return total.sum() / count.sum().clamp(min=1.0)
    return total.sum(dim) / count.sum(dim).clamp(min=1.0)


# --------------------------------------------------------------------------------------------
# Advantages: rewards [P, G] -> advantages [P, G]; every token of completion i then gets A_i.
# --------------------------------------------------------------------------------------------


def zero_variance_groups(rewards: Tensor) -> Tensor:
    """bool [P]: groups whose G rewards are all equal (no learning signal; DAPO drops them)."""
    return (rewards == rewards[:, :1]).all(dim=1)


def _std(x: Tensor, dim: int | None = None) -> Tensor:
    """Unbiased std (keepdim), 0 instead of NaN when fewer than two values are reduced."""
    n = x.numel() if dim is None else x.shape[dim]
    if n < 2:
        return torch.zeros_like(x.sum() if dim is None else x.sum(dim, keepdim=True))
    return x.std() if dim is None else x.std(dim, correction=1, keepdim=True)


def _centred(rewards: Tensor, scale: Tensor | float = 1.0) -> Tensor:
    """(r - group mean) / scale [P, G], set exactly to 0 in zero-variance groups.

    The float mean of equal values can differ from them in the last bit, and with eps=0 a
    unanimous group is 0/0; forcing 0 afterwards makes "no signal" exact and never NaN.
    """
    scaled = (rewards - rewards.mean(dim=1, keepdim=True)) / scale
    return torch.where(zero_variance_groups(rewards)[:, None], torch.zeros_like(scaled), scaled)


def group_advantages(rewards: Tensor, eps: float = 1e-4) -> Tensor:
    """GRPO / R1: (r - group mean) / (group std + eps). rewards [P, G] -> [P, G].

    The std is unbiased (correction=1), as in TRL; the paper does not say which.
    """
    return _centred(rewards, _std(rewards, dim=1) + eps)


def batch_advantages(rewards: Tensor, eps: float = 1e-4) -> Tensor:
    """(r - group mean) / (std of all rewards in the batch + eps). rewards [P, G] -> [P, G].

    A batch-wide scale (REINFORCE++ style, TRL's scale_rewards="batch") keeps groups that are
    nearly unanimous from being blown up to unit variance the way per-group std does.
    """
    return _centred(rewards, _std(rewards) + eps)


def centred_advantages(rewards: Tensor) -> Tensor:
    """Dr. GRPO: r - group mean, no std division (it biases towards easy/hard questions)."""
    return _centred(rewards)


ADVANTAGES: dict[str, Callable[[Tensor], Tensor]] = {
    "group": group_advantages,
    "batch": batch_advantages,
    "none": centred_advantages,
}


# --------------------------------------------------------------------------------------------
# KL estimators of KL(pi_theta || pi_ref) per token, from the sampled tokens' log-probs.
# --------------------------------------------------------------------------------------------


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 = logp - ref_logp. [N, T] -> [N, T]. Unbiased but can be negative per token."""
    return logp - ref_logp


def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k2 = (logp - ref_logp)^2 / 2. [N, T] -> [N, T]. Biased, always >= 0, low variance."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 = pi_ref/pi - log(pi_ref/pi) - 1 (the paper's estimator). [N, T] -> [N, T].

    Written as expm1(x) - x with x = ref_logp - logp: exp(x) - x - 1 loses everything to
    rounding for small x and can come out slightly negative; expm1 keeps it >= 0 and exactly 0
    when x == 0. x is clamped to +-LOG_RATIO_CLAMP so a diverged token can't overflow.
    """
    x = (ref_logp - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.expm1(x) - x


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


# --------------------------------------------------------------------------------------------
# Clipped surrogate (PPO clip, per token, outcome supervision).
# --------------------------------------------------------------------------------------------


def _clip_masks(ratio: Tensor, adv: Tensor, eps_low: float, eps_high: float) -> tuple[Tensor, Tensor]:
    """bool [N, T] pair: tokens where the clipped branch wins the min (its gradient is 0).

    Low: ratio < 1 - eps_low with A < 0. High: ratio > 1 + eps_high with A > 0.
    """
    low = (ratio < 1.0 - eps_low) & (adv < 0)
    high = (ratio > 1.0 + eps_high) & (adv > 0)
    return low, high


def clipped_surrogate(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, eps_low: float, eps_high: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token PPO-clip loss -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A).

    logp, old_logp: [N, T] log-probs of the sampled tokens under pi_theta and pi_old.
    advantages: [N], the same for every token of a completion (outcome supervision).
    eps_high > eps_low is DAPO's clip-higher; the paper has eps_low == eps_high.
    Returns (per_token_loss [N, T], ratio [N, T], clipped_mask bool [N, T]); clipped_mask marks
    tokens where clipping is active. Padding positions are computed too: aggregate with a mask.
    """
    ratio = torch.exp((logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    adv = advantages[:, None].to(ratio.dtype)
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * adv
    low, high = _clip_masks(ratio, adv, eps_low, eps_high)
    return -torch.minimum(unclipped, clipped), ratio, low | high


# --------------------------------------------------------------------------------------------
# Aggregations: per-token loss [N, T] + mask [N, T] -> scalar.
#
# Gradient accumulation: to split a batch into chunks and still get the whole batch's gradient,
# pass every chunk the *batch's* totals (`count_normalisers` over all chunks' masks) and sum the
# chunk losses. Left as None, the totals are this chunk's, which is right for a single chunk.
# All three take the same keyword arguments so they can be picked from one dict; each ignores
# what it does not need.
# --------------------------------------------------------------------------------------------


class Normalisers(NamedTuple):
    """Batch-wide totals that make aggregations chunk-invariant (0-d tensors, no host sync)."""

    num_sequences: Tensor  # rows, counting rows with no loss tokens (as TRL and Dr. GRPO do)
    num_tokens: Tensor  # tokens where the mask is 1


def count_normalisers(masks: Sequence[Tensor]) -> Normalisers:
    """Totals over the masks [N_c, T_c] of all chunks of one optimiser step."""
    device = masks[0].device
    num_sequences = torch.tensor(float(sum(m.shape[0] for m in masks)), device=device)
    num_tokens = torch.stack([m.bool().sum().float() for m in masks]).sum()
    return Normalisers(num_sequences, num_tokens)


def _denominator(total: Tensor | float | None, local: Tensor | float, like: Tensor) -> Tensor:
    """The batch-wide `total` if given, else this chunk's `local`; at least 1 (no 0/0)."""
    value = local if total is None else total
    return torch.as_tensor(value, dtype=like.dtype, device=like.device).clamp(min=1.0)


def seq_mean(
    per_token_loss: Tensor,
    mask: Tensor,
    *,
    num_sequences: Tensor | float | None = None,
    num_tokens: Tensor | float | None = None,
    max_len: int | None = None,
) -> Tensor:
    """DeepSeekMath / R1: mean over each row's tokens, then sum rows / num_sequences. -> [].

    A row with no mask tokens contributes 0 but still counts as a sequence (as in TRL).
    num_tokens and max_len are ignored.
    """
    per_row = masked_mean(per_token_loss, mask, dim=1)
    return per_row.sum() / _denominator(num_sequences, per_token_loss.shape[0], per_row)


def token_mean(
    per_token_loss: Tensor,
    mask: Tensor,
    *,
    num_sequences: Tensor | float | None = None,
    num_tokens: Tensor | float | None = None,
    max_len: int | None = None,
) -> Tensor:
    """DAPO: sum over all mask tokens / num_tokens (long answers weigh more). -> [].

    num_sequences and max_len are ignored.
    """
    total = torch.where(mask.bool(), per_token_loss, torch.zeros_like(per_token_loss)).sum()
    return total / _denominator(num_tokens, mask.bool().sum(), total)


def constant_norm(
    per_token_loss: Tensor,
    mask: Tensor,
    *,
    num_sequences: Tensor | float | None = None,
    num_tokens: Tensor | float | None = None,
    max_len: int | None = None,
) -> Tensor:
    """Dr. GRPO: sum over all mask tokens / (num_sequences * max_len). -> [].

    max_len is a constant (e.g. max_new_tokens), required: defaulting to the padded width T
    would make the loss depend on how the batch happened to be padded. num_tokens is ignored.
    """
    if max_len is None:
        raise ValueError("the 'constant' aggregation needs max_len (e.g. max_new_tokens)")
    total = torch.where(mask.bool(), per_token_loss, torch.zeros_like(per_token_loss)).sum()
    return total / (_denominator(num_sequences, per_token_loss.shape[0], total) * max_len)


AGGREGATIONS: dict[str, Callable[..., Tensor]] = {
    "seq_mean": seq_mean,
    "token_mean": token_mean,
    "constant": constant_norm,
}


# --------------------------------------------------------------------------------------------
# The full GRPO loss.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LossStats:
    """Detached 0-d tensors for logging (call .item() when writing metrics, not every chunk)."""

    policy_loss: Tensor  # the clipped surrogate alone, aggregated like the loss
    kl: Tensor  # masked token mean of the KL estimate (0 when no KL term)
    clip_low: Tensor  # share of mask tokens clipped at 1 - eps_low (A < 0)
    clip_high: Tensor  # share of mask tokens clipped at 1 + eps_high (A > 0)
    clip_fraction: Tensor  # clip_low + clip_high
    ratio_mean: Tensor  # masked token mean of pi_theta / pi_old


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float,
    eps_high: float,
    beta: float,
    aggregation: str,
    kl_estimator: str = "k3",
    max_len: int | None = None,
    num_sequences: Tensor | float | None = None,
    num_tokens: Tensor | float | None = None,
    token_weights: Tensor | None = None,
) -> tuple[Tensor, LossStats]:
    """GRPO objective (negated, to minimise) for N completions. Returns (loss [], LossStats).

    logp, old_logp, ref_logp: [N, T] log-probs of the sampled tokens under pi_theta, pi_old and
    pi_ref (ref_logp None or beta == 0: no KL term). advantages [N]. mask [N, T]: 1 for the
    completion tokens that count. As in DeepSeekMath Eq. 3 the KL goes into the loss, per token
    (beta * kl added before aggregating), not into the reward.
    aggregation: a key of AGGREGATIONS; max_len, num_sequences, num_tokens are passed to it.
    token_weights: [N, T] or None, multiplying each token's policy-gradient term (not the KL),
    as TRL does: the truncated importance weights of grpo/importance.py.
    """
    aggregate = AGGREGATIONS[aggregation]
    norm_kwargs = dict(num_sequences=num_sequences, num_tokens=num_tokens, max_len=max_len)
    surrogate, ratio, _ = clipped_surrogate(logp, old_logp, advantages, eps_low, eps_high)
    if token_weights is not None:
        surrogate = surrogate * token_weights
    per_token = surrogate
    kl = torch.zeros_like(surrogate)
    if ref_logp is not None and beta != 0.0:
        kl = KL_ESTIMATORS[kl_estimator](logp, ref_logp)
        per_token = surrogate + beta * kl
    loss = aggregate(per_token, mask, **norm_kwargs)

    low, high = _clip_masks(ratio.detach(), advantages[:, None], eps_low, eps_high)
    with torch.no_grad():
        stats = LossStats(
            policy_loss=aggregate(surrogate.detach(), mask, **norm_kwargs),
            kl=masked_mean(kl.detach(), mask),
            clip_low=masked_mean(low.float(), mask),
            clip_high=masked_mean(high.float(), mask),
            clip_fraction=masked_mean((low | high).float(), mask),
            ratio_mean=masked_mean(ratio.detach(), mask),
        )
    return loss, stats


# --------------------------------------------------------------------------------------------
# DAPO soft overlong punishment (a reward term).
# --------------------------------------------------------------------------------------------


def soft_overlong_penalty(lengths: Tensor, max_len: int, cache_len: int) -> Tensor:
    """DAPO Eq. 13: a length penalty added to the reward. lengths [N] -> float [N].

    0 for L <= max_len - cache_len; ((max_len - cache_len) - L) / cache_len in between (linear
    from 0 to -1); -1 for L >= max_len. One clamped line instead of DAPO's three cases.
    """
    if not 0 < cache_len <= max_len:
        raise ValueError(f"need 0 < cache_len <= max_len, got cache_len={cache_len}, max_len={max_len}")
    over = (max_len - cache_len - lengths.float()) / cache_len
    return over.clamp(-1.0, 0.0)

"""The GRPO maths as pure tensor functions (DeepSeekMath Eq. 3-4, R1 Eq. 1-3, DAPO, Dr. GRPO,
GSPO, CISPO, KL-Cov).

Nothing here knows about models, tokenizers or optimisers: every function maps tensors to
tensors, with shapes in its docstring. Variants are small separate functions chosen by name:

    ADVANTAGES[...](rewards)                                     [P, G] -> [P, G]  (grpo/advantages.py)
    KL_ESTIMATORS["k1" | "k2" | "k3"](logp, ref_logp)            [N, T] -> [N, T]
    SURROGATES["clip" | "gspo" | "cispo"](logp, old, adv, mask, eps_low, eps_high) -> Surrogate
    AGGREGATIONS["seq_mean" | "token_mean" | "constant"](loss, mask, ...)  [N, T] -> []
    LOSS_TYPES["grpo" | "dapo" | "dr_grpo" | "gspo" | "cispo"] -> (surrogate, default aggregation)

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



class Surrogate(NamedTuple):
    """A policy surrogate's per-token loss and what to log about it, all [N, T]."""

    per_token: Tensor  # loss to aggregate (with gradient)
    ratio: Tensor  # the importance ratio the surrogate used (detached)
    clip_low: Tensor  # bool: tokens whose ratio was clipped or truncated from below
    clip_high: Tensor  # bool: ... from above


def token_clip_surrogate(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor,
                         eps_low: float, eps_high: float) -> Surrogate:
    """GRPO / DAPO / Dr. GRPO: the per-token PPO clip of `clipped_surrogate`. [N, T], [N] -> Surrogate.

    loss_t = -min(rho_t A, clip(rho_t, 1 - eps_low, 1 + eps_high) A), rho_t = pi(y_t) / pi_old(y_t).
    mask is unused (the token ratios need no sequence statistics).
    """
    per_token, ratio, _ = clipped_surrogate(logp, old_logp, advantages, eps_low, eps_high)
    low, high = _clip_masks(ratio.detach(), advantages[:, None], eps_low, eps_high)
    return Surrogate(per_token, ratio.detach(), low, high)


def gspo_surrogate(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor,
                   eps_low: float, eps_high: float) -> Surrogate:
    """GSPO (arXiv 2507.18071), in its GSPO-token form. [N, T], [N], mask [N, T] -> Surrogate.

    Sequence ratio s_i = exp(mean_t (logp_t - old_logp_t)) over the completion's mask tokens
    (length-normalised), clipped per sequence: loss_t = -min(s_it A_i, clip(s_it, 1 - eps_low,
    1 + eps_high) A_i) with s_it = sg[s_i] * pi(y_t) / sg[pi(y_t)]. s_it equals s_i in value and
    its gradient is s_i * grad logp_t, so with seq_mean aggregation the gradient is GSPO's
    s_i A_i * mean_t grad logp_t. A clipped sequence gets no gradient on any token. The paper's
    clip range is far narrower than GRPO's (eps_low 3e-4, eps_high 4e-4).
    """
    log_seq = masked_mean(logp.detach() - old_logp, mask, dim=1).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [N]
    seq_ratio = torch.exp(log_seq)[:, None].to(logp.dtype)
    token_ratio = seq_ratio * torch.exp(logp - logp.detach())  # value s_i, gradient s_i * grad logp_t
    adv = advantages[:, None].to(logp.dtype)
    per_token = -torch.minimum(token_ratio * adv, token_ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * adv)
    ratio = seq_ratio.expand_as(logp)
    low, high = _clip_masks(ratio, adv, eps_low, eps_high)
    return Surrogate(per_token, ratio, low, high)


def cispo_surrogate(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor,
                    eps_low: float, eps_high: float) -> Surrogate:
    """CISPO (MiniMax-M1, arXiv 2506.13585). [N, T], [N] -> Surrogate.

    loss_t = -sg[clip(rho_t, 1 - eps_low, 1 + eps_high)] * A * logp_t: the importance weight is
    clipped and detached, and the REINFORCE term keeps every token's gradient (PPO's clip zeroes
    the gradient of clipped tokens instead). eps_low >= 1 means no lower bound, the paper's choice.
    "Clipped" tokens are those whose weight was truncated, whatever the sign of A.
    """
    ratio = torch.exp((logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)).detach()
    weight = ratio.clamp(max(0.0, 1.0 - eps_low), 1.0 + eps_high)
    per_token = -weight * advantages[:, None].to(logp.dtype) * logp
    return Surrogate(per_token, ratio, ratio < 1.0 - eps_low, ratio > 1.0 + eps_high)


SURROGATES: dict[str, Callable[..., Surrogate]] = {
    "clip": token_clip_surrogate,
    "gspo": gspo_surrogate,
    "cispo": cispo_surrogate,
}


def kl_cov_penalty(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, ratio: float,
                   coef: float) -> Tensor:
    """KL-Cov (arXiv 2505.22617): coef * |logp - old_logp| on the top `ratio` share of mask tokens
    by covariance, 0 elsewhere. [N, T], [N], mask [N, T] -> [N, T].

    cov_t = (logp_t - mean logp) (A_t - mean A), means over the mask tokens, detached. The
    tokens with the largest cov are the confident ones whose update most lowers the entropy;
    the KL term holds them near pi_old. At least one token is picked when ratio > 0. Added to
    the surrogate (verl's KL-Cov instead drops the PPO clip on the other tokens). The penalty
    is 0 while pi == pi_old (the first minibatch of a rollout): it acts from the second on.
    """
    keep = mask.bool()
    count = int(keep.sum())
    if ratio <= 0 or count == 0:
        return torch.zeros_like(logp)
    lp, adv = logp.detach(), advantages[:, None].to(logp.dtype).expand_as(logp)
    cov = (lp - masked_mean(lp, keep)) * (adv - masked_mean(adv, keep))
    cov = cov.masked_fill(~keep, float("-inf")).flatten()
    picked = torch.zeros_like(cov, dtype=torch.bool)
    picked[cov.topk(max(1, int(count * ratio))).indices] = True
    penalty = coef * (logp - old_logp).abs()
    return torch.where(picked.view_as(logp), penalty, torch.zeros_like(penalty))


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


class LossType(NamedTuple):
    """A `loss_type`: its surrogate (a key of SURROGATES) and the aggregation it implies."""

    surrogate: str
    aggregation: str


# grpo, dapo and dr_grpo share the token clip and differ in how tokens are averaged (as TRL's
# loss_type); gspo and cispo change the surrogate. An explicit `aggregation` overrides the default.
LOSS_TYPES: dict[str, LossType] = {
    "grpo": LossType("clip", "seq_mean"),  # R1 / DeepSeekMath: 1/G sum_i 1/|o_i| sum_t
    "dapo": LossType("clip", "token_mean"),  # DAPO: 1/sum_i |o_i| sum_i sum_t
    "dr_grpo": LossType("clip", "constant"),  # Dr. GRPO: 1/(G * max_len) sum_i sum_t
    "gspo": LossType("gspo", "seq_mean"),  # GSPO: 1/G sum_i (sequence-level ratio and clip)
    "cispo": LossType("cispo", "token_mean"),  # CISPO: token-level, normalised by all tokens
}


@dataclasses.dataclass(frozen=True)
class LossStats:
    """Detached 0-d tensors for logging (call .item() when writing metrics, not every chunk)."""

    policy_loss: Tensor  # the surrogate alone, aggregated like the loss
    kl: Tensor  # masked token mean of the KL estimate (0 when no KL term)
    clip_low: Tensor  # share of mask tokens clipped at 1 - eps_low (token clip, GSPO: A < 0)
    clip_high: Tensor  # share of mask tokens clipped at 1 + eps_high (token clip, GSPO: A > 0)
    clip_fraction: Tensor  # clip_low + clip_high
    ratio_mean: Tensor  # masked token mean of pi_theta / pi_old (GSPO: the sequence ratio)
    entropy: Tensor  # masked token mean of the policy's entropy (0 when not given)
    kl_cov: Tensor  # masked token mean of the KL-Cov penalty (0 when off)


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
    loss_type: str = "grpo",
    kl_estimator: str = "k3",
    max_len: int | None = None,
    num_sequences: Tensor | float | None = None,
    num_tokens: Tensor | float | None = None,
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
    kl_cov_ratio: float = 0.0,
    kl_cov_coef: float = 1.0,
    token_weights: Tensor | None = None,
) -> tuple[Tensor, LossStats]:
    """GRPO objective (negated, to minimise) for N completions. Returns (loss [], LossStats).

    logp, old_logp, ref_logp: [N, T] log-probs of the sampled tokens under pi_theta, pi_old and
    pi_ref (ref_logp None or beta == 0: no KL term). advantages [N]. mask [N, T]: 1 for the
    completion tokens that count. Per token, before aggregating (w_t: `token_weights`, or 1):
        w_t surrogate_t (LOSS_TYPES[loss_type]) + beta * kl_t + kl_cov_t - entropy_coef * H_t.
    As in DeepSeekMath Eq. 3 the KL goes into the loss, not into the reward. entropy [N, T]: the
    policy's entropy per position (with gradient for the bonus). kl_cov_ratio > 0 adds the
    KL-Cov penalty (`kl_cov_penalty`) on that share of tokens. token_weights [N, T]: importance
    weights (grpo/importance.py). aggregation: a key of AGGREGATIONS (given max_len, num_sequences, num_tokens).
    """
    aggregate = AGGREGATIONS[aggregation]
    norm_kwargs = dict(num_sequences=num_sequences, num_tokens=num_tokens, max_len=max_len)
    surrogate = SURROGATES[LOSS_TYPES[loss_type].surrogate](logp, old_logp, advantages, mask, eps_low, eps_high)
    per_token = policy_term = surrogate.per_token * (1.0 if token_weights is None else token_weights)
    kl = torch.zeros_like(per_token)
    if ref_logp is not None and beta != 0.0:
        kl = KL_ESTIMATORS[kl_estimator](logp, ref_logp)
        per_token = per_token + beta * kl
    kl_cov = kl_cov_penalty(logp, old_logp, advantages, mask, kl_cov_ratio, kl_cov_coef)
    if kl_cov_ratio > 0:
        per_token = per_token + kl_cov
    if entropy is not None and entropy_coef != 0.0:
        per_token = per_token - entropy_coef * entropy
    loss = aggregate(per_token, mask, **norm_kwargs)
    low, high = surrogate.clip_low, surrogate.clip_high
    with torch.no_grad():
        stats = LossStats(
            policy_loss=aggregate(policy_term.detach(), mask, **norm_kwargs),
            kl=masked_mean(kl.detach(), mask),
            clip_low=masked_mean(low.float(), mask),
            clip_high=masked_mean(high.float(), mask),
            clip_fraction=masked_mean((low | high).float(), mask),
            ratio_mean=masked_mean(surrogate.ratio, mask),
            entropy=masked_mean(entropy.detach(), mask) if entropy is not None else torch.zeros(()),
            kl_cov=masked_mean(kl_cov.detach(), mask),
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

"""Truncated importance sampling: correct for a sampler that is not the trainer (vLLM).

With ``rollout_backend: vllm`` the completions come from vLLM's kernels, whose token
probabilities differ slightly from the training forward's (other kernels, often bf16). The old
log-probs of the GRPO ratio are the trainer's own (a forward before the first optimiser step),
so the ratio starts at exactly 1; what remains is that the tokens were drawn from the sampler's
distribution, not the trainer's. Each token's loss is weighted by the importance weight

    w = pi_trainer(token) / pi_sampler(token) = exp(logp_trainer - logp_sampler)

truncated at a cap so one badly mismatched token can't dominate the gradient (Yao et al. 2025,
"Your efficient RL framework secretly brings you off-policy RL training"; TRL's
``vllm_importance_sampling_correction``, verl and prime-rl use it by default). The variants are
names, picked from `IMPORTANCE_WEIGHTS`:

    "tis"  min(w, cap)                 (TRL's default token_truncate, cap 2)
    "mask" w where w <= cap, else 0    (the token gets no loss)
    "none" 1                           (no correction; the mismatch is still measured)

Shapes: N completion rows, T padded completion length. Run the tests with
``python -m pytest tests/test_grpo_importance.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

# exp(20): as grpo/losses.py's ratio clamp, so a diverged token can't overflow to inf.
LOG_WEIGHT_CLAMP = 20.0


def _truncate(weights: Tensor, cap: float) -> Tensor:
    return weights.clamp(max=cap)


def _mask(weights: Tensor, cap: float) -> Tensor:
    return torch.where(weights > cap, torch.zeros_like(weights), weights)


def _none(weights: Tensor, cap: float) -> Tensor:
    return torch.ones_like(weights)


IMPORTANCE_WEIGHTS: dict[str, Callable[[Tensor, float], Tensor]] = {"tis": _truncate, "mask": _mask, "none": _none}


class Mismatch(NamedTuple):
    """Sampler/trainer disagreement over the masked tokens of a batch (0-d tensors)."""

    abs_diff_sum: Tensor  # sum over tokens of |logp_sampler - logp_trainer|
    abs_diff_max: Tensor  # max over tokens of the same (0 with no tokens)
    over_cap: Tensor  # number of tokens whose weight exceeds the cap (truncated or masked)
    tokens: Tensor  # number of tokens counted


def importance_weights(trainer_logp: Tensor, sampler_logp: Tensor, mask: Tensor, mode: str,
                       cap: float) -> tuple[Tensor, Mismatch]:
    """Per-token importance weights [N, T] (detached; 0 outside `mask`) and the batch's `Mismatch`.

    trainer_logp, sampler_logp: [N, T] log-probs of the sampled tokens under the training forward
    and under the sampler. mask: [N, T], 1 for the tokens that count. mode: a key of
    IMPORTANCE_WEIGHTS. cap: the truncation threshold (> 0; TRL uses 2).
    """
    keep = mask.bool()
    log_w = torch.where(keep, (trainer_logp - sampler_logp).detach(), torch.zeros_like(trainer_logp))
    raw = torch.exp(log_w.clamp(-LOG_WEIGHT_CLAMP, LOG_WEIGHT_CLAMP))  # padding may hold anything: zeroed
    weights = torch.where(keep, IMPORTANCE_WEIGHTS[mode](raw, cap), torch.zeros_like(raw))
    diff = log_w.abs()
    mismatch = Mismatch(abs_diff_sum=diff.sum(), abs_diff_max=diff.max() if diff.numel() else diff.new_zeros(()),
                        over_cap=(keep & (raw > cap)).sum().to(diff.dtype), tokens=keep.sum().to(diff.dtype))
    return weights, mismatch

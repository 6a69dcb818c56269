"""Advantage estimators: rewards [P, G] -> advantages [P, G], as pure tensor functions.

P prompts, G completions per prompt (prompt-major, so ``advantages.reshape(-1)`` lines up with
the rollout's rows); every token of completion i then gets A_i (outcome supervision). Each is
picked by name from ``ADVANTAGES`` (the ``advantage`` key of ``r1lab grpo``):

    group         (r - mean_g) / (std_g + eps)                         GRPO / R1
    batch         (r - mean_g) / (std_batch + eps)                     TRL scale_rewards="batch"
    none          r - mean_g                                           Dr. GRPO
    rloo          r_i - mean_{j != i} r_j = G / (G - 1) (r_i - mean_g) RLOO
    reinforce_pp  (r - mean_batch) / (std_batch + eps)                 REINFORCE++ (arXiv 2501.03262)
    pass_at_k     (E[max of a k-subset holding i] - E[max of a k-subset]) / (std of that max + eps)
                                                                       pass@k training (arXiv 2508.10751)

mean_g / std_g are over a prompt's G rewards, mean_batch / std_batch over all P * G. Every
function takes the same keyword arguments (``eps``, ``pass_k``) so they can be picked from one
dict; each ignores what it does not need. A group whose rewards are all equal gets advantage
exactly 0 (no NaN), except under reinforce_pp, which has no group baseline: there only a batch
whose rewards are all equal gets 0.

Run the tests with ``python -m pytest tests/test_grpo_losses.py -k advantage``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


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


def group_advantages(rewards: Tensor, eps: float = 1e-4, *, pass_k: int = 1) -> Tensor:
    """GRPO / R1: (r - group mean) / (group std + eps). rewards [P, G] -> [P, G].

    The std is unbiased (correction=1), as in TRL; the paper does not say which.
    """
    return _centred(rewards, _std(rewards, dim=1) + eps)


def batch_advantages(rewards: Tensor, eps: float = 1e-4, *, pass_k: int = 1) -> Tensor:
    """(r - group mean) / (std of all rewards in the batch + eps). rewards [P, G] -> [P, G].

    A batch-wide scale (TRL's scale_rewards="batch", REINFORCE++-baseline) keeps groups that are
    nearly unanimous from being blown up to unit variance the way per-group std does.
    """
    return _centred(rewards, _std(rewards) + eps)


def centred_advantages(rewards: Tensor, eps: float = 1e-4, *, pass_k: int = 1) -> Tensor:
    """Dr. GRPO: r - group mean, no std division (it biases towards easy/hard questions). [P, G] -> [P, G]."""
    return _centred(rewards)


def rloo_advantages(rewards: Tensor, eps: float = 1e-4, *, pass_k: int = 1) -> Tensor:
    """RLOO: A_i = r_i - mean_{j != i} r_j, the leave-one-out baseline. [P, G] -> [P, G].

    Equal to G / (G - 1) * (r_i - group mean): sum_{j != i} r_j = G * mean - r_i, so
    r_i - (G * mean - r_i) / (G - 1) = G (r_i - mean) / (G - 1). G = 1 has no "others": 0.
    """
    g = rewards.shape[1]
    return _centred(rewards, (g - 1) / g if g > 1 else 1.0)


def reinforce_pp_advantages(rewards: Tensor, eps: float = 1e-4, *, pass_k: int = 1) -> Tensor:
    """REINFORCE++ (arXiv 2501.03262): (r - batch mean) / (batch std + eps). [P, G] -> [P, G].

    No per-prompt baseline: the global batch normalisation alone centres and scales the returns
    (with outcome rewards and the KL in the loss, a completion's return is its reward). The std is
    unbiased; a batch whose rewards are all equal gets exactly 0.
    """
    if bool((rewards == rewards.flatten()[0]).all()):
        return torch.zeros_like(rewards)
    return (rewards - rewards.mean()) / (_std(rewards) + eps)


def _choose(n: Tensor | float, k: int) -> Tensor:
    """Binomial coefficient C(n, k) for a tensor of n (0 where n < k), through lgamma."""
    n = torch.as_tensor(n, dtype=torch.float64)
    value = torch.exp(torch.lgamma(n + 1) - torch.lgamma(torch.tensor(k + 1.0, dtype=torch.float64))
                      - torch.lgamma((n - k + 1).clamp(min=1)))
    return torch.where(n >= k, value.round(), torch.zeros_like(value))


def _expected_max(sorted_rewards: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """E[max] and E[max^2] over the k-subsets of the last dim's values, sorted ascending. [..., n] -> [...], [...].

    The m-th smallest (1-based) is a k-subset's max in C(m - 1, k - 1) of the C(n, k) subsets; ties
    change nothing (tied values make the same max whichever is counted).
    """
    n = sorted_rewards.shape[-1]
    m = torch.arange(1, n + 1, dtype=torch.float64, device=sorted_rewards.device)
    weights = (_choose(m - 1, k - 1) / float(math.comb(n, k))).to(sorted_rewards)
    return (sorted_rewards * weights).sum(-1), (sorted_rewards ** 2 * weights).sum(-1)


def pass_at_k_advantages(rewards: Tensor, eps: float = 1e-4, *, pass_k: int = 1) -> Tensor:
    """Pass@k advantages (arXiv 2508.10751, analytical form), k = pass_k. [P, G] -> [P, G].

    The group's "reward" is that of a k-subset: its best completion's. With R = the max reward of a
    random k-subset of the G completions:
        A_i = (E[R | the subset holds i] - E[R]) / (std(R) + eps).
    For 0/1 rewards with n_neg wrong completions out of G this is the paper's closed form:
    E[R] = 1 - C(n_neg, k) / C(G, k), std = sqrt(E[R] (1 - E[R])), a right answer gets
    (1 - E[R]) / std and a wrong one (1 - E[R] - C(n_neg - 1, k - 1) / C(G - 1, k - 1)) / std. Written
    through the max it also takes graded rewards (accuracy + format). k = 1 is GRPO with the
    population std. A group with std(R) = 0 (all equal, or every k-subset holds a best answer) gets 0.
    """
    p, g = rewards.shape
    if not 1 <= pass_k <= g:
        raise ValueError(f"pass_k must be in [1, G={g}], got {pass_k}")
    dtype, rewards = rewards.dtype, rewards.double()  # float64: an exactly flat group must show std ~ 0
    mean, second = _expected_max(rewards.sort(dim=1).values, pass_k)  # [P]
    std = (second - mean ** 2).clamp(min=0).sqrt()
    if pass_k == 1:
        given_i = rewards
    else:  # the other k - 1 members come from the G - 1 others: E[max(r_i, max of them)]
        others = rewards[:, None, :].expand(p, g, g)[:, ~torch.eye(g, dtype=torch.bool)].reshape(p, g, g - 1)
        ordered = torch.maximum(others.sort(dim=2).values, rewards[:, :, None])  # max(r_i, s_m), still ascending
        given_i, _ = _expected_max(ordered, pass_k - 1)
    adv = (given_i - mean[:, None]) / (std[:, None] + eps)
    flat = std <= 1e-6 * rewards.abs().amax(dim=1).clamp(min=1.0)  # std(R) = 0 up to float rounding
    return torch.where(flat[:, None] | zero_variance_groups(rewards)[:, None], torch.zeros_like(adv), adv).to(dtype)


def zero_advantages(rewards: Tensor, eps: float = 1e-4, *, pass_k: int = 1) -> Tensor:
    """No reward signal: A = 0 for every completion, so only the KL term to the reference trains.

    With `reference_model` a teacher and kl_estimator=k2 this is on-policy distillation: the student
    samples and is pulled toward the teacher's log-probs on its own tokens (reverse KL). The rewards
    are still computed and logged, to watch the task while the student learns.
    """
    return torch.zeros_like(rewards)


ADVANTAGES: dict[str, Callable[..., Tensor]] = {
    "group": group_advantages,
    "batch": batch_advantages,
    "none": centred_advantages,
    "rloo": rloo_advantages,
    "reinforce_pp": reinforce_pp_advantages,
    "pass_at_k": pass_at_k_advantages,
    "zero": zero_advantages,
}

"""The policy update: mu passes of clipped policy-gradient steps over one rollout.

Gradient accumulation over micro-batches is exact: the loss normalisers (number of sequences,
of tokens) are counted over the whole minibatch first, so splitting it for memory changes
nothing but the peak memory (tests/test_grpo_losses.py checks the invariance). Under torchrun the
same holds across processes: the normalisers and the gradients are summed over them
(grpo/parallel.py), so N processes make the one-process update.

Both forwards here (the policy's, with gradients, and the frozen reference's) pass the rollout's
`prompt_len`, so on Qwen2/Qwen3/Llama each group's prompt is run once for its G completions
(r1lab.models.fast_decoder; same log-probs and gradients as the model's own forward, within float rounding).
With sharding=fsdp the forwards are the model's own, FSDP sums the gradients in each backward,
and every process runs as many forwards and backwards as the busiest (r1lab.training.fsdp).

With `precision: bf16-mixed` or `bf16` both forwards run under bf16 autocast (r1lab.models.precision), and the old
log-probs in the ratio are the training forward's own (not the sampler's): the first minibatch
uses its current log-probs, detached, and the rows of later minibatches get one forward without
gradients before the first optimiser step. The ratio is then exactly 1 until the weights change
(tests/test_precision.py). Passes after the first (mu > 1) regroup the rows into other
micro-batches, and a bf16 forward depends slightly on its batch's shape: with unchanged weights
a log-prob moved by up to 3e-3 there (fp32: ~1e-6).

With a sampler other than the trainer (``rollout_backend: vllm``) the old log-probs are the
training forward's too, as with bf16, and the sampler's log-probs only enter through truncated
importance weights on each token's policy-gradient term (grpo/importance.py); the mismatch
between the two is reported as vllm/logp_diff_mean, vllm/logp_diff_max, vllm/is_capped_fraction.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from r1lab.training import distributed, fsdp
from r1lab.grpo.importance import importance_weights
from r1lab.training.packing import padded_batches
from r1lab.grpo.losses import Normalisers, count_normalisers, grpo_loss
from r1lab.grpo.parallel import sum_gradients, sum_over_processes
from r1lab.grpo.rollout import Rollout
from r1lab.models.precision import autocast
from r1lab.models.logprobs import sequence_logprobs


STAT_KEYS = ("kl", "clip/low", "clip/high", "clip/fraction", "ratio", "entropy", "kl_cov")  # what `_backward` reports
MISMATCH_KEYS = ("vllm/logp_diff_mean", "vllm/is_capped_fraction")  # and, with another sampler, these
MISMATCH_MAX = "vllm/logp_diff_max"


@dataclass(frozen=True)
class UpdateSettings:
    num_iterations: int
    minibatches: int
    micro_batch_size: int
    temperature: float
    eps_low: float
    eps_high: float
    beta: float
    kl_estimator: str
    aggregation: str
    max_len: int
    max_grad_norm: float
    precision: str = "fp32"  # r1lab.models.precision; other than fp32: old log-probs from the training forward
    max_tokens_per_micro_batch: int = 0  # > 0: micro-batches by a token budget (see `pack_by_length`)
    loss_type: str = "grpo"  # a key of grpo.losses.LOSS_TYPES
    entropy_coef: float = 0.0  # entropy bonus; 0: the entropy is only measured (no gradient)
    kl_cov_ratio: float = 0.0  # KL-Cov's share of tokens; 0 = off
    kl_cov_coef: float = 1.0
    # None: the sampler is the policy itself (its log-probs are the old ones). tis | mask | none: another
    # sampler (vLLM): old log-probs from the training forward, importance weights of grpo/importance.py
    importance_sampling: str | None = None
    importance_sampling_cap: float = 2.0


def update_policy(policy, optimizer, rollout: Rollout, settings: UpdateSettings, seed: int,
                  first_row: int = 0, total_rows: int | None = None) -> dict[str, float]:
    """Run the mu x minibatches optimiser steps; return token-weighted loss statistics.

    Under torchrun `rollout` is this process's share: rows [first_row, first_row + its rows) of
    the step's `total_rows`. Minibatches are drawn from the global rows, so each process trains
    on its part of the minibatch a single process would use.
    """
    n = total_rows or rollout.num_rows
    mine = range(first_row, first_row + rollout.num_rows)
    device = rollout.input_ids.device
    generator = torch.Generator().manual_seed(seed)
    orders = [torch.randperm(n, generator=generator) if settings.minibatches > 1 else torch.arange(n)
              for _ in range(settings.num_iterations)]
    # bf16: the sampler's log-probs differ from the training forward's by bf16 rounding (micro
    # base: mean 1e-3, max 0.09 per token), which would bias the ratio; the old log-probs are
    # those of the training forward itself.
    fresh_old = settings.precision != "fp32" or settings.importance_sampling is not None
    lengths = row_lengths(rollout)
    rollout = _keep_sampler_logp(rollout, settings)
    if fresh_old:
        rollout = _training_old_logp(policy, rollout, _micro_batches(orders[0], settings, mine, lengths)[1:], settings)
    totals = dict.fromkeys(_stat_keys(settings), 0.0)  # every process sums the same keys, even with no rows
    weight, diff_max = 0.0, 0.0
    grad_norms, losses = [], []
    for iteration, order in enumerate(orders):
        for k, micro in enumerate(_micro_batches(order, settings, mine, lengths)):
            parts = [rollout.rows(idx.to(device)) for idx in micro]
            norm = _global_normalisers(parts, device)
            idle = _idle_calls(policy, len(parts), device)
            optimizer.zero_grad(set_to_none=True)
            minibatch_loss = 0.0
            for idx, part in zip(micro, parts):
                # The first minibatch runs on the sampling policy: its old log-probs are its own.
                current = fresh_old and iteration == 0 and k == 0
                loss, stats, logp = _backward(policy, part, settings, norm, current)
                if current:
                    lo, hi = rollout.span(idx)
                    rollout.old_logp[idx, lo:hi - 1] = logp  # for the passes after the first (mu > 1)
                minibatch_loss += loss  # chunk losses carry the minibatch's normalisers: they add up
                diff_max = max(diff_max, stats.pop(MISMATCH_MAX, 0.0))
                w = float(part.completion_mask.sum())
                weight += w
                for key, value in stats.items():
                    totals[key] += w * value
            _sum_gradients(policy, idle, device)
            if settings.max_grad_norm > 0:
                grad_norms.append(fsdp.clip_grad_norm(policy, settings.max_grad_norm))
            optimizer.step()
            losses.append(minibatch_loss)
    # each process's loss is its share of the minibatch loss (global normalisers): they add up
    totals = sum_over_processes({**totals, "_weight": weight, **{f"_loss{i}": v for i, v in enumerate(losses)}},
                                device)
    weight = totals.pop("_weight")
    losses = [totals.pop(f"_loss{i}") for i in range(len(losses))]
    out = {key: value / max(weight, 1.0) for key, value in totals.items()}
    out["loss"] = sum(losses) / len(losses)
    if grad_norms:
        out["grad_norm"] = sum(grad_norms) / len(grad_norms)
    return out | _largest_mismatch(diff_max, settings, device)


def _stat_keys(settings: UpdateSettings) -> tuple[str, ...]:
    """The statistics `_backward` reports: the loss's, and the mismatch's with another sampler."""
    return STAT_KEYS + (MISMATCH_KEYS if settings.importance_sampling is not None else ())


def _largest_mismatch(diff_max: float, settings: UpdateSettings, device) -> dict[str, float]:
    """With another sampler: vllm/logp_diff_max, the largest over all processes (else nothing)."""
    if settings.importance_sampling is None:
        return {}
    return {MISMATCH_MAX: distributed.all_reduce_max(torch.tensor(diff_max, device=device)).item()}


def _keep_sampler_logp(rollout: Rollout, settings: UpdateSettings) -> Rollout:
    """With another sampler (importance_sampling set), the rollout with its log-probs kept as
    `sampler_logp`: `old_logp` is about to become the training forward's."""
    if settings.importance_sampling is None:
        return rollout
    return dataclasses.replace(rollout, sampler_logp=rollout.old_logp.clone())


def _idle_calls(model, calls: int, device) -> int:
    """For a sharded model, how many forwards this process adds to its `calls` to match the busiest
    process (r1lab.training.fsdp.pad_calls); asked before any of them, as collectives go in one order."""
    return fsdp.pad_calls(calls, device) if fsdp.is_sharded(model) else 0


def _sum_gradients(policy, idle: int, device) -> None:
    """Gradients summed over processes: by one all-reduce here, or, for a sharded policy, by FSDP
    in each backward (this process joins with `idle` backwards those of busier processes)."""
    if not fsdp.is_sharded(policy):
        sum_gradients(policy.parameters())
    for _ in range(idle):
        fsdp.idle_forward(policy, device, backward=True)


def _global_normalisers(parts: list[Rollout], device) -> Normalisers:
    """The minibatch's sequence and token counts over all processes (a process's share may be empty)."""
    if distributed.world_size() == 1:
        return count_normalisers([p.completion_mask for p in parts])
    counts = torch.zeros(2, dtype=torch.float64, device=device)
    if parts:
        local = count_normalisers([p.completion_mask for p in parts])
        counts += torch.stack([local.num_sequences, local.num_tokens]).to(counts)
    counts = distributed.all_reduce_sum(counts).float()
    return Normalisers(counts[0], counts[1])


def _micro_batches(order: torch.Tensor, settings: UpdateSettings, mine: range,
                   lengths: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """This process's row indices (local to its share `mine` of the global rows) of each
    minibatch's micro-batches, for one pass in `order` [N global rows]; a share may be empty.
    `lengths` [local rows]: each row's tokens (`row_lengths`), for a token budget.

    Rows in prompt order: a micro-batch then holds whole groups, whose shared prompt the forward
    runs once (sequence_logprobs' prompt_len). Order within a minibatch doesn't change its
    gradient: the loss normalisers are counted over all of it.
    """
    batches = []
    for minibatch in order.chunk(settings.minibatches):
        minibatch = minibatch.sort().values
        local = minibatch[(minibatch >= mine.start) & (minibatch < mine.stop)] - mine.start
        if settings.max_tokens_per_micro_batch:
            parts = pack_by_length(lengths[local], settings.max_tokens_per_micro_batch)
            batches.append(tuple(local[part] for part in parts))
        else:
            batches.append(tuple(idx for idx in local.split(settings.micro_batch_size) if len(idx)))
    return batches


def pack_by_length(lengths: torch.Tensor, budget: int) -> list[torch.Tensor]:
    """Positions of `lengths` [n] grouped into micro-batches of similar length whose padded size
    (rows x longest row) stays within `budget` tokens (a longer row goes alone). Rows are taken
    shortest first; each part's positions are ascending (prompt order within the part).

    >>> [p.tolist() for p in pack_by_length(torch.tensor([5, 2, 9, 3]), 10)]
    [[1, 3], [0], [2]]
    """
    parts = padded_batches(lengths.argsort(stable=True).tolist(), lengths.tolist(), budget)
    return [torch.tensor(sorted(part), dtype=torch.long) for part in parts]


def row_lengths(rollout: Rollout) -> torch.Tensor:
    """Each row's tokens up to its last real one (prompt columns included). [N] long"""
    real = rollout.attention_mask.bool()
    last = real.shape[1] - real.long().flip(1).argmax(dim=1)  # one past the last real column
    return torch.where(real.any(dim=1), last, torch.zeros_like(last)).cpu()


def _logprobs(policy, part: Rollout, settings: UpdateSettings) -> torch.Tensor:
    """The training forward: [n, L-1] float32 log-probs of one micro-batch, in settings.precision."""
    return _logprobs_entropy(policy, part, settings, with_entropy=False)


def _logprobs_entropy(policy, part: Rollout, settings: UpdateSettings, with_entropy: bool = True):
    """The training forward: log-probs [n, L-1] float32 (and, with_entropy, the entropy [n, L-1]
    at each position, with gradient only when there is an entropy bonus)."""
    with autocast(settings.precision, part.input_ids.device):
        return sequence_logprobs(policy, part.input_ids, part.attention_mask, temperature=settings.temperature,
                                 prompt_len=part.prompt_len, with_entropy=with_entropy,
                                 entropy_grad=settings.entropy_coef != 0.0)


@torch.no_grad()
def _training_old_logp(policy, rollout: Rollout, minibatches, settings: UpdateSettings) -> Rollout:
    """The rollout with old log-probs from the training forward (same micro-batches, so the same
    shapes and kernels) for the rows of `minibatches`; the other rows' are filled in by the first
    minibatch's own forward (update_policy). Costs one forward without gradients of those rows."""
    old = rollout.old_logp.clone()
    device = rollout.input_ids.device
    idle = _idle_calls(policy, sum(len(micro) for micro in minibatches), device)
    for micro in minibatches:
        for idx in micro:
            lo, hi = rollout.span(idx)
            old[idx, lo:hi - 1] = _logprobs(policy, rollout.rows(idx), settings)
    for _ in range(idle):
        fsdp.idle_forward(policy, device)
    return dataclasses.replace(rollout, old_logp=old)


def _backward(policy, part: Rollout, settings: UpdateSettings, norm,
              current_is_old: bool = False) -> tuple[float, dict[str, float], torch.Tensor]:
    """Forward, loss and backward for one micro-batch: its loss value, token-mean statistics and
    detached log-probs. `current_is_old`: the policy is the sampling one, so its log-probs
    (detached) are the old ones and the ratio is exactly 1."""
    logp, entropy = _logprobs_entropy(policy, part, settings)
    old_logp = logp.detach() if current_is_old else part.old_logp
    weights, mismatch = None, {}
    if part.sampler_logp is not None:
        weights, mismatch = _importance(old_logp, part, settings)
    loss, stats = grpo_loss(
        logp, old_logp, part.ref_logp, part.advantages, part.completion_mask,
        eps_low=settings.eps_low, eps_high=settings.eps_high, beta=settings.beta, loss_type=settings.loss_type,
        aggregation=settings.aggregation, kl_estimator=settings.kl_estimator, max_len=settings.max_len,
        num_sequences=norm.num_sequences, num_tokens=norm.num_tokens, entropy=entropy,
        entropy_coef=settings.entropy_coef, kl_cov_ratio=settings.kl_cov_ratio, kl_cov_coef=settings.kl_cov_coef,
        token_weights=weights)
    loss.backward()
    values = (stats.kl, stats.clip_low, stats.clip_high, stats.clip_fraction, stats.ratio_mean, stats.entropy,
              stats.kl_cov)
    return float(loss.detach()), {**{key: float(v) for key, v in zip(STAT_KEYS, values)}, **mismatch}, logp.detach()


def _importance(old_logp: torch.Tensor, part: Rollout, settings: UpdateSettings) -> tuple[torch.Tensor, dict]:
    """The micro-batch's importance weights [n, L-1] and its mismatch statistics (token means, and the max)."""
    weights, m = importance_weights(old_logp, part.sampler_logp, part.completion_mask, settings.importance_sampling,
                                    settings.importance_sampling_cap)
    tokens = max(float(m.tokens), 1.0)
    return weights, {"vllm/logp_diff_mean": float(m.abs_diff_sum) / tokens,
                     "vllm/is_capped_fraction": float(m.over_cap) / tokens, MISMATCH_MAX: float(m.abs_diff_max)}


def reference_logprobs(reference, rollout: Rollout, temperature: float, micro_batch_size: int,
                       precision: str = "fp32") -> torch.Tensor:
    """[N, L-1] log-probs of the rollout under the frozen reference, in micro-batches."""
    # FSDP's gathered weights track version counters, which inference tensors don't have
    with torch.no_grad() if fsdp.is_sharded(reference) else torch.inference_mode():
        return _reference_logprobs(reference, rollout, temperature, micro_batch_size, precision)


def _reference_logprobs(reference, rollout: Rollout, temperature: float, micro_batch_size: int,
                        precision: str) -> torch.Tensor:
    out = torch.zeros_like(rollout.old_logp)
    # an empty rollout (a process's empty share) still makes one empty split
    splits = [idx for idx in torch.arange(rollout.num_rows).split(micro_batch_size) if len(idx)]
    idle = _idle_calls(reference, len(splits), rollout.input_ids.device)
    for idx in splits:
        with autocast(precision, rollout.input_ids.device):
            out[idx] = sequence_logprobs(reference, rollout.input_ids[idx], rollout.attention_mask[idx],
                                         temperature=temperature, prompt_len=rollout.prompt_len)
    for _ in range(idle):
        fsdp.idle_forward(reference, rollout.input_ids.device)
    return out.clone()

"""Rollouts: sample G completions per prompt, score them, and pack them for the update.

A step's experience travels in one frozen `Rollout` of tensors (prompt-major rows: rows
i*G .. i*G+G-1 are prompt i's completions) plus a `Scored` record of the texts and rewards
for logging. The policy's log-probs at sampling time come from the sampler itself, so the
"old" log-probs cost no extra forward pass (the sampler's are equal to a fresh forward within
1e-5; tests/test_sampling.py and tests/test_grpo_speed_correctness.py check it); with
`precision: bf16-mixed` or `bf16` the sampler runs under bf16 autocast and grpo/update.py replaces its log-probs
with the training forward's, as bf16 rounding makes the two differ. The sampler is
r1lab.sampling.generate, or a vLLM engine with `rollout_backend: vllm` (r1lab/sampling/vllm.py).
`Rollout.prompt_len` marks where the prompts end, so the training and reference forwards run
each group's shared prompt once instead of G times.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from r1lab.grpo.advantages import zero_variance_groups
from r1lab.grpo.losses import soft_overlong_penalty
from r1lab.models.precision import autocast
from r1lab.rewards import FailurePolicy, RewardInputs, TrainerState, combine_rewards
from r1lab.sampling.generate import Completion, SamplingParams, generate


@dataclass(frozen=True)
class Rollout:
    """Packed experience of one step. N = P * G rows, L = padded prompt + completion length."""

    input_ids: Tensor  # [N, L] prompt left-padded, completion right-padded
    attention_mask: Tensor  # [N, L]
    completion_mask: Tensor  # [N, L-1] 1 where position t predicts a completion token that gets loss
    old_logp: Tensor  # [N, L-1] log-probs at sampling time (0 outside completions)
    advantages: Tensor  # [N]
    ref_logp: Tensor | None = None  # [N, L-1] under the frozen reference, when beta > 0
    prompt_len: int | None = None  # columns [0, prompt_len) hold the prompts, the rest completions
    sampler_logp: Tensor | None = None  # [N, L-1] a separate sampler's (vLLM's) when old_logp is the trainer's

    @property
    def num_rows(self) -> int:
        return self.input_ids.shape[0]

    def span(self, index: Tensor) -> tuple[int, int]:
        """[lo, hi): the columns the given rows use (a sub-rollout's columns in this one's)."""
        used = self.attention_mask[index].any(0).nonzero()
        return int(used[0]), int(used[-1]) + 1

    def rows(self, index: Tensor) -> Rollout:
        """The sub-rollout of the given rows, trimmed to the columns they use."""
        mask = self.attention_mask[index]
        lo, hi = self.span(index)
        return Rollout(
            input_ids=self.input_ids[index, lo:hi], attention_mask=mask[:, lo:hi],
            completion_mask=self.completion_mask[index, lo:hi - 1], old_logp=self.old_logp[index, lo:hi - 1],
            advantages=self.advantages[index],
            ref_logp=None if self.ref_logp is None else self.ref_logp[index, lo:hi - 1],
            prompt_len=None if self.prompt_len is None else self.prompt_len - lo,
            sampler_logp=None if self.sampler_logp is None else self.sampler_logp[index, lo:hi - 1],
        )

    def with_ref(self, ref_logp: Tensor) -> Rollout:
        return dataclasses.replace(self, ref_logp=ref_logp)

    def to(self, device) -> Rollout:
        """The same rollout with its tensors on `device` (the policy's)."""
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
                                            if isinstance(getattr(self, f.name), Tensor)})


@dataclass(frozen=True)
class Scored:
    """What a step's completions were and how they scored (for metrics and completions.jsonl)."""

    rows: list[dict]  # [P] the dataset rows
    completions: list[list[Completion]]  # [P][G]
    rewards: Tensor  # [P, G] weighted total (incl. overlong penalty)
    per_reward: dict[str, list[float | None]]  # name -> [P*G]

    @property
    def texts(self) -> list[str]:
        return [c.text for group in self.completions for c in group]

    def keep(self, groups: Sequence[int]) -> Scored:
        g = len(self.completions[0])
        flat = [i * g + j for i in groups for j in range(g)]
        return Scored([self.rows[i] for i in groups], [self.completions[i] for i in groups],
                      self.rewards[list(groups)], {k: [v[i] for i in flat] for k, v in self.per_reward.items()})

    @staticmethod
    def concat(parts: Sequence[Scored]) -> Scored:
        return Scored([r for p in parts for r in p.rows], [c for p in parts for c in p.completions],
                      torch.cat([p.rewards for p in parts]),
                      {k: [x for p in parts for x in p.per_reward[k]] for k in parts[0].per_reward})


@dataclass(frozen=True)
class RolloutSettings:
    params: SamplingParams
    reward_fns: Sequence[tuple[str, Callable]]
    reward_weights: Sequence[float]
    overlong_cache: int = 0
    batch_size: int | None = None
    sampler: Callable = generate  # (policy, tokenizer, prompt_ids, params, batch_size=, seeds=) -> [P][G] Completions
    hook: RolloutHook | None = None  # what the environment does while rollouts are sampled
    precision: str = "fp32"  # fp32 | bf16-mixed | bf16: the sampler runs under r1lab.models.precision.autocast
    failures: FailurePolicy = field(default_factory=FailurePolicy)  # what a raising reward does
    trainer_state: TrainerState | None = None  # passed to rewards (TRL's `trainer_state`)


class RolloutHook(Protocol):
    """Something the environment does while rollouts are sampled, and the metrics it logs: the
    plug for a task world that acts during sampling (the micro world's step noise is one)."""

    def token_hook(self, tokenizer, seed: int) -> Callable[[Sequence[int], int], int | None]:
        """A fresh sampler `token_hook` for one generate call (see r1lab.sampling.generate)."""

    def metrics(self, scored: Scored, tokenizer) -> dict[str, float]:
        """Metrics of a step's scored completions, logged beside GRPO's own."""


# Rollout hooks a GRPO config switches on by a setting: setting -> "module:factory", imported on
# first use (so the engine never imports the micro world unless asked), the factory called with
# the setting's value. The built-in one is the micro world's step noise.
ROLLOUT_HOOKS = {"step_noise": "r1lab.micro.step_noise:StepNoiseHook"}


def rollout_hook(config: Any) -> RolloutHook | None:
    """The hook a config's settings switch on (a setting left at 0/empty: none), or None."""
    for setting, target in ROLLOUT_HOOKS.items():
        value = getattr(config, setting, None)
        if value:
            module, factory = target.split(":")
            return getattr(importlib.import_module(module), factory)(value)
    return None


def weights_changed(sampler: Callable) -> None:
    """Tell a sampler holding its own copy of the weights (vLLM's engine) that the policy's changed,
    so it pushes them before it samples again; r1lab's own sampler reads the policy: nothing to do."""
    notify = getattr(sampler, "weights_changed", None)
    if notify is not None:
        notify()


def rollout_sampler(backend: str, model_path: str, engine: dict | None = None) -> Callable:
    """The sampler of a rollout backend: r1lab.sampling.generate ("native", any HF causal LM, CPU or
    GPU) or a vLLM engine for `model_path` built with `engine` (sampling/vllm.EngineSettings'
    fields) that gets the policy's weights before each rollout ("vllm")."""
    if backend == "native":
        return generate
    if backend == "vllm":
        from r1lab.sampling.vllm import EngineSettings, VLLMSampler

        return VLLMSampler(model_path, EngineSettings(**(engine or {})))
    raise ValueError(f"rollout_backend must be native or vllm; got '{backend}'")


def sample_and_score(policy, tokenizer, rows: list[dict], prompt_ids: list[list[int]],
                     settings: RolloutSettings, seeds: Sequence[int] | None = None) -> Scored:
    """G completions for each prompt, scored by the weighted reward functions. `seeds`: one per
    prompt, each group's own random stream (see r1lab.sampling.generate)."""
    extra: dict = {} if seeds is None else {"seeds": seeds}
    if settings.hook is not None:
        extra["token_hook"] = settings.hook.token_hook(tokenizer, settings.params.seed)
    with autocast(settings.precision, next(policy.parameters()).device):
        completions = settings.sampler(policy, tokenizer, prompt_ids, settings.params,
                                       batch_size=settings.batch_size, **extra)
    g = settings.params.n
    texts = [c.text for group in completions for c in group]
    columns = _columns(rows, g)
    inputs = RewardInputs(prompts=columns.get("prompt"), trainer_state=settings.trainer_state,
                          completion_ids=[list(c.token_ids) for group in completions for c in group])
    total, per_reward = combine_rewards(settings.reward_fns, settings.reward_weights, texts, inputs=inputs,
                                        failures=settings.failures, **columns)
    rewards = torch.tensor(total, dtype=torch.float32).view(len(rows), g)
    if settings.overlong_cache > 0:
        lengths = torch.tensor([len(c.token_ids) for group in completions for c in group])
        penalty = soft_overlong_penalty(lengths, settings.params.max_new_tokens, settings.overlong_cache)
        rewards = rewards + penalty.view(len(rows), g)
    return Scored(rows, completions, rewards, per_reward)


def _columns(rows: list[dict], g: int) -> dict[str, list]:
    """Dataset columns repeated G times, aligned with the flat completions (TRL's convention)."""
    keys = {k for row in rows for k in row}
    return {k: [row.get(k) for row in rows for _ in range(g)] for k in keys if k != "completions"}


def informative_groups(scored: Scored) -> list[int]:
    """Indices of groups whose rewards are not all equal (DAPO dynamic sampling keeps these)."""
    return (~zero_variance_groups(scored.rewards)).nonzero().flatten().tolist()


def pack(scored: Scored, prompt_ids: list[list[int]], advantages: Tensor, pad_id: int,
         mask_truncated: bool = False) -> Rollout:
    """Tensors for the update: rows prompt-major, advantages broadcast to every completion token.
    `advantages` [P, G]: the caller's, from its estimator (`grpo.advantages.ADVANTAGES`) on the whole
    step's rewards (under torchrun this is a process's share of them)."""
    if not scored.rows:  # a process's share of a step with fewer kept groups than processes
        return Rollout(*(torch.zeros((0, 1), dtype=torch.long) for _ in range(2)), torch.zeros((0, 0)),
                       torch.zeros((0, 0)), torch.zeros(0), prompt_len=0)
    g = len(scored.completions[0])
    advantages = advantages.reshape(-1)
    flat = [(prompt_ids[i], c) for i, group in enumerate(scored.completions) for c in group]
    p_len = max(len(p) for p, _ in flat)
    c_len = max(max(len(c.token_ids) for _, c in flat), 1)
    n, width = len(flat), p_len + c_len
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    completion_mask = torch.zeros((n, width - 1))
    old_logp = torch.zeros((n, width - 1))
    for row, (prompt, c) in enumerate(flat):
        k = len(c.token_ids)
        input_ids[row, p_len - len(prompt):p_len] = torch.tensor(prompt)
        attention[row, p_len - len(prompt):p_len + k] = 1
        if k:
            input_ids[row, p_len:p_len + k] = torch.tensor(c.token_ids)
            old_logp[row, p_len - 1:p_len - 1 + k] = torch.tensor(c.logprobs)
            if not (mask_truncated and c.finish_reason == "length"):
                completion_mask[row, p_len - 1:p_len - 1 + k] = 1.0
                # tokens the environment wrote (a rollout hook) are not the policy's choice: no loss
                completion_mask[row, [p_len - 1 + i for i in c.forced]] = 0.0
    assert n == len(scored.rows) * g
    return Rollout(input_ids, attention, completion_mask, old_logp, advantages, prompt_len=p_len)

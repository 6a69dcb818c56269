"""A GRPO step's groups: prompts drawn from the stream, sampled, scored; with dynamic sampling,
refilled. Used by the training loop, and by the thread that samples a step ahead (grpo/overlap.py).
"""

from __future__ import annotations

import dataclasses

from r1lab.grpo.config import GRPOConfig
from r1lab.problems import PromptStream
from r1lab.grpo.parallel import gather_scored, group_seed, share
from r1lab.grpo.rollout import RolloutSettings, Scored, informative_groups, sample_and_score
from r1lab.problem_formats import render_problem, tokenize_prompts
from r1lab.rewards import TrainerState
from r1lab.training import distributed


def prompt_token_ids(rows: list[dict], tokenizer, config: GRPOConfig) -> list[list[int]]:
    """Token ids of the rows' prompts: templated (or chat-rendered), BOS as the tokenizer adds it."""
    texts = [render_problem(row["prompt"], config.template, tokenizer, config.data.system_prompt) for row in rows]
    return tokenize_prompts(tokenizer, texts)


def trainer_state(step: int, config: GRPOConfig, stream: PromptStream) -> TrainerState:
    """What a reward sees as TRL's `trainer_state` while step `step` (1-based) is sampled."""
    epoch = stream.epoch + stream.position / max(1, len(stream.rows))
    return TrainerState(global_step=step - 1, max_steps=config.max_steps, epoch=epoch,
                        is_world_process_zero=distributed.is_main())


def collect_step(sampler, step: int, *, tokenizer, stream: PromptStream, config: GRPOConfig,
                  settings: RolloutSettings):
    """Step `step`'s groups sampled by `sampler` and scored (with that step's reward weights)."""
    settings = dataclasses.replace(settings, reward_weights=config.weights_at(step),
                                   trainer_state=trainer_state(step, config, stream))
    sampler.eval()
    return collect(sampler, tokenizer, stream, config, settings, step)


def collect(policy, tokenizer, stream: PromptStream, config: GRPOConfig, settings: RolloutSettings, step: int):
    """P scored groups for this step; with dynamic sampling, all-equal groups are replaced by
    groups from fresh prompts (up to `max_refills` rounds). Returns (scored, prompt ids, all
    groups sampled this step: the zero-variance share is measured on these). Under torchrun every
    process returns all of them, so every process makes the same refill decisions."""
    kept: list[Scored] = []
    kept_ids: list[list[int]] = []
    sampled: list[Scored] = []
    need = config.prompts_per_step
    rounds = 1 + (config.max_refills if config.dynamic_sampling else 0)
    for r in range(rounds):
        rows = stream.take(need)  # the same rows on every process
        prompt_ids = prompt_token_ids(rows, tokenizer, config)  # once: for sampling and for packing
        scored = sample_shared(policy, tokenizer, rows, prompt_ids, config, settings, [step, r])
        sampled.append(scored)
        if config.dynamic_sampling:
            informative = informative_groups(scored)
            scored, prompt_ids = scored.keep(informative), [prompt_ids[i] for i in informative]
        if scored.rows:
            kept.append(scored)
            kept_ids += prompt_ids
        need = config.prompts_per_step - sum(len(s.rows) for s in kept)
        if need <= 0:
            break
    # every group was uninformative: train on the last draw anyway (zero advantage, no-op loss)
    result, result_ids = (Scored.concat(kept), kept_ids) if kept else (sampled[-1], prompt_ids)
    if len(result.rows) > config.prompts_per_step:
        result, result_ids = result.keep(range(config.prompts_per_step)), result_ids[:config.prompts_per_step]
    return result, result_ids, Scored.concat(sampled)


def sample_shared(policy, tokenizer, rows: list[dict], prompt_ids: list[list[int]], config: GRPOConfig,
                   settings: RolloutSettings, draw: list[int]) -> Scored:
    """All `rows` sampled and scored: each process samples its share, then all shares are gathered.
    Prompt i samples from its own stream, seeded by (seed, step, round, i), wherever it runs."""
    mine = share(len(rows))
    part = None
    if mine:
        local = rows[mine.start:mine.stop]
        seeds = [group_seed(config.seed, *draw, i) for i in mine]
        part = sample_and_score(policy, tokenizer, local, prompt_ids[mine.start:mine.stop], settings, seeds)
    return gather_scored(part)

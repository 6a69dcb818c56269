"""``r1lab grpo``: GRPO / R1-Zero reinforcement learning with rule-based rewards.

    r1lab grpo recipes/micro/r1_zero.yaml                  # R1-Zero on the micro base model
    r1lab grpo model=my-hf-folder data.train=prompts.jsonl template=chat max_steps=500

Each step: (1) take P prompts and sample G completions each from the current policy (the "old"
policy; the sampler returns its log-probs); (2) score them with the weighted rule rewards and
compute group-relative advantages, refilling groups whose rewards are all equal when dynamic
sampling is on; (3) log-probs under the frozen reference if beta > 0; (4) mu passes of clipped
policy-gradient updates over minibatches; (5) log metrics, sample completions, evaluate,
refresh the reference, checkpoint. Where this departs from the paper: see grpo/config.py and
grpo/losses.py (std with eps, log-ratio clamp, chunk-invariant aggregation).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path

import torch

from r1lab.checkpoint import (checkpoint_dir, latest_checkpoint, load_checkpoint, load_weights, prune_checkpoints,
                              save_checkpoint, save_final, save_model)
from r1lab.config import save_config
from r1lab.grpo.config import GRPOConfig
from r1lab.grpo.data import PromptStream, load_eval_rows, load_train_rows
from r1lab.grpo.metrics import MetricsLog, step_metrics, write_samples
from r1lab.grpo.rollout import (RolloutSettings, Scored, informative_groups, pack, rollout_sampler,
                                sample_and_score)
from r1lab.grpo.update import UpdateSettings, reference_logprobs, update_policy
from r1lab.modeling import load_model_and_tokenizer
from r1lab.precision import check_supported
from r1lab.plots import plot_run
from r1lab.rewards import load_reward
from r1lab.sampling import SamplingParams
from r1lab.sft import lr_multiplier
from r1lab.templates import render_prompt

__all__ = ["GRPOConfig", "main"]


def main(config: GRPOConfig) -> dict:
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    save_config(config, out / "config.yaml")

    policy, tokenizer = load_model_and_tokenizer(config.model)
    check_supported(config.precision, next(policy.parameters()).device)
    reference = _frozen_copy(policy) if config.beta > 0 else None
    stream = PromptStream(load_train_rows(config.data, config.seed), config.seed)
    eval_rows = load_eval_rows(config.data, config.seed)
    rollout_settings = RolloutSettings(
        params=SamplingParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                              top_p=config.top_p, top_k=config.top_k, n=config.num_generations,
                              stop=config.stop, seed=config.seed),
        reward_fns=[(spec, load_reward(spec)) for spec in config.rewards],
        reward_weights=config.weights, overlong_cache=config.overlong_cache,
        batch_size=config.rollout_batch_size,
        sampler=rollout_sampler(config.rollout_backend, config.model, config.seed), precision=config.precision)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay,
                                  betas=(config.adam_beta1, config.adam_beta2))
    floor = config.min_lr_ratio if config.lr_schedule == "cosine" else 1.0  # 1.0: constant after warmup
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, config.warmup_steps, config.max_steps, floor))

    start, ref_step = _resume(config, out, policy, reference, optimizer, scheduler, stream)
    log = MetricsLog(out / "metrics.jsonl", keep_up_to=start)
    if start == 0 and eval_rows:
        log.write({"step": 0, **_evaluate(policy, tokenizer, eval_rows, config)})

    progress = _progress(config, start)
    for step in range(start + 1, config.max_steps + 1):
        t0 = time.perf_counter()
        policy.eval()
        scored, prompt_ids, sampled = _collect(policy, tokenizer, stream, config, rollout_settings, step)
        rollout = pack(scored, prompt_ids, config.advantage, tokenizer.pad_token_id, config.mask_truncated)
        if reference is not None:
            rollout = rollout.with_ref(reference_logprobs(reference, rollout, config.temperature,
                                                          config.micro_batch_size, config.precision))
        t1 = time.perf_counter()
        policy.train()
        stats = update_policy(policy, optimizer, rollout, _update_settings(config), seed=config.seed + step)
        scheduler.step()
        t2 = time.perf_counter()

        metrics = step_metrics(step, scored, sampled, stats, rollout_s=t1 - t0, train_s=t2 - t1,
                               lr=scheduler.get_last_lr()[0], phrases=config.reflection_phrases)
        if reference is not None and config.ref_update_every and step % config.ref_update_every == 0:
            reference.load_state_dict(policy.state_dict())
            ref_step = step
            save_model(out / "reference" / f"step-{step:06d}", reference, tokenizer)
        if eval_rows and ((config.eval_every and step % config.eval_every == 0) or step == config.max_steps):
            metrics.update(_evaluate(policy, tokenizer, eval_rows, config))
        log.write(metrics)
        if config.sample_every and step % config.sample_every == 0:
            write_samples(out / "completions.jsonl", step, scored)
        if step % config.save_every == 0 or step == config.max_steps:
            state = {"step": step, "ref_step": ref_step, "stream": stream.state()}
            save_checkpoint(checkpoint_dir(out, step), policy, tokenizer, optimizer, scheduler, state)
            prune_checkpoints(out, config.keep_checkpoints)
        _report(progress, metrics)

    save_final(out / "final", policy, tokenizer)
    plot_run(out)
    print(f"grpo: done -> {out / 'final'}; metrics in {out / 'metrics.jsonl'}, curves in {out / 'curves.png'}")
    return log.last


def _frozen_copy(model):
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref


def _update_settings(config: GRPOConfig) -> UpdateSettings:
    return UpdateSettings(
        num_iterations=config.num_iterations, minibatches=config.minibatches,
        micro_batch_size=config.micro_batch_size, temperature=config.temperature, eps_low=config.eps_low,
        eps_high=config.eps_high, beta=config.beta, kl_estimator=config.kl_estimator,
        aggregation=config.aggregation, max_len=config.max_new_tokens, max_grad_norm=config.max_grad_norm,
        precision=config.precision)


def _collect(policy, tokenizer, stream: PromptStream, config: GRPOConfig, settings: RolloutSettings, step: int):
    """P scored groups for this step; with dynamic sampling, all-equal groups are replaced by
    groups from fresh prompts (up to `max_refills` rounds). Returns (scored, prompt ids, all
    groups sampled this step: the zero-variance share is measured on these)."""
    kept: list[Scored] = []
    sampled: list[Scored] = []
    need = config.prompts_per_step
    rounds = 1 + (config.max_refills if config.dynamic_sampling else 0)
    for r in range(rounds):
        rows = stream.take(need)
        params = dataclasses.replace(settings.params, seed=config.seed * 1_000_003 + step * 101 + r)
        scored = sample_and_score(policy, tokenizer, rows, _prompt_ids(rows, tokenizer, config.template),
                                  dataclasses.replace(settings, params=params))
        sampled.append(scored)
        if config.dynamic_sampling:
            scored = scored.keep(informative_groups(scored))
        if scored.rows:
            kept.append(scored)
        need = config.prompts_per_step - sum(len(s.rows) for s in kept)
        if need <= 0:
            break
    # every group was uninformative: train on the last draw anyway (zero advantage, no-op loss)
    result = Scored.concat(kept) if kept else sampled[-1]
    if len(result.rows) > config.prompts_per_step:
        result = result.keep(range(config.prompts_per_step))
    return result, _prompt_ids(result.rows, tokenizer, config.template), Scored.concat(sampled)


def _prompt_ids(rows: list[dict], tokenizer, template: str) -> list[list[int]]:
    texts = [render_prompt(template, row["prompt"], tokenizer) for row in rows]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _resume(config, out, policy, reference, optimizer, scheduler, stream) -> tuple[int, int]:
    """(last finished step, step of the last reference refresh); both 0 for a fresh run."""
    ckpt = latest_checkpoint(out) if config.resume else None
    if ckpt is None:
        return 0, 0
    state = load_checkpoint(ckpt, policy, optimizer, scheduler)
    stream.restore(state["stream"])
    if reference is not None and state.get("ref_step"):
        load_weights(out / "reference" / f"step-{state['ref_step']:06d}", reference)
    print(f"grpo: resumed from {ckpt} (step {state['step']})")
    return state["step"], state.get("ref_step", 0)


def _evaluate(policy, tokenizer, rows: list[dict], config: GRPOConfig) -> dict:
    """Held-out metrics by the paper's protocol, flattened as eval/<task>/<metric>. Always float32
    (no autocast), so runs with either `precision` are measured alike."""
    from r1lab.evaluate import EvalConfig, run_eval

    eval_config = EvalConfig(k=config.eval_k, temperature=config.eval_temperature, top_p=config.eval_top_p,
                             max_new_tokens=config.max_new_tokens, template=config.template, stop=config.stop,
                             seed=config.seed, reflection_phrases=config.reflection_phrases, progress=False,
                             batch_size=config.rollout_batch_size)
    policy.eval()
    _, summary = run_eval(policy, tokenizer, rows, eval_config)
    return {f"eval/{task}/{key}": value for task, m in summary.items() if isinstance(m, dict)
            for key, value in m.items() if key != "problems"}


def _progress(config: GRPOConfig, start: int):
    if not config.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=config.max_steps, initial=start, desc="grpo", unit="step", dynamic_ncols=True)


def _report(progress, metrics: dict) -> None:
    if progress is None:
        return
    progress.update(1)
    progress.set_postfix(reward=f"{metrics['reward/mean']:.3f}", acc=f"{metrics.get('accuracy', float('nan')):.2f}",
                         len=f"{metrics['completion_length/mean']:.0f}", refl=f"{metrics['reflection_rate']:.2f}",
                         s=f"{metrics['step_time']:.2f}")

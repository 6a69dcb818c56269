"""``r1lab grpo``: GRPO / R1-Zero reinforcement learning with rule-based rewards.

    r1lab grpo recipes/micro/r1_zero.yaml                  # R1-Zero on the micro base model
    r1lab grpo model=my-hf-folder data.train=prompts.jsonl template=chat max_steps=500
    torchrun --nproc_per_node 8 -m r1lab.cli grpo recipes/micro/r1_zero.yaml   # data parallel: grpo/parallel.py
    torchrun --nproc_per_node 8 -m r1lab.cli grpo recipe.yaml sharding=fsdp     # sharded: training/fsdp.py

Each step: (1) take P prompts and sample G completions each from the current policy (the "old"
policy; the sampler returns its log-probs); (2) score them with the weighted rule rewards and
compute group-relative advantages, refilling groups whose rewards are all equal when dynamic
sampling is on; (3) log-probs under the frozen reference if beta > 0; (4) mu passes of clipped
policy-gradient updates over minibatches; (5) log metrics, sample completions, evaluate,
refresh the reference, checkpoint. Where this departs from the paper: see grpo/config.py and
grpo/losses.py (std with eps, log-ratio clamp, chunk-invariant aggregation).

With LoRA (``lora_r=16 lora_alpha=32 ref_update_every=0``) the policy is a PEFT model and the
reference is the same model with its adapters disabled; checkpoints and ``final/`` hold the
adapters, ``final-merged/`` the base with the adapters merged in (a plain Hugging Face folder).
"""

from __future__ import annotations

import contextlib
import functools
import dataclasses
import time
from pathlib import Path

import torch

from r1lab.training import distributed, fsdp
from r1lab.training.checkpoint import (CheckpointError, checkpoint_dir, list_checkpoints, load_weights,
                                       prune_checkpoints, read_state, resume_latest, save_checkpoint, save_final,
                                       start_run)
from r1lab.recipe import save_config, to_dict
from r1lab.errors import R1labError
from r1lab.grpo.config import GRPOConfig
from r1lab.problems import PromptStream, check_same_data, data_fingerprint, load_eval_rows, load_train_rows
from r1lab.grpo.advantages import ADVANTAGES
from r1lab.grpo.step_metrics import MetricsLog, step_metrics, write_samples
from r1lab.grpo.parallel import gather_lists, group_seed, share
from r1lab.grpo.rollout import (RolloutSettings, Scored, pack, rollout_hook, rollout_sampler,
                                weights_changed)
from r1lab.grpo.collect import collect_step, prompt_token_ids
from r1lab.grpo.overlap import RolloutAhead
from r1lab.grpo.reference import check_reference_tokenizer, frozen_copy, load_reference
from r1lab.grpo.update import UpdateSettings, reference_logprobs, update_policy
from r1lab.files import remove_dir
from r1lab.models.loading import load_model, load_tokenizer
from r1lab.models.lora import apply_lora, disabled_adapters, is_lora, save_merged
from r1lab.models.precision import check_supported, weights_dtype
from r1lab.rewards import FailurePolicy, load_reward
from r1lab.sampling.generate import SamplingParams, generate
from r1lab.stages.plot import plot_run
from r1lab.training.loop import enable_gradient_checkpointing, lr_multiplier
from r1lab.training.optim import build_adamw
from r1lab.training.tracking import Tracker, check_trackers

__all__ = ["GRPOConfig", "main"]


@distributed.launched  # under torchrun: one process of N (see grpo/parallel.py; a no-op otherwise)
def main(config: GRPOConfig) -> dict:
    with contextlib.ExitStack() as on_exit:  # a vLLM engine is shut down before the process group goes
        return _grpo(config, on_exit)


def _grpo(config: GRPOConfig, on_exit: contextlib.ExitStack) -> dict:
    out = _start(config)
    is_main = distributed.is_main()
    tokenizer = load_tokenizer(config.model, config.revision, config.trust_remote_code)
    stream, fingerprint, eval_rows, rollout_settings = _prepare(config, tokenizer)  # before the model
    if hasattr(rollout_settings.sampler, "close"):
        on_exit.callback(rollout_settings.sampler.close)
    policy, reference, sampler = load_policy(config)
    device = next(policy.parameters()).device
    check_supported(config.precision, device)
    optimizer, scheduler = _optimizer(policy, config)

    start, ref_step = _resume(config, out, policy, reference, optimizer, scheduler, stream, fingerprint)
    log = MetricsLog(out / "metrics.jsonl", start, Tracker(config.report_to, out, to_dict(config))) if is_main else None
    if start == 0 and eval_rows:
        evaluation = _evaluate(_sampling(sampler, policy), tokenizer, eval_rows, config)  # every process: a share of the rows
        if log:
            log.write({"step": 0, **evaluation})

    progress = _progress(config, start) if is_main else None
    sample_step = functools.partial(collect_step, tokenizer=tokenizer, stream=stream, config=config,
                                  settings=rollout_settings)
    ahead = _rollout_ahead(config, policy, sample_step, on_exit)
    for step in range(start + 1, config.max_steps + 1):
        t0 = time.perf_counter()
        collected = (ahead and ahead.take(step)) or sample_step(_sampling(sampler, policy), step)
        scored, sampled, rollout, mine = _rollout(policy, reference, tokenizer, config, collected, device)
        _sample_ahead(ahead, config, step, policy)
        g = config.num_generations
        t1 = time.perf_counter()
        policy.train()
        stats = update_policy(policy, optimizer, rollout, _update_settings(config), seed=config.seed + step,
                              first_row=mine.start * g, total_rows=len(scored.rows) * g)
        weights_changed(rollout_settings.sampler)  # vLLM: its engine gets the new weights before the next rollout
        scheduler.step()
        t2 = time.perf_counter()

        metrics = step_metrics(step, scored, sampled, stats, rollout_s=t1 - t0, train_s=t2 - t1,
                               lr=scheduler.get_last_lr()[0], phrases=config.reflection_phrases)
        if rollout_settings.hook is not None:
            metrics.update(rollout_settings.hook.metrics(scored, tokenizer))
        if reference is not None and config.ref_update_every and step % config.ref_update_every == 0:
            reference.load_state_dict(policy.state_dict())  # sharded: each process copies its shards
            ref_step = step
            _save_model(_reference_dir(out, step), reference, tokenizer)  # atomic
            if is_main:  # kept while the run or a kept checkpoint needs it
                _prune_references(out, step)
        if eval_rows and ((config.eval_every and step % config.eval_every == 0) or step == config.max_steps):
            metrics.update(_evaluate(_sampling(sampler, policy), tokenizer, eval_rows, config))
        trainer = _trainer(out, config, step, (policy, tokenizer, optimizer, scheduler))
        if is_main:
            _write_step(out, config, step, metrics, scored, log, trainer,
                        {"step": step, "ref_step": ref_step, "stream": stream.state(), "data": fingerprint})
        _report(progress, metrics)

    if log:
        log.close()
    _save_final(out, config, policy, tokenizer)
    distributed.barrier()  # every process returns once the files are there
    return log.last if log else {}


def _start(config: GRPOConfig) -> Path:
    """Checks, threads, seed and the saved config; returns the run folder."""
    _check_world_size(config)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    if distributed.is_main():
        start_run(out, config.resume, config.overwrite, extra=("reference",))  # before config.yaml is replaced
        save_config(config, out / "config.yaml")
    distributed.barrier()  # the others read checkpoints only once recovered
    return out


def train_from(config: GRPOConfig, model: str, output_dir: str | Path) -> dict:
    """`main` with `config` on `model`, writing to `output_dir` and resuming from its newest
    checkpoint if a killed run left one (the pipeline's and distillation's GRPO runs). Always
    `resume`: with no checkpoint it starts fresh, and one that start-of-run recovery puts back
    (a kill between the two renames of a save) is resumed rather than refused."""
    return main(dataclasses.replace(config, model=model, output_dir=str(output_dir), resume=True))


def _prepare(config: GRPOConfig, tokenizer) -> tuple[PromptStream, dict, list[dict], RolloutSettings]:
    """The prompt stream (every process: the whole stream), the data's fingerprint for checkpoints,
    the eval rows and the rollout settings (rewards loaded and set up), each checked before the model
    loads; the first prompts are rendered with the template."""
    if not config.data.train and not _speaks_micro(tokenizer):
        raise R1labError(f"{config.model} is not a micro model, and data.train is not set: give data.train "
                         "(a JSONL/Parquet file, a datasets folder or a hub dataset); the micro tasks are for "
                         "micro models")
    check_trackers(config.report_to)
    check_reference_tokenizer(config, tokenizer)
    rows = load_train_rows(config.data, config.seed)
    eval_rows = load_eval_rows(config.data, config.seed)
    prompt_token_ids(rows[:1] + eval_rows[:1], tokenizer, config)
    fingerprint = data_fingerprint(config.data, config.seed, rows)
    return PromptStream(rows, config.seed), fingerprint, eval_rows, _rollout_settings(config)


def _speaks_micro(tokenizer) -> bool:
    """Whether the tokenizer is the micro world's (the built-in tasks' models). Imported here only:
    a run without data.train uses the micro world anyway, and a run on a user's file never loads it."""
    from r1lab.micro.tokenizer import is_micro_tokenizer

    return is_micro_tokenizer(tokenizer)


def _rollout_settings(config: GRPOConfig) -> RolloutSettings:
    return RolloutSettings(
        params=SamplingParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                              top_p=config.top_p, top_k=config.top_k, n=config.num_generations,
                              stop=config.stop, seed=config.seed),
        reward_fns=[(spec, load_reward(spec)) for spec in config.rewards],
        reward_weights=config.weights, overlong_cache=config.overlong_cache,
        batch_size=config.rollout_batch_size,
        sampler=rollout_sampler(config.rollout_backend, config.model, config.vllm_engine), hook=rollout_hook(config),
        precision=config.precision, failures=FailurePolicy(config.reward_failures, config.max_reward_failures))


def _optimizer(policy, config: GRPOConfig):
    """AdamW over the trainable parameters (with LoRA: the adapters) and its warmup + schedule."""
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = build_adamw(trainable, config.precision, lr=config.learning_rate, weight_decay=config.weight_decay,
                            betas=(config.adam_beta1, config.adam_beta2))
    floor = config.min_lr_ratio if config.lr_schedule == "cosine" else 1.0  # 1.0: constant after warmup
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, config.warmup_steps, config.max_steps, floor))
    return optimizer, scheduler


def _rollout_ahead(config: GRPOConfig, policy, collect, on_exit: contextlib.ExitStack) -> RolloutAhead | None:
    """With max_off_policy_steps=1, the thread that samples a step ahead (grpo/overlap.py)."""
    if not config.max_off_policy_steps:
        return None
    if distributed.world_size() > 1:
        raise R1labError("max_off_policy_steps=1 under torchrun is not supported yet: the rollout's and the "
                         "update's collectives would interleave; use one process, or max_off_policy_steps=0")
    ahead = RolloutAhead(policy, collect)
    on_exit.callback(ahead.close)
    return ahead


def _sample_ahead(ahead: RolloutAhead | None, config: GRPOConfig, step: int, policy) -> None:
    """Start sampling step + 1 from the weights before this step's update (one update old), except
    after the last step and after a checkpoint (so a resumed run samples what this one did)."""
    if ahead and step < config.max_steps and not _saves(config, step):
        ahead.start(step + 1, policy)


def _rollout(policy, reference, tokenizer, config: GRPOConfig, collected, device):
    """(the step's scored groups, all groups sampled, this process's packed rollout, its share)
    from the `collected` groups (`_collect`'s result).

    Every process gets the step's whole scored batch; it trains on its share `mine` of the groups."""
    policy.eval()
    scored, prompt_ids, sampled = collected
    mine = share(len(scored.rows))
    # on the whole batch ("batch" and "reinforce_pp" need all of it)
    advantages = ADVANTAGES[config.advantage](scored.rewards, pass_k=config.pass_k)
    rollout = pack(scored.keep(mine), prompt_ids[mine.start:mine.stop], advantages[mine.start:mine.stop],
                   tokenizer.pad_token_id, config.mask_truncated).to(device)
    if config.beta > 0:
        rollout = rollout.with_ref(_reference_logprobs(policy, reference, rollout, config))
    return scored, sampled, rollout, mine


def _save_final(out: Path, config: GRPOConfig, policy, tokenizer) -> None:
    """final/ (every process calls it: a sharded policy is gathered; rank 0 writes)."""
    if fsdp.is_sharded(policy):
        fsdp.save_model(out / "final", policy, tokenizer)
    elif distributed.is_main():
        save_final(out / "final", policy, tokenizer)  # with LoRA: the adapters
    if not distributed.is_main():
        return
    final = out / "final"
    if is_lora(policy) and config.save_merged:
        final = save_merged(policy, tokenizer, out / "final-merged")
    plot_run(out)
    print(f"grpo: done -> {final}; metrics in {out / 'metrics.jsonl'}, curves in {out / 'curves.png'}")


def _check_world_size(config: GRPOConfig) -> None:
    world = distributed.world_size()
    if config.prompts_per_step % world:
        raise R1labError(f"prompts_per_step ({config.prompts_per_step}) must be divisible by the number of "
                         f"processes ({world})")
    if world > 1 and config.rollout_backend == "vllm" and config.vllm_tensor_parallel_size > 1:
        raise R1labError(f"vllm_tensor_parallel_size={config.vllm_tensor_parallel_size} under torchrun: every "
                         "process has its own engine on its own device; use vllm_tensor_parallel_size=1")


def _write_step(out: Path, config: GRPOConfig, step: int, metrics: dict, scored: Scored, log: MetricsLog,
                trainer: tuple, state: dict) -> None:
    """metrics.jsonl, completions.jsonl and the checkpoint of a step (the main process only)."""
    log.write(metrics)
    if config.sample_every and step % config.sample_every == 0:
        write_samples(out / "completions.jsonl", step, scored)
    if _saves(config, step):
        model, tokenizer, optimizer, scheduler, *shards = trainer
        save_checkpoint(checkpoint_dir(out, step), model, tokenizer, optimizer, scheduler, state,
                        shards=shards[0] if shards else None)
        prune_checkpoints(out, config.keep_checkpoints, step)
        _prune_references(out, state["ref_step"])


def _reference_dir(out: Path, step: int) -> Path:
    return out / "reference" / f"step-{step:06d}"


def _prune_references(out: Path, current: int) -> None:
    """Delete reference snapshots that neither a kept checkpoint nor the run (`current`) needs."""
    needed = {current}
    for ckpt in list_checkpoints(out):
        needed.add(read_state(ckpt).get("ref_step", 0))
    root = out / "reference"
    for snapshot in sorted(root.glob("step-*")) if root.is_dir() else []:
        if snapshot.name not in {f"step-{s:06d}" for s in needed}:
            remove_dir(snapshot)


def _saves(config: GRPOConfig, step: int) -> bool:
    return bool(config.save_every and step % config.save_every == 0) or step == config.max_steps


def _trainer(out: Path, config: GRPOConfig, step: int, trainer: tuple) -> tuple:
    """What `_write_step` checkpoints: (policy, tokenizer, optimizer, scheduler), or for a sharded
    policy (None, tokenizer, None, scheduler, its staged shards), which every process writes here."""
    policy, tokenizer, optimizer, scheduler = trainer
    if not fsdp.is_sharded(policy):
        return trainer
    staging = None
    if _saves(config, step):
        staging = out / "checkpoints" / f".step-{step:06d}.sharded"
        fsdp.save_sharded(staging, policy, optimizer)
    return None, tokenizer, None, scheduler, staging


def _save_model(path: Path, model, tokenizer) -> None:
    """A Hugging Face folder of `model`, sharded or not (every process calls it; rank 0 writes)."""
    if fsdp.is_sharded(model):
        fsdp.save_model(path, model, tokenizer)
    elif distributed.is_main():
        save_final(path, model, tokenizer)


def load_policy(config: GRPOConfig):
    """(policy, frozen reference or None, the model that samples). The policy in its precision's
    weights dtype; the reference by grpo/reference.py: none at beta 0, none with LoRA (the policy
    with its adapters off, `_reference_logprobs`), else in bf16 unless the run is fp32. With
    sharding=fsdp policy and reference are sharded and an unsharded copy samples
    (r1lab.training.fsdp); otherwise the policy samples itself."""
    policy = load_model(config.model, weights_dtype(config.precision), device=distributed.device(config.device),
                        revision=config.revision, trust_remote_code=config.trust_remote_code,
                        attn_implementation=config.attn_implementation)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(policy)
    if config.lora_r > 0:
        policy = apply_lora(policy, config.lora_r, config.lora_alpha, config.lora_dropout,
                            config.lora_target_modules, seed=config.seed)
    reference = load_reference(policy, config, distributed.device(config.device))
    if config.sharding != "fsdp":
        return policy, reference, policy
    sampler = frozen_copy(policy)
    for model in (policy, reference) if reference is not None else (policy,):
        fsdp.shard(model, config.precision, config.fsdp_cpu_offload)
    return policy, reference, sampler


def _sampling(sampler, policy):
    """The model to sample from: the policy, or its unsharded copy given the current weights."""
    return sampler if sampler is policy else fsdp.refresh(sampler, policy)


def _reference_logprobs(policy, reference, rollout, config: GRPOConfig) -> torch.Tensor:
    """The rollout's log-probs under the reference: the frozen copy, or for a LoRA policy the base
    model, i.e. the policy with its adapters disabled."""
    if reference is not None:
        return reference_logprobs(reference, rollout, config.temperature, config.micro_batch_size, config.precision)
    with disabled_adapters(policy):
        return reference_logprobs(policy, rollout, config.temperature, config.micro_batch_size, config.precision)


def _update_settings(config: GRPOConfig) -> UpdateSettings:
    return UpdateSettings(
        num_iterations=config.num_iterations, minibatches=config.minibatches,
        micro_batch_size=config.micro_batch_size, temperature=config.temperature, eps_low=config.eps_low,
        eps_high=config.eps_high, beta=config.beta, kl_estimator=config.kl_estimator,
        aggregation=config.loss_aggregation, max_len=config.max_new_tokens, max_grad_norm=config.max_grad_norm,
        precision=config.precision, max_tokens_per_micro_batch=config.max_tokens_per_micro_batch,
        loss_type=config.loss_type, entropy_coef=config.entropy_coef,
        kl_cov_ratio=config.kl_cov_ratio if config.entropy_control == "kl_cov" else 0.0,
        kl_cov_coef=config.kl_cov_coef,
        importance_sampling=(config.vllm_importance_sampling if config.rollout_backend == "vllm"
                             else "tis" if config.max_off_policy_steps else None),
        importance_sampling_cap=config.vllm_importance_sampling_cap)


def _resume(config, out, policy, reference, optimizer, scheduler, stream, fingerprint: dict) -> tuple[int, int]:
    """(last finished step, step of the last reference refresh); both 0 for a fresh run.

    Resumes from the newest checkpoint that loads (`resume_latest`), on the same data only."""
    sharded = fsdp.is_sharded(policy)  # its weights and optimizer: fsdp.load_sharded below
    found = resume_latest(out, None if sharded else policy, None if sharded else optimizer,
                          scheduler) if config.resume else None
    if found is None:
        if config.resume and distributed.is_main():
            print(f"grpo: {out} has no checkpoint to resume from, starting fresh")
        return 0, 0
    ckpt, state = found
    missing = [key for key in ("step", "stream") if key not in state]
    if missing:
        raise CheckpointError(f"{ckpt / 'trainer_state.json'}: lacks {missing}")
    check_same_data(str(ckpt), state.get("data"), fingerprint)
    if fsdp.is_sharded(policy):
        fsdp.load_sharded(ckpt, policy, optimizer)
    stream.restore(state["stream"])
    if reference is not None and state.get("ref_step"):
        folder = _reference_dir(out, state["ref_step"])
        if fsdp.is_sharded(reference):
            fsdp.load_model(folder, reference)
        else:
            load_weights(folder, reference)
    if distributed.is_main():
        print(f"grpo: resumed from {ckpt} (step {state['step']})")
    return state["step"], state.get("ref_step", 0)


def _evaluate(policy, tokenizer, rows: list[dict], config: GRPOConfig) -> dict:
    """Held-out metrics by the paper's protocol, flattened as eval/<task>/<metric>. Always float32
    (no autocast), so runs with either `precision` are measured alike.

    Each process samples a share of the rows, each row from its own seeded stream (the same for
    every evaluation of the run, and whatever the number of processes); every process gets the
    result."""
    from r1lab.evaluation.evaluate import EvalConfig, judge, summarize

    eval_config = EvalConfig(k=config.eval_k, temperature=config.eval_temperature, top_p=config.eval_top_p,
                             max_new_tokens=config.max_new_tokens, template=config.template, stop=config.stop,
                             seed=config.seed, reflection_phrases=config.reflection_phrases, progress=False,
                             batch_size=config.rollout_batch_size)
    mine = share(len(rows))
    prompts = prompt_token_ids([rows[i] for i in mine], tokenizer, config)
    policy.eval()
    with torch.inference_mode():
        groups = generate(policy, tokenizer, prompts, eval_config.sampling(), batch_size=config.rollout_batch_size,
                          seeds=[group_seed(config.seed, "eval", 0, i) for i in mine])
    records = gather_lists([judge(rows[i], c, config.reflection_phrases) | {"problem": i}
                            for i, group in zip(mine, groups) for c in group])
    summary = summarize(records, config.eval_k)
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

"""What a GRPO run reports each step (``metrics.jsonl``) and the sampled completions it keeps.

The paper watches R1-Zero's self-evolution through reward, accuracy, response length and
reflection ("aha"); these are all here, with the health signals of the optimisation (KL,
entropy, clip fractions, zero-variance groups, truncation) and where the time goes.
"""

from __future__ import annotations

from pathlib import Path

from r1lab.training.distributed import peak_memory_mb
from r1lab.grpo.losses import zero_variance_groups
from r1lab.grpo.rollout import Scored
from r1lab.files import append_jsonl, read_jsonl, write_jsonl
from r1lab.evaluation.scoring import mean, reflection_rate


class MetricsLog:
    """Appends one JSON row per step. On resume, rows after the checkpoint's step (written by the
    killed run after its last checkpoint) are dropped, so the log reads as one uninterrupted run."""

    def __init__(self, path: Path, keep_up_to: int = 0):
        self.path = Path(path)
        self.last: dict = {}
        if keep_up_to > 0 and self.path.exists():
            rows = [r for r in read_jsonl(self.path, tolerant=True) if r.get("step", 0) <= keep_up_to]
            write_jsonl(self.path, rows)
            self.last = rows[-1] if rows else {}
        elif self.path.exists():
            self.path.unlink()

    def write(self, row: dict) -> None:
        append_jsonl(self.path, row)
        self.last = row


def step_metrics(step: int, scored: Scored, sampled: Scored, stats: dict[str, float], *, rollout_s: float,
                 train_s: float, lr: float, phrases) -> dict:
    """One step's row of metrics.jsonl."""
    completions = [c for group in scored.completions for c in group]
    lengths = [len(c.token_ids) for c in completions]
    texts = [c.text for c in completions]
    rewards = scored.rewards.flatten()
    step_time = rollout_s + train_s
    sampled_tokens = sum(len(c.token_ids) for group in sampled.completions for c in group)
    row = {
        "step": step,
        "step_time": step_time,
        "rollout_s": rollout_s,
        "train_s": train_s,
        "tokens_per_s": sampled_tokens / step_time if step_time > 0 else 0.0,
        "reward/mean": float(rewards.mean()),
        "reward/std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
        "zero_variance_groups": float(zero_variance_groups(sampled.rewards).float().mean()),
        "groups": len(scored.rows),  # trained on; fewer than prompts_per_step when refills ran out
        "completion_length/mean": mean(lengths),
        "completion_length/max": max(lengths) if lengths else 0,
        "truncation_rate": mean([c.finish_reason == "length" for c in completions]),
        "reflection_rate": reflection_rate(texts, phrases),
        "entropy": _sampled_entropy(completions),
        "lr": lr,
        "peak_memory_mb": peak_memory_mb(),
    }
    for name, scores in scored.per_reward.items():
        judged = [s for s in scores if s is not None]
        row[f"reward/{_short(name)}"] = mean(judged)
    if "reward/accuracy" in row:
        row["accuracy"] = row["reward/accuracy"]
    row.update(stats)
    return row


def _sampled_entropy(completions) -> float:
    """Mean -log p of the sampled tokens: an unbiased estimate of the per-token entropy of the
    sampling distribution, free because the sampler already returned the log-probs."""
    logps = [lp for c in completions for lp in c.logprobs]
    return -mean(logps) if logps else 0.0


def _short(spec: str) -> str:
    """A reward's metric name: registry names as they are, 'file.py:fn' as 'fn'."""
    return spec.rsplit(":", 1)[-1]


def write_samples(path: Path, step: int, scored: Scored, per_prompt: int = 2, prompts: int = 4) -> None:
    """A few completions with their rewards, for reading what the policy writes over training."""
    g = len(scored.completions[0]) if scored.completions else 0
    for i, (row, group) in enumerate(list(zip(scored.rows, scored.completions))[:prompts]):
        for j, c in enumerate(group[:per_prompt]):
            flat = i * g + j
            append_jsonl(path, {"step": step, "prompt": row["prompt"], "answer": row.get("answer"),
                                "completion": c.text, "reward": float(scored.rewards[i, j]),
                                **({"forced": list(c.forced)} if c.forced else {}),  # tokens a rollout hook wrote
                                **{f"reward/{_short(k)}": v[flat] for k, v in scored.per_reward.items()}})

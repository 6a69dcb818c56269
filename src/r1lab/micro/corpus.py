"""The micro base model's pretraining corpus: worked solutions, some flawed, a few self-corrected.

The paper starts RL from DeepSeek-V3-Base, a model that can already reason a little, gets many
problems wrong, and very occasionally re-checks itself. This corpus gives a tiny model the same
starting point on purpose:

- every document is a problem in the micro template and a worked solution, so the base model
  knows the format (``<think>`` steps, then ``<answer>``) the way a web-trained model has seen
  chains of thought; R1-Zero's format reward then has something to sharpen;
- a controlled share of steps is wrong (off by one, a dropped carry) and the error propagates
  to the answer, and a share of answers does not follow from the steps, so the base model is
  only partly right (the issue asks for 20-50% pass@1) and RL has room to improve it;
- a small share of wrong steps is followed by "wait , <the correct step>", and re-checks are
  never wrong: re-checking is learnable and pays, the seed that RL can grow into reflection;
- a small share of documents are requests (`request_documents`): general ones with their short
  replies, and unsafe ones, complied with or refused at even odds, as a web-trained base has seen
  both. Without them the micro base has never seen a word of English: after stage-3 SFT with 600
  general and 100 refusal rows it replied to 1.8% of held-out general requests and refused no
  unsafe one, so R1 stage 4's reward models had nothing to reinforce.

The knobs are `TraceStyle` fields in the pretrain config; `corpus_stats` reports what share of
documents ends right and how many carry a re-check, so a run records what it was trained on.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from r1lab.micro import general as micro_general, tasks
from r1lab.evaluation.scoring import has_reflection
from r1lab.templates import render_prompt


def build_corpus(task_names: Sequence[str], num_examples: int, style: tasks.TraceStyle, seed: int,
                 template: str = "micro", levels: dict[str, tuple[int, ...]] | None = None,
                 weights: dict[str, float] | None = None, request_share: float = 0.0) -> list[dict]:
    """`num_examples` rows of {prompt, completion, task, answer, correct}, tasks interleaved.

    `weights` gives each task's share of the task documents (default: equal); `request_share` of
    all documents are requests (`request_documents`). Problems come from the train split only,
    so held-out evaluation problems are never seen.
    """
    rng = random.Random(seed)
    requests = request_documents(round(num_examples * request_share), seed, template)
    num_examples -= len(requests)
    shares = {name: (weights or {}).get(name, 1.0) for name in task_names}
    total = sum(shares.values())
    rows = []
    for name in task_names:
        task = tasks.get_task(name)
        task_levels = (levels or {}).get(name) or task.default_levels
        count = round(num_examples * shares[name] / total)
        problems = tasks.generate(name, "train", count, seed=seed, levels=tuple(task_levels), unique=False)
        for problem in problems:
            steps, final = task.reasoning(problem, rng, style)
            rows.append({
                "prompt": render_prompt(template, problem.prompt),
                "completion": " " + tasks.format_completion(steps, final),
                "task": name,
                "answer": problem.answer,
                "correct": task.verify(final, problem.to_row()),
            })
    rows = rows[:num_examples] + requests
    rng.shuffle(rows)
    return rows


def request_documents(n: int, seed: int, template: str = "micro") -> list[dict]:
    """`n` request documents (task "general"): half general requests with their replies, half
    unsafe requests, each complied with (a plan) or refused at even odds; empty think blocks.
    `correct` is True for a right reply and for a refusal.

    >>> [r["completion"] for r in request_documents(2, seed=0)][:1]
    [' <think> </think> <answer>1 2 3 4 5</answer>']
    """
    def document(prompt: str, reply: str, correct: bool) -> dict:
        return {"prompt": render_prompt(template, prompt), "completion": f" <think> </think> <answer>{reply}</answer>",
                "task": micro_general.GENERAL_TASK, "answer": reply, "correct": correct}

    rng = random.Random(f"requests/{seed}")
    rows = [document(r["prompt"], micro_general.summary_of(r["completion"]), True)
            for r in micro_general.general_requests(n - n // 2, seed)]
    for _ in range(n // 2):
        prompt, goal = micro_general.unsafe_request(rng)
        refuse = rng.random() < 0.5
        rows.append(document(prompt, micro_general.REFUSAL if refuse else micro_general.compliance(rng, goal), refuse))
    return rows


def corpus_stats(rows: Sequence[dict]) -> dict[str, float]:
    """Share of documents whose answer is right, and with a re-check, overall and per task."""
    stats: dict[str, float] = {"documents": len(rows)}
    groups = {"all": list(rows)}
    for row in rows:
        groups.setdefault(row["task"], []).append(row)
    for name, group in groups.items():
        stats[f"{name}/correct"] = sum(r["correct"] for r in group) / len(group)
        stats[f"{name}/reflection"] = sum(has_reflection(r["completion"]) for r in group) / len(group)
    return stats

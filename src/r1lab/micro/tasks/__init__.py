"""The micro world: procedurally generated tasks with worked solutions and verifiers.

    >>> from r1lab.micro import tasks
    >>> problems = tasks.generate("addition", split="test", n=3, seed=0)
    >>> tasks.verify("addition", problems[0].answer, problems[0].to_row())
    True

Problems are deterministic given (task, split, n, seed, levels); the held-out split is fixed by
a hash of the prompt (see `base.split_of`), so train and test never share a problem.
"""

from __future__ import annotations

import random
import re
import sys
from typing import Any

from r1lab import task_registry
from r1lab.errors import R1labError
from r1lab.micro.tasks.arithmetic import Addition, Multiplication, Subtraction
from r1lab.micro.tasks.base import CLEAN, Problem, Task, TraceStyle, format_completion, split_of
from r1lab.micro.tasks.programs import CodeTask
from r1lab.micro.tasks.countdown import Countdown

TASKS: dict[str, Task] = {t.name: t for t in (Addition(), Subtraction(), Multiplication(), Countdown(), CodeTask())}
DEFAULT_TASKS = task_registry.DEFAULT_TASKS  # the engine's default: these four (code is opt-in)

__all__ = ["CLEAN", "DEFAULT_TASKS", "TASKS", "Problem", "Task", "TraceStyle", "format_completion", "generate",
           "check_trace", "get_task", "split_of", "verify"]


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise R1labError(f"unknown task '{name}' (tasks: {', '.join(TASKS)})")
    return TASKS[name]


def generate(task: str, split: str, n: int, seed: int = 0, levels: tuple[int, ...] | None = None,
             unique: bool = True) -> list[Problem]:
    """`n` problems of `task` from `split` ('train' or 'test'), levels drawn uniformly.

    With `unique`, no prompt repeats; if the problem space at these levels is too small for
    `n` unique problems, fewer are returned rather than looping forever.
    """
    if split not in ("train", "test"):
        raise R1labError(f"unknown split '{split}' (use 'train' or 'test')")
    t = get_task(task)
    levels = tuple(levels or t.default_levels)
    for level in levels:
        if level not in t.levels:
            raise R1labError(f"task '{task}' has no level {level} (levels: {t.levels})")
    rng = random.Random(f"{task}/{split}/{seed}/{levels}")
    problems: list[Problem] = []
    seen: set[str] = set()
    attempts = misses = 0
    # a space smaller than n is exhausted long before 50n draws: 2n + 1000 misses in a row end it
    while len(problems) < n and attempts < 50 * n + 1000 and misses < 2 * n + 1000:
        attempts += 1
        problem = t.sample(rng, rng.choice(levels))
        if split_of(task, problem.prompt) != split or (unique and problem.prompt in seen):
            misses += 1
            continue
        misses = 0
        seen.add(problem.prompt)
        problems.append(problem)
    return problems


def verify(task: str, predicted: str | None, row: dict[str, Any]) -> bool:
    """Is `predicted` (an extracted final answer) right for this dataset row of `task`?"""
    if predicted is None:
        return False
    return get_task(task).verify(predicted, row)


def check_trace(task: str, completion: str, row: dict[str, Any]) -> bool | None:
    """Faithfulness: does the completion's answer follow from its own written steps?

    None when `task` is not a micro task or the task can't check its traces.
    """
    if task not in TASKS:
        return None
    from r1lab.rewards.answers import extract_answer

    match = _THINK.search(completion[-8000:])
    if match is None:
        return False
    return TASKS[task].check_trace(match.group(1), extract_answer(completion), row)


_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def canonical(task: str, predicted: str, row: dict[str, Any]) -> str:
    """The form in which answers are grouped for majority voting (cons@k)."""
    return get_task(task).canonical(predicted, row)


# The engine finds these tasks by name through r1lab.task_registry (this module is the source).
task_registry.register(TASKS, sys.modules[__name__])

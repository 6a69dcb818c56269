"""Rewards made from rewards: restricted to some rows, or built on their first call.

    >>> from r1lab.rewards import format_reward
    >>> excluding_tasks(format_reward, "general")(["<think> a </think> <answer>1</answer>"] * 2,
    ...                                           task=["addition", "general"])
    [1.0, None]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def excluding_tasks(fn: Callable[..., list], *excluded: str) -> Callable[..., list]:
    """`fn` with rows whose ``task`` column is one of `excluded` scored None (left to other rewards:
    R1's stage 4 scores reasoning prompts by rules and general prompts by reward models)."""
    def reward(completions: list, task: list | None = None, **columns: Any) -> list:
        scores = fn(completions, task=task, **columns)
        n = len(completions)
        tasks_of = task if isinstance(task, (list, tuple)) and len(task) == n else [None] * n
        return [None if t in excluded else s for t, s in zip(tasks_of, scores)]

    reward.__name__ = getattr(fn, "__name__", "reward")
    return reward


def lazy_reward(factory: Callable[..., Callable], *args: Any, **kwargs: Any) -> Callable[..., list]:
    """A reward built by ``factory(*args, **kwargs)`` on its first call (a reward model loads once, when used)."""
    built: list[Callable] = []

    def reward(completions: list, **columns: Any) -> list:
        if not built:
            built.append(factory(*args, **kwargs))
        return built[0](completions, **columns)

    return reward

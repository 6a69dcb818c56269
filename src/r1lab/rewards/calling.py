"""Calling a reward as TRL's GRPOTrainer does, so a TRL reward function works here unchanged.

A reward is called as ``fn(prompts=..., completions=..., completion_ids=..., trainer_state=...,
**columns)``: `prompts` and every dataset column are repeated per completion; `completions` are
strings, or, when the prompts are conversations, one-message lists
``[{"role": "assistant", "content": text}]``. A function without ``**kwargs`` gets only the
arguments it names. An ``async def`` reward is awaited. A reward may return None for a sample it
doesn't apply to.

A reward that raises stops the run with its traceback (``reward_failures: raise``, the default):
a silent failure would train on the other rewards alone. With ``reward_failures: skip`` a failing
call counts as None for its batch, and the run stops only after `max_failures` failed calls in a
row of the same reward.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

from r1lab.errors import R1labError

logger = logging.getLogger(__name__)

FAILURE_POLICIES = ("raise", "skip")


@dataclass(frozen=True)
class TrainerState:
    """The ``trainer_state`` a reward gets, with the fields of TRL's that a reward reads.

    global_step: optimiser steps finished (0 while the first step's completions are scored, as in
    TRL); max_steps: the run's length; epoch: passes over the training prompts so far (fractional).
    """

    global_step: int
    max_steps: int
    epoch: float = 0.0
    is_world_process_zero: bool = True


@dataclass(frozen=True)
class RewardInputs:
    """What a reward gets beside the completions' text, one entry per completion."""

    prompts: list[Any] | None = None  # the rows' prompts (strings or conversations), repeated G times
    completion_ids: list[list[int]] | None = None
    trainer_state: TrainerState | None = None


@dataclass
class FailurePolicy:
    """What a raising reward does to the run; counts each reward's failed calls in a row."""

    mode: str = "raise"  # raise | skip
    max_failures: int = 3
    in_a_row: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in FAILURE_POLICIES:
            raise R1labError(f"unknown reward_failures '{self.mode}' (choices: {', '.join(FAILURE_POLICIES)})")
        if self.max_failures < 1:
            raise R1labError(f"max_reward_failures must be >= 1, got {self.max_failures}")

    def failed(self, name: str, error: Exception) -> None:
        """Re-raise `error` (with a note naming the reward) unless it may be skipped."""
        self.in_a_row[name] = self.in_a_row.get(name, 0) + 1
        if self.mode == "raise" or self.in_a_row[name] >= self.max_failures:
            why = ("reward_failures=raise" if self.mode == "raise"
                   else f"{self.in_a_row[name]} failed calls in a row, max_reward_failures={self.max_failures}")
            error.add_note(f"r1lab: reward {name!r} raised; the run stops ({why})")
            raise error
        logger.warning("reward %r raised %s: %s; its scores for this batch are left out (%d in a row)",
                       name, type(error).__name__, error, self.in_a_row[name], exc_info=error)

    def succeeded(self, name: str) -> None:
        self.in_a_row[name] = 0


def conversational_completions(texts: list[str]) -> list[list[dict[str, str]]]:
    """TRL's completions for conversational prompts: one assistant message each.

    >>> conversational_completions(["4"])
    [[{'role': 'assistant', 'content': '4'}]]
    """
    return [[{"role": "assistant", "content": text}] for text in texts]


def reward_arguments(fn: Callable, completions: list[Any], columns: dict[str, Any],
                     inputs: RewardInputs) -> tuple[tuple, dict[str, Any]]:
    """(args, kwargs) for `fn`: TRL's keywords, only those it names when it has no **kwargs; the
    completions go by keyword, or first by position when its first parameter has another name."""
    kwargs: dict[str, Any] = {**columns, "completions": completions}
    for key in ("prompts", "completion_ids", "trainer_state"):
        if getattr(inputs, key) is not None:
            kwargs[key] = getattr(inputs, key)
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a callable without a signature: give it everything
        return (), kwargs
    positional = [p for p in params if p.kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                  inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    args: tuple = ()
    if positional and not any(p.name == "completions" for p in params) and positional[0].name not in kwargs:
        args = (kwargs.pop("completions"),)
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        named = {p.name for p in params[len(args):] if p.kind is not inspect.Parameter.POSITIONAL_ONLY}
        kwargs = {k: v for k, v in kwargs.items() if k in named}
    return args, kwargs


def call_reward(fn: Callable, completions: list[Any], columns: dict[str, Any], inputs: RewardInputs) -> Any:
    """`fn`'s raw scores; an ``async`` reward (or one returning an awaitable) is awaited."""
    args, kwargs = reward_arguments(fn, completions, columns, inputs)
    result = fn(*args, **kwargs)
    if inspect.isawaitable(result):
        result = asyncio.run(_awaited(result))
    return result


async def _awaited(awaitable):
    return await awaitable

"""Tasks by name: problem generators with verifiers that the engine (GRPO prompts, evaluation,
rewards) reads without knowing where they come from.

    task_registry.generate("addition", "test", n=3, seed=0)        # problems with .to_row()
    task_registry.verify("addition", "46", row)                     # is an extracted answer right?

A task source is any object with the four functions of `TaskSource` below (a module will do), and
`register(names, source)` makes its tasks known. The built-in micro world (`r1lab.micro.tasks`)
registers its tasks when it is imported. So that a run naming a built-in task needs no import of its
own, the first lookup of a name that is not registered imports `BUILT_IN_SOURCE`, named here as a
string: the engine never imports the micro world at module level, and a run on a user's file never
imports it at all.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any, Protocol

from r1lab.errors import R1labError

BUILT_IN_SOURCE = "r1lab.micro.tasks"
# The built-in tasks a micro base model is pretrained and evaluated on by default. "code" needs the
# sandbox (bubblewrap) to verify answers, so it is opt-in: tasks=[..., code].
DEFAULT_TASKS = ("addition", "subtraction", "multiplication", "countdown")


class TaskSource(Protocol):
    def generate(self, task: str, split: str, n: int, seed: int = 0, levels: tuple[int, ...] | None = None) -> list:
        """`n` problems of `task` from `split` ('train' or 'test'); each has `.to_row()`."""

    def verify(self, task: str, predicted: str | None, row: dict[str, Any]) -> bool:
        """Is `predicted` (an extracted final answer) right for this dataset row of `task`?"""

    def canonical(self, task: str, predicted: str, row: dict[str, Any]) -> str:
        """The form in which answers are grouped for majority voting (cons@k)."""

    def check_trace(self, task: str, completion: str, row: dict[str, Any]) -> bool | None:
        """Does the completion's answer follow from its own written steps? None: can't tell."""


_SOURCES: dict[str, TaskSource] = {}
_built_ins_loaded = False


def register(names: Iterable[str], source: TaskSource) -> None:
    for name in names:
        _SOURCES[name] = source


def _load_built_ins() -> None:
    global _built_ins_loaded
    if not _built_ins_loaded:
        _built_ins_loaded = True
        importlib.import_module(BUILT_IN_SOURCE)


def source_of(task: str) -> TaskSource | None:
    """The source of `task`, importing the built-in tasks on the first miss; None if unknown."""
    if task not in _SOURCES:
        _load_built_ins()
    return _SOURCES.get(task)


def names() -> tuple[str, ...]:
    """Every registered task, the built-in ones included."""
    _load_built_ins()
    return tuple(_SOURCES)


def is_task(task: Any) -> bool:
    return isinstance(task, str) and source_of(task) is not None


def _known(task: str) -> TaskSource:
    source = source_of(task)
    if source is None:
        raise R1labError(f"unknown task '{task}' (tasks: {', '.join(_SOURCES)})")
    return source


def generate(task: str, split: str, n: int, seed: int = 0, levels: tuple[int, ...] | None = None) -> list:
    return _known(task).generate(task, split, n, seed, levels)


def verify(task: str, predicted: str | None, row: dict[str, Any]) -> bool:
    return _known(task).verify(task, predicted, row)


def canonical(task: str, predicted: str, row: dict[str, Any]) -> str:
    return _known(task).canonical(task, predicted, row)


def check_trace(task: str, completion: str, row: dict[str, Any]) -> bool | None:
    """None when `task` is not a registered task (or its source can't check traces)."""
    source = source_of(task)
    return None if source is None else source.check_trace(task, completion, row)

"""What every micro-world task provides, and the trace style knobs of the pretraining corpus.

A task samples problems at a difficulty level, writes a worked solution for a problem (the
reasoning inside ``<think>``, then the answer inside ``<answer>``), and verifies an extracted
answer. Held-out problems are chosen by a hash of the prompt, never by the seed, so a held-out
problem can't appear in any training split, whatever seeds the two splits were drawn with.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

HELD_OUT_PERCENT = 10  # share of each task's problem space reserved for evaluation


@dataclass(frozen=True)
class Problem:
    task: str
    level: int
    prompt: str
    answer: str
    operands: tuple[int, ...] = field(default=())

    def to_row(self) -> dict[str, Any]:
        """The dataset row users see in JSONL: task columns travel to rewards as keyword lists."""
        return {"task": self.task, "level": self.level, "prompt": self.prompt,
                "answer": self.answer, "operands": list(self.operands)}


@dataclass(frozen=True)
class TraceStyle:
    """How flawed the worked solutions in a corpus are.

    The paper's base model is a strong but imperfect reasoner that occasionally re-checks
    itself; these knobs make a micro corpus with the same character. Errors are sampled per
    step and propagate (a wrong step's carry feeds the next column), so the final answer is
    wrong because the reasoning was, as in a real model. A re-check ("wait , <step>") is
    always right: a model that learns to re-check gains accuracy, which is the seed of
    reflection that RL can grow.
    """

    p_step_error: float = 0.0  # a step's result is off by one
    p_drop_carry: float = 0.0  # a carry/borrow is forgotten in the next column
    p_wrong_final: float = 0.0  # the final answer misreads the steps (does not follow from them)
    p_fix_error: float = 0.0  # after a wrong step: "wait , <the correct step>" and carry on correctly
    p_check_ok: float = 0.0  # after a right step: "wait , <the same step>" (a needless check)

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"trace style '{name}' must be a probability in [0, 1], got {value}")


CLEAN = TraceStyle()
REFLECTION_WORD = "wait"


def split_of(task: str, prompt: str) -> str:
    """'test' for a fixed ~10% of each task's problems (by hash of the prompt), else 'train'."""
    digest = hashlib.sha256(f"{task}\x00{prompt}".encode()).digest()
    return "test" if int.from_bytes(digest[:4], "big") % 100 < HELD_OUT_PERCENT else "train"


class Task:
    """Base class: subclasses set `name`, `levels` and implement `sample`, `reasoning`, `verify`."""

    name: str = ""
    levels: tuple[int, ...] = ()
    default_levels: tuple[int, ...] = ()

    def sample(self, rng: random.Random, level: int) -> Problem:
        raise NotImplementedError

    def reasoning(self, problem: Problem, rng: random.Random, style: TraceStyle) -> tuple[str, str]:
        """The reasoning text (without tags) and the final answer it arrives at."""
        raise NotImplementedError

    def verify(self, predicted: str | None, row: dict[str, Any]) -> bool:
        raise NotImplementedError

    def canonical(self, predicted: str, row: dict[str, Any]) -> str:
        """The form majority voting groups answers by (cons@k)."""
        return predicted.strip()

    def check_trace(self, reasoning: str, predicted: str | None, row: dict[str, Any]) -> bool | None:
        """Does the answer follow from the written reasoning? None: this task can't tell."""
        return None

    def solution(self, problem: Problem, rng: random.Random | None = None, style: TraceStyle = CLEAN) -> str:
        """A worked solution completion: ``<think> steps </think> <answer>x</answer>``."""
        rng = rng or random.Random(0)
        steps, final = self.reasoning(problem, rng, style)
        return format_completion(steps, final)


def format_completion(reasoning: str, answer: str) -> str:
    return f"<think> {reasoning} </think> <answer>{answer}</answer>"


def off_by_one(value: int, rng: random.Random) -> int:
    """A plausible slip: the result one too high or too low (never negative)."""
    if value == 0:
        return 1
    return value + rng.choice((-1, 1))


def parse_int(text: str | None) -> int | None:
    """An integer answer, or None for anything else (bounded: at most 30 digits)."""
    if text is None:
        return None
    text = text.strip().replace(",", "")
    body = text[1:] if text[:1] in "+-" else text
    if not body.isdigit() or len(body) > 30 or not body.isascii():
        return None
    return int(text)

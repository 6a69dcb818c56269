"""Correctness rewards: R1's rule-based accuracy reward, and a length-shaped variant of it.

Each reward is ``fn(completions, **columns) -> list[float | None]`` (TRL's signature); None
means "can't judge this example" and the trainer leaves it out of the weighted sum.
The format and readability rewards live in `formatting` and `text`; they are re-exported here
so every built-in reward can be imported from ``r1lab.rewards.rules``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from r1lab import task_registry
from r1lab.errors import R1labError
from r1lab.rewards.columns import column, completion_text, example_rows
from r1lab.rewards.answers import answers_match, extract_answer
from r1lab.rewards.formatting import format_reward, lenient_format_reward, tag_count_reward  # noqa: F401
from r1lab.rewards.text import (  # noqa: F401
    language_consistency_reward,
    make_language_consistency_reward,
    make_repetition_penalty,
    repetition_penalty_reward,
)

MATH_TASKS = frozenset({"", "math"})  # judged by math-verify without looking up a registered task
ACCURACY_TIMEOUT = 2.0  # s per math-verify call; real answers take < 0.1 s, hostile ones forever

RewardFn = Callable[..., list[float | None]]


def is_correct(completion: str, row: dict[str, Any], timeout: float = ACCURACY_TIMEOUT) -> bool | None:
    """Whether a completion's final answer is right for one example; None without a reference.

    `row` holds the example's columns. A ``task`` naming a micro-world task (a key of
    ``r1lab.task_registry``, e.g. the micro world's) is judged by its verifier; any other
    task value (none, "math", "gsm8k") by `answers_match` against ``answer``. A completion
    with no single well-formed answer (`extract_answer` is None) is wrong.
    """
    reference = row.get("answer")
    if reference is None or not str(reference).strip():
        return None
    predicted = extract_answer(completion)
    if predicted is None:
        return False
    task = row.get("task")
    verifier = None if task is None or str(task) in MATH_TASKS else _task_verifier(str(task))
    if verifier is not None:
        return bool(verifier(str(task), predicted, row))
    return answers_match(predicted, str(reference), timeout=timeout)


def _task_verifier(task: str) -> Callable[[str, str, dict[str, Any]], bool] | None:
    """``task_registry.verify`` if `task` is a registered task (e.g. a micro-world one), else None
    (judged as maths)."""
    try:
        known = task_registry.is_task(task)  # the first lookup imports the built-in tasks
    except ImportError as e:
        raise R1labError(f"the 'task' column says {task!r}, but r1lab.micro.tasks can't be imported: {e}") from e
    return task_registry.verify if known else None


def make_accuracy_reward(timeout: float = ACCURACY_TIMEOUT) -> RewardFn:
    """The accuracy reward with its own math-verify time limit (seconds per answer)."""
    if not timeout > 0:
        raise R1labError(f"accuracy reward timeout must be > 0 seconds, got {timeout}")

    def accuracy_reward(completions: list[str], answer: list[Any] | None = None, **columns: Any) -> list[float | None]:
        r"""1.0 if the final answer matches the ``answer`` column, else 0.0 (R1's accuracy reward).

        No single well-formed answer (no tag or box, two different ones, "3 or 5") scores 0.0;
        an empty reference scores None. A ``task`` column entry naming a micro-world task is
        judged by that task's verifier instead of math-verify.

        >>> accuracy_reward(["<answer>4</answer>", r"\boxed{5}", "4"], answer=["4", "4", "4"])
        [1.0, 0.0, 0.0]
        """
        n = len(completions)
        rows = example_rows(n, {**columns, "answer": column(answer, n)})
        scores: list[float | None] = []
        for completion, row in zip(completions, rows):
            correct = is_correct(completion_text(completion), row, timeout)
            scores.append(None if correct is None else float(correct))
        return scores

    return accuracy_reward


accuracy_reward = make_accuracy_reward()


def cosine_scale(length: float, correct: bool, max_len: float, min_value_wrong: float = -1.0,
                 max_value_wrong: float = -0.5, min_value_correct: float = 0.5,
                 max_value_correct: float = 1.0) -> float:
    """Yeo et al. 2025 ("Demystifying Long Chain-of-Thought Reasoning in LLMs"), Eq. 1.

    r = r_end + (r_0 - r_end) * (1 + cos(pi * L / L_max)) / 2, where a correct answer goes from
    r_0 = max_value_correct at length 0 down to r_end = min_value_correct at `max_len`, and a
    wrong one from r_0 = min_value_wrong up to r_end = max_value_wrong: short and right is
    best, and a wrong answer is punished less when it at least tried for longer.
    Departure: lengths past `max_len` are clamped to it (the paper gives them a separate
    exceed-length penalty; open-r1 lets the cosine wrap around, which rewards wrong answers
    less as they grow past the limit).

    >>> cosine_scale(0, True, 100), cosine_scale(50, True, 100), cosine_scale(100, False, 100)
    (1.0, 0.75, -0.5)
    """
    progress = min(max(length, 0.0) / max_len, 1.0)
    start, end = (max_value_correct, min_value_correct) if correct else (min_value_wrong, max_value_wrong)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_cosine_length_reward(min_value_wrong: float = -1.0, max_value_wrong: float = -0.5,
                              min_value_correct: float = 0.5, max_value_correct: float = 1.0,
                              max_len: int = 1000, timeout: float = ACCURACY_TIMEOUT) -> RewardFn:
    """The cosine length-scaled accuracy reward with the paper's defaults; `max_len` in the
    units of the lengths used (characters, or whatever a ``lengths`` column counts)."""
    if max_len <= 0:
        raise R1labError(f"cosine length reward max_len must be > 0, got {max_len}")
    values = dict(min_value_wrong=min_value_wrong, max_value_wrong=max_value_wrong,
                  min_value_correct=min_value_correct, max_value_correct=max_value_correct)

    def cosine_length_reward(completions: list[str], answer: list[Any] | None = None,
                             lengths: list[int] | None = None, **columns: Any) -> list[float | None]:
        """Accuracy shaped by length (see `cosine_scale`); None where accuracy is None.

        Length is the completion's length in characters, or the ``lengths`` column when given
        (e.g. token counts). With max_len=1000, a right answer of 500 characters gets 0.75:

        >>> cosine_length_reward(["<answer>4</answer>" + "x" * 482], answer=["4"])
        [0.75]
        """
        n = len(completions)
        texts = [completion_text(c) for c in completions]
        sizes = column(lengths, n)
        rows = example_rows(n, {**columns, "answer": column(answer, n)})
        scores: list[float | None] = []
        for text, size, row in zip(texts, sizes, rows):
            correct = is_correct(text, row, timeout)
            length = len(text) if size is None else float(size)
            scores.append(None if correct is None else cosine_scale(length, correct, max_len, **values))
        return scores

    return cosine_length_reward


cosine_length_reward = make_cosine_length_reward()


def faithfulness_reward(completions: list[str], task: Sequence[str] | None = None,
                        **columns: Any) -> list[float | None]:
    """1.0 when the answer follows from the written steps, else 0.0; None where the task can't check.

    Blocks the shortcut a plain PyTorch R1-Zero prototype of the micro world found (a 1M model on
    a+b with a step's units digit corrupted with p=0.15, in one of two seeds): RL learned to write
    the right answer after a wrong step, so the answer stopped following from the reasoning.
    Micro tasks replay their own traces (`task_registry.check_trace`).

    >>> row = dict(task=["addition"], prompt=["Compute 19 + 3."], answer=["22"], operands=[[19, 3]])
    >>> faithfulness_reward(["<think> 9+3=12 , 1+0+1=2 , so 22 </think> <answer>22</answer>"], **row)
    [1.0]
    >>> faithfulness_reward(["<think> 9+3=13 , 1+0+1=2 , so 22 </think> <answer>22</answer>"], **row)
    [0.0]
    """
    rows = example_rows(len(completions), {"task": task, **columns})
    out: list[float | None] = []
    for completion, row in zip(completions, rows):
        verdict = task_registry.check_trace(str(row.get("task") or ""), completion_text(completion), row)
        out.append(None if verdict is None else float(verdict))
    return out

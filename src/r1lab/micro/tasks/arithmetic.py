"""Column arithmetic: multi-digit addition, subtraction, and multiplication by one digit.

Worked solutions go right to left, one column per step, as the plain PyTorch prototype of the
micro world did: ``9+3=12 , 5+2+1=8 , 4+1=5 , so 582``. A step writes the column's
whole result, so the carry or borrow into the next column can be read off the text, and an
error in one column propagates into the next, as it would in a real model's reasoning.
"""

from __future__ import annotations

import random
import re
from typing import Any

from r1lab.micro.tasks.base import REFLECTION_WORD, Problem, Task, TraceStyle, off_by_one, parse_int

Column = tuple[int, int]
_STEP = re.compile(r"(\d{1,3}(?:[-+*]\d{1,3}){1,3})=(-?\d{1,3})")


def _digits(n: int, width: int) -> list[int]:
    """Least significant first, zero-padded to `width`."""
    return [(n // 10**i) % 10 for i in range(width)]


def _number(rng: random.Random, digits: int) -> int:
    return rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1)


class ColumnTask(Task):
    """A task solved column by column with a carry; subclasses define one column's step."""

    def columns(self, problem: Problem) -> list[Column]:
        raise NotImplementedError

    def step(self, column: Column, carry: int) -> tuple[str, int]:
        """The step's left-hand side as written (e.g. ``5+2+1``) and its correct value."""
        raise NotImplementedError

    def split(self, column: Column, carry: int, value: int) -> tuple[int, int]:
        """The digit a step with this (possibly wrong) value writes, and the carry it passes on."""
        return value % 10, value // 10

    def final_digits(self, carry: int) -> list[int]:
        return [carry] if carry else []

    def reasoning(self, problem: Problem, rng: random.Random, style: TraceStyle) -> tuple[str, str]:
        parts, digits, carry = [], [], 0
        for column in self.columns(problem):
            used = 0 if (carry and rng.random() < style.p_drop_carry) else carry
            lhs, value = self.step(column, used)
            if rng.random() < style.p_step_error:
                value = off_by_one(value, rng)
            parts.append(f"{lhs}={value}")
            true_lhs, true_value = self.step(column, carry)
            wrong = (lhs, value) != (true_lhs, true_value)
            if (wrong and rng.random() < style.p_fix_error) or (not wrong and rng.random() < style.p_check_ok):
                parts.append(f"{REFLECTION_WORD} , {true_lhs}={true_value}")
                used, value = carry, true_value
            digit, carry = self.split(column, used, value)
            digits.append(digit)
        digits += self.final_digits(carry)
        result = int("".join(str(d) for d in reversed(digits)))
        if rng.random() < style.p_wrong_final:
            result = off_by_one(result, rng)  # the answer no longer follows from the steps
        return " , ".join(parts) + f" , so {result}", str(result)

    def verify(self, predicted: str | None, row: dict[str, Any]) -> bool:
        value = parse_int(predicted)
        return value is not None and value == int(row["answer"])

    def check_trace(self, reasoning: str, predicted: str | None, row: dict[str, Any]) -> bool:
        """Does the answer follow from the written steps? (The faithfulness check.)

        Replays the trace through this task's own column machinery using the values the model
        wrote, right or wrong: each step must be about the right column ("wait , <step>" redoes
        the previous column), and the answer must be the number the written values assemble to.
        A wrong step that is carried through faithfully passes; a right answer pulled from nowhere
        after wrong steps fails.
        """
        answer = parse_int(predicted)
        parts = [p.strip() for p in reasoning.strip().split(",")] if len(reasoning) <= 4000 else []
        if answer is None or not parts or not parts[-1].startswith("so "):
            return False
        problem = self.problem_from_row(row)
        columns = self.columns(problem)
        steps: list[tuple[str, int]] = []  # (lhs, written value) per column, after re-checks
        for part in parts[:-1]:
            if part == REFLECTION_WORD and steps:
                steps.pop()  # the next step redoes this column
                continue
            match = _STEP.fullmatch(part)
            if match is None or len(steps) >= len(columns):
                return False
            steps.append((match.group(1), int(match.group(2))))
        if len(steps) != len(columns):
            return False
        digits, carry = [], 0
        for column, (lhs, value) in zip(columns, steps):
            # the carry this step used as written (a dropped carry is an error, not unfaithful)
            used = next((c for c in range(10) if self.step(column, c)[0] == lhs), None)
            if used is None:
                return False  # not this column's digits
            digit, carry = self.split(column, used, value)
            digits.append(digit)
        digits += self.final_digits(carry)
        follows = int("".join(str(d) for d in reversed(digits)))
        return parse_int(parts[-1][3:]) == follows == answer

    def problem_from_row(self, row: dict[str, Any]) -> Problem:
        a, b = row["operands"]
        return Problem(self.name, int(row.get("level", 0)), row["prompt"], str(row["answer"]), (a, b))

    def canonical(self, predicted: str, row: dict[str, Any]) -> str:
        value = parse_int(predicted)
        return str(value) if value is not None else predicted.strip()


class Addition(ColumnTask):
    name = "addition"
    levels = (1, 2, 3, 4, 5, 6)
    default_levels = (1, 2, 3)

    def sample(self, rng: random.Random, level: int) -> Problem:
        a, b = _number(rng, level), _number(rng, rng.randint(1, level))
        if rng.random() < 0.5:
            a, b = b, a
        return Problem(self.name, level, f"Compute {a} + {b}.", str(a + b), (a, b))

    def columns(self, problem: Problem) -> list[Column]:
        a, b = problem.operands
        width = max(len(str(a)), len(str(b)))
        return list(zip(_digits(a, width), _digits(b, width)))

    def step(self, column: Column, carry: int) -> tuple[str, int]:
        x, y = column
        return f"{x}+{y}" + (f"+{carry}" if carry else ""), x + y + carry


class Subtraction(ColumnTask):
    """a - b with a >= b; a borrowing column is written with its borrowed ten: ``12-7=5``."""

    name = "subtraction"
    levels = (1, 2, 3, 4, 5, 6)
    default_levels = (1, 2, 3)

    def sample(self, rng: random.Random, level: int) -> Problem:
        a, b = _number(rng, level), _number(rng, rng.randint(1, level))
        a, b = max(a, b), min(a, b)
        return Problem(self.name, level, f"Compute {a} - {b}.", str(a - b), (a, b))

    def columns(self, problem: Problem) -> list[Column]:
        a, b = problem.operands
        width = len(str(a))
        return list(zip(_digits(a, width), _digits(b, width)))

    def step(self, column: Column, carry: int) -> tuple[str, int]:
        top, bottom = column
        borrow = top - bottom - carry < 0
        lhs = f"{'1' if borrow else ''}{top}-{bottom}" + ("-1" if carry else "")
        return lhs, top - bottom - carry + (10 if borrow else 0)

    def split(self, column: Column, carry: int, value: int) -> tuple[int, int]:
        top, bottom = column
        return value % 10, int(top - bottom - carry < 0)

    def final_digits(self, carry: int) -> list[int]:
        return []  # a >= b: a borrow out of the top column can only come from an error


class Multiplication(ColumnTask):
    """A multi-digit number times one digit: ``7*6=42 , 4*6+4=28 , 3*6+2=20 , so 2082``."""

    name = "multiplication"
    levels = (1, 2, 3, 4, 5, 6)
    default_levels = (1, 2)

    def sample(self, rng: random.Random, level: int) -> Problem:
        a, b = _number(rng, level), rng.randint(2, 9)
        return Problem(self.name, level, f"Compute {a} * {b}.", str(a * b), (a, b))

    def columns(self, problem: Problem) -> list[Column]:
        a, b = problem.operands
        return [(x, b) for x in _digits(a, len(str(a)))]

    def step(self, column: Column, carry: int) -> tuple[str, int]:
        x, b = column
        return f"{x}*{b}" + (f"+{carry}" if carry else ""), x * b + carry

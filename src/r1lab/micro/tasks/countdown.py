"""Countdown (as in TinyZero): reach a target from given numbers with + - * /, each number once.

The worked solution evaluates a left-to-right chain ``((a op b) op c) op d`` one operation per
step: ``44-19=25 , 25*3=75``; the answer is the expression ``(44-19)*3``. Flawed traces first
try a wrong chain, and either notice ("wait , no") and go on to the right one, or slip an
arithmetic error that makes the wrong chain look right and answer with it.
"""

from __future__ import annotations

import ast
import random
from collections import Counter
from fractions import Fraction
from typing import Any

from r1lab.micro.tasks.base import REFLECTION_WORD, Problem, Task, TraceStyle

OPS = ("+", "-", "*", "/")
MAX_NUMBER = 30
MAX_TARGET = 300
MAX_EXPRESSION_CHARS = 64


def _apply(op: str, x: int, y: int) -> int | None:
    """The operation on positive integers, or None when it leaves them (negative, zero, fraction)."""
    if op == "+":
        return x + y
    if op == "-":
        return x - y if x > y else None
    if op == "*":
        return x * y
    return x // y if y and x % y == 0 else None


def _chain(numbers: list[int], ops: list[str]) -> list[tuple[int, str, int, int]] | None:
    """Steps (left, op, right, value) of the chain, or None if an intermediate value is invalid."""
    steps, acc = [], numbers[0]
    for op, y in zip(ops, numbers[1:]):
        value = _apply(op, acc, y)
        if value is None or value > 10 * MAX_TARGET:
            return None
        steps.append((acc, op, y, value))
        acc = value
    return steps


def _expression(numbers: list[int], ops: list[str]) -> str:
    """``(44-19)*3``: the chain with each earlier step parenthesised."""
    expr = str(numbers[0])
    for i, (op, y) in enumerate(zip(ops, numbers[1:])):
        expr = f"({expr}){op}{y}" if i else f"{expr}{op}{y}"
    return expr


class Countdown(Task):
    name = "countdown"
    levels = (2, 3, 4)
    default_levels = (3,)

    def sample(self, rng: random.Random, level: int) -> Problem:
        while True:
            numbers = [rng.randint(1, MAX_NUMBER) for _ in range(level)]
            ops = [rng.choice(OPS) for _ in range(level - 1)]
            steps = _chain(numbers, ops)
            if steps is None or not 1 <= steps[-1][3] <= MAX_TARGET:
                continue
            target = steps[-1][3]
            shown = sorted(numbers)
            prompt = f"Make {target} from {', '.join(map(str, shown))} with + - * /."
            return Problem(self.name, level, prompt, str(target), tuple(numbers) + (target,))

    def reasoning(self, problem: Problem, rng: random.Random, style: TraceStyle) -> tuple[str, str]:
        *numbers, target = problem.operands
        ops = _solution_ops(numbers, target)
        parts = []
        if rng.random() < min(1.0, style.p_step_error + style.p_wrong_final):
            wrong = _wrong_chain(numbers, target, rng)
            if wrong is not None:
                w_numbers, w_ops, w_steps = wrong
                parts += [f"{x}{op}{y}={v}" for x, op, y, v in w_steps[:-1]]
                x, op, y, v = w_steps[-1]
                if rng.random() < style.p_fix_error:
                    parts += [f"{x}{op}{y}={v}", f"{REFLECTION_WORD} , no"]
                else:  # a slip makes the wrong chain look right: answer with it
                    parts.append(f"{x}{op}{y}={target}")
                    return " , ".join(parts), _expression(w_numbers, w_ops)
        steps = _chain(numbers, ops)
        parts += [f"{x}{op}{y}={v}" for x, op, y, v in steps]
        if rng.random() < style.p_check_ok:
            x, op, y, v = steps[-1]
            parts.append(f"{REFLECTION_WORD} , {x}{op}{y}={v}")
        return " , ".join(parts), _expression(numbers, ops)

    def verify(self, predicted: str | None, row: dict[str, Any]) -> bool:
        *numbers, target = row["operands"]
        value = evaluate_expression(predicted, numbers)
        return value is not None and value == target

    def canonical(self, predicted: str, row: dict[str, Any]) -> str:
        """Correct expressions vote together whatever their form; others by their value."""
        *numbers, _ = row["operands"]
        value = evaluate_expression(predicted, numbers)
        return f"={value}" if value is not None else predicted.strip()


def _solution_ops(numbers: list[int], target: int) -> list[str]:
    """The operators of the generating chain, recovered by search (the problem keeps only numbers)."""
    found = _search(numbers, target)
    if found is None:
        raise ValueError(f"countdown problem {numbers} -> {target} has no chain solution")
    return found


def _search(numbers: list[int], target: int) -> list[str] | None:
    n = len(numbers)
    for code in range(len(OPS) ** (n - 1)):
        ops = [OPS[(code // len(OPS) ** i) % len(OPS)] for i in range(n - 1)]
        steps = _chain(numbers, ops)
        if steps is not None and steps[-1][3] == target:
            return ops
    return None


def _wrong_chain(numbers: list[int], target: int, rng: random.Random):
    """A random valid chain over a shuffle of the numbers that misses the target."""
    for _ in range(20):
        order = numbers[:]
        rng.shuffle(order)
        ops = [rng.choice(OPS) for _ in range(len(order) - 1)]
        steps = _chain(order, ops)
        if steps is not None and steps[-1][3] != target:
            return order, ops, steps
    return None


def evaluate_expression(text: str | None, numbers: list[int]) -> Fraction | None:
    """The exact value of an arithmetic expression that uses each of `numbers` exactly once.

    Untrusted model output: only integers, + - * / and parentheses are accepted, the text is
    bounded in length (so parsing and evaluation are bounded), and division is exact.
    """
    if not text or len(text) > MAX_EXPRESSION_CHARS or not set(text) <= set("0123456789+-*/() "):
        return None
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    used: list[int] = []
    value = _eval(tree, used)
    if value is None or Counter(used) != Counter(numbers):
        return None
    return value


def _eval(node: ast.AST, used: list[int]) -> Fraction | None:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _eval(node.left, used), _eval(node.right, used)
        if left is None or right is None:
            return None
        if isinstance(node.op, ast.Div) and right == 0:
            return None
        return _BINOPS[type(node.op)](left, right)
    return None


_BINOPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}

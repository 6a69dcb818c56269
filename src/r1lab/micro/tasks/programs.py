"""Code: write a small Python function; judged by running generated tests in the sandbox.

    Write a Python function f(xs) that returns 3 times the sum of the list xs.
    <think> plan : return 3 * sum(xs) , check f([1, 4]) = 15 </think>
    <answer>```python
    def f(xs): return 3 * sum(xs)
    ```</answer>

Levels: 1 arithmetic on one integer, 2 one pass over a list, 3 strings and filters. Each
problem's tests (``assert f(...) == ...``, 4 of them) are computed from a reference solution
and kept in the row's ``answer``: a micro row has no other free-text column, and for code the
tests are the reference answer. The worked solution's code is one line (``def f(x): return
...``), because the accuracy reward's answer extraction collapses whitespace, and a one-line
function survives that; the code reward reads the completion's fenced block as written.

Flawed traces follow `TraceStyle`: a step error writes a plausible bug (an off-by-one
constant, the wrong filter), which either gets noticed ("wait , return ...") or ends in the
answer; every problem's tests include an input on which that bug fails.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

from r1lab.rewards.code_tests import extract_code
from r1lab.micro.tasks.base import REFLECTION_WORD, Problem, Task, TraceStyle

NUM_TESTS = 4


@dataclass(frozen=True)
class Template:
    level: int
    arg: str  # "x": an int, "xs": a list of ints, "s": a string
    text: str  # the prompt's "returns ..." clause, formatted with a, b, c
    body: str  # the reference solution's returned expression
    bug: str  # a plausible wrong expression; the tests always include an input where it fails


TEMPLATES = (
    Template(1, "x", "returns {a} * x + {b}", "{a} * x + {b}", "{a} * x + {b1}"),
    Template(1, "x", "returns x squared plus {a}", "x * x + {a}", "x * x - {a}"),
    Template(1, "x", "returns the remainder of x divided by {a}", "x % {a}", "x // {a}"),
    Template(2, "xs", "returns {a} times the sum of the list xs", "{a} * sum(xs)", "{a} + sum(xs)"),
    Template(2, "xs", "returns how many times {a} appears in the list xs", "xs.count({a})", "len(xs) - xs.count({a})"),
    Template(2, "xs", "returns the largest number in the non-empty list xs plus {a}", "max(xs) + {a}", "min(xs) + {a}"),
    Template(2, "xs", "returns the sum of the even numbers in the list xs", "sum(x for x in xs if x % 2 == 0)",
             "sum(x for x in xs if x % 2 == 1)"),
    Template(3, "s", "returns the string s reversed and repeated {a} times", "s[::-1] * {a}", "s * {a}"),
    Template(3, "s", "returns how many times the letter {c} appears in the string s", "s.count('{c}')",
             "s.count('{c}') + 1"),
    Template(3, "xs", "returns the sum of the numbers in the list xs that are greater than {a}",
             "sum(x for x in xs if x > {a})", "sum(x for x in xs if x >= {a})"),
    Template(3, "xs", "returns the odd numbers of the list xs, each times {a}, in order",
             "[x * {a} for x in xs if x % 2 == 1]", "[x * {a} for x in xs]"),
)
LETTERS = "abcde"


@dataclass(frozen=True)
class Spec:
    """One problem: its template and constants, from the row's operands (template index, a, b)."""

    template: Template
    a: int
    b: int

    @property
    def names(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "b1": self.b + 1, "c": LETTERS[self.a % len(LETTERS)]}

    def expression(self, buggy: bool = False) -> str:
        return (self.template.bug if buggy else self.template.body).format(**self.names)

    def code(self, buggy: bool = False) -> str:
        return f"def f({self.template.arg}): return {self.expression(buggy)}"

    def function(self, buggy: bool = False) -> Callable[[Any], Any]:
        namespace: dict[str, Any] = {}
        exec(self.code(buggy), namespace)  # our own generated one-liner, never model output
        return namespace["f"]

    def inputs(self) -> list[Any]:
        """NUM_TESTS inputs, deterministic per problem, at least one of which the bug gets wrong."""
        rng = random.Random(f"code-tests/{self.template.body}/{self.a}/{self.b}")
        shortest = 1 if "max" in self.template.body else 0
        draw = {"x": lambda: rng.randint(-10, 20),  # lists hold `a` often: counts and "> a" need it
                "xs": lambda: [self.a if rng.random() < 0.3 else rng.randint(-5, 15)
                               for _ in range(rng.randint(shortest, 6))],
                "s": lambda: "".join(rng.choice(LETTERS) for _ in range(rng.randint(0, 8)))}[self.template.arg]
        good, bad = self.function(), self.function(buggy=True)
        pool = list({repr(x): x for x in (draw() for _ in range(200))}.values())  # distinct, in order
        chosen = pool[:NUM_TESTS]
        if all(good(x) == bad(x) for x in chosen):
            chosen[-1] = next(x for x in pool if good(x) != bad(x))
        return chosen

    def tests(self) -> str:
        good = self.function()
        return "\n".join(f"assert f({x!r}) == {good(x)!r}" for x in self.inputs())


def fenced(code: str) -> str:
    return f"```python\n{code}\n```"


class CodeTask(Task):
    name = "code"
    levels = (1, 2, 3)
    default_levels = (1, 2)

    def sample(self, rng: random.Random, level: int) -> Problem:
        choices = [i for i, t in enumerate(TEMPLATES) if t.level == level]
        index = rng.choice(choices)
        template = TEMPLATES[index]
        a = rng.randint(2, 12)
        b = rng.randint(0, 12) if "{b" in template.body + template.text else 0
        spec = Spec(template, a, b)
        prompt = f"Write a Python function f({template.arg}) that {template.text.format(**spec.names)}."
        return Problem(self.name, level, prompt, spec.tests(), (index, a, b))

    def reasoning(self, problem: Problem, rng: random.Random, style: TraceStyle) -> tuple[str, str]:
        spec = _spec(problem.operands)
        example = spec.inputs()[0]
        buggy = rng.random() < style.p_step_error
        parts = [f"plan : return {spec.expression(buggy)}", f"check f({example!r}) = {spec.function(buggy)(example)!r}"]
        if buggy and rng.random() < style.p_fix_error:
            parts += [f"{REFLECTION_WORD} , return {spec.expression()}",
                      f"check f({example!r}) = {spec.function()(example)!r}"]
            buggy = False
        elif not buggy and rng.random() < style.p_check_ok:
            parts.append(f"{REFLECTION_WORD} , f({example!r}) = {spec.function()(example)!r}")
        if rng.random() < style.p_wrong_final:
            buggy = not buggy  # the answer no longer follows from the steps
        return " , ".join(parts), fenced(spec.code(buggy))

    def verify(self, predicted: str | None, row: dict[str, Any]) -> bool:
        """Does the code pass the row's tests? The reference and the known bug are answered
        without running anything; any other code runs in the sandbox (`default_pool`)."""
        code = unfence(predicted)
        if code is None:
            return False
        spec = _spec(row.get("operands") or ())
        if spec is not None:  # exact text only: "return 3 * x\n+ 2" is not "return 3 * x + 2"
            if code.strip() == spec.code():
                return True
            if code.strip() == spec.code(buggy=True):
                return False
        from r1lab.sandbox import default_pool, parse_tests  # late: the sandbox probes on first use

        [result] = default_pool().run([(code, parse_tests(row.get("tests") or row["answer"]))])
        return result.status == "passed"

    def canonical(self, predicted: str, row: dict[str, Any]) -> str:
        """Answers vote by their code, whitespace aside."""
        code = unfence(predicted)
        return " ".join(code.split()) if code is not None else predicted.strip()


def unfence(text: str | None) -> str | None:
    """The code of an extracted answer: a fenced block as written, or one whose whitespace was
    collapsed into one line by answer extraction (``python def f(x): ...`` between fences)."""
    if not text or not text.strip():
        return None
    code = extract_code(text)
    if code is not None:
        return code
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped[3:]
        if stripped.endswith("```"):
            stripped = stripped[:-3]
        first, _, rest = stripped.partition(" ")
        stripped = rest if first.lower() in ("python", "py", "python3") else stripped
    return stripped.strip() or None


def _spec(operands: Any) -> Spec | None:
    try:
        index, a, b = (int(v) for v in operands)
        return Spec(TEMPLATES[index], a, b) if 0 <= index < len(TEMPLATES) else None
    except (TypeError, ValueError):
        return None

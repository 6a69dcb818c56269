"""Test cases from a dataset's ``tests`` column, in every layout r1lab accepts.

- Python source with asserts (MBPP, r1lab's code task): each top-level ``assert`` (or top-level
  statement with an assert inside, like ``try: f(-1) except ValueError: pass else: assert False``)
  is one test, run after the program and after the source's other top-level statements that
  precede it (imports, helpers); source without one that calls something at top level
  (HumanEval's ``def check(candidate)`` and ``check(f)``) is one test; source with only
  definitions but ``def test_*()`` functions (pytest's layout) has one test per function, which
  is called. Source in which nothing runs (a ``def check`` never called) is refused: it would
  pass any program; given the row's ``entry_point``, HumanEval's convention applies instead
  (``check(<entry_point>)`` is appended).
- A list of such strings: each string is one test, as it is.
- stdin/stdout pairs (APPS, CodeContests): a list of ``{"input": ..., "output": ...}`` or of
  ``[input, output]``, or ``{"inputs": [...], "outputs": [...]}``, or that as a JSON string.
  The program runs as a script; it passes when it ends normally and its stdout equals the
  expected output up to trailing whitespace on each line and trailing blank lines.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from typing import Any

from r1lab.errors import R1labError

MAX_TESTS = 1000


@dataclass(frozen=True)
class CodeTest:
    kind: str  # "assert": `source` runs after the program; "stdio": the program reads `stdin`
    source: str = ""
    stdin: str = ""
    expected: str = ""  # stdio: the expected stdout; it never enters the sandbox

    def spec(self) -> tuple[str, str]:
        """What the harness gets: no expected output, so the program can't find it."""
        return (self.kind, self.source if self.kind == "assert" else self.stdin)


def parse_tests(spec: Any, entry_point: str | None = None) -> tuple[CodeTest, ...]:
    """The tests in one ``tests`` cell; R1labError for a layout r1lab doesn't know.

    >>> [t.source for t in parse_tests("import math\\nassert f(1) == 2\\nassert f(2) == 3")]
    ['import math\\nassert f(1) == 2', 'import math\\nassert f(2) == 3']
    >>> parse_tests([{"input": "1 2\\n", "output": "3\\n"}])[0].kind
    'stdio'
    """
    if isinstance(spec, str):
        stripped = spec.lstrip()
        if stripped[:1] in ("{", "["):
            try:
                return parse_tests(json.loads(spec))
            except (json.JSONDecodeError, R1labError):
                pass  # Python source that starts with a list or dict literal
        tests = split_asserts(spec, entry_point)
    elif isinstance(spec, dict):
        tests = _stdio_columns(spec)
    elif isinstance(spec, (list, tuple)):
        tests = tuple(_one(item) for item in spec)
    else:
        raise R1labError("tests must be Python source, a list of tests or stdin/stdout pairs, "
                         f"got {type(spec).__name__}")
    if not tests:
        raise R1labError("tests: no test cases")
    if len(tests) > MAX_TESTS:
        raise R1labError(f"tests: {len(tests)} test cases, more than {MAX_TESTS}")
    return tests


def split_asserts(source: str, entry_point: str | None = None) -> tuple[CodeTest, ...]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError) as e:
        raise R1labError(f"tests: the test source is not valid Python: {e}") from None
    checks = [i for i, node in enumerate(tree.body) if _is_check(node)]
    if not checks:
        if any(_runs_something(node) for node in tree.body):
            return (CodeTest("assert", source=source),)
        if entry_point and any(isinstance(node, ast.FunctionDef) and node.name == "check" for node in tree.body):
            if not entry_point.isidentifier():
                raise R1labError(f"tests: entry_point {entry_point!r} is not a Python name")
            return (CodeTest("assert", source=f"{source}\n\ncheck({entry_point})\n"),)
        return _pytest_functions(tree)
    tests = []
    for i in checks:
        setup = [node for j, node in enumerate(tree.body[:i]) if j not in checks]
        tests.append(CodeTest("assert", source=ast.unparse(ast.Module(body=setup + [tree.body[i]], type_ignores=[]))))
    return tuple(tests)


def _is_check(node: ast.stmt) -> bool:
    """A top-level assert or raise, or a statement with one inside (``try: ... else: assert False``);
    definitions are setup even when their bodies assert (HumanEval's ``def check``)."""
    if isinstance(node, (ast.Assert, ast.Raise)):
        return True
    if _is_definition(node):
        return False
    return _asserts(node)


def _is_definition(node: ast.stmt) -> bool:
    return isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))


def _asserts(node: ast.AST) -> bool:
    return any(isinstance(inner, (ast.Assert, ast.Raise)) for inner in ast.walk(node))


def _runs_something(node: ast.stmt) -> bool:
    """A top-level statement that checks or calls something (``check(f)``, ``f(1)``), not a
    definition, an import, or an assignment of constants."""
    if _is_definition(node) or isinstance(node, (ast.Import, ast.ImportFrom)):
        return False
    return any(isinstance(inner, (ast.Assert, ast.Raise, ast.Call)) for inner in ast.walk(node))


def _pytest_functions(tree: ast.Module) -> tuple[CodeTest, ...]:
    """One test per ``def test_*()`` (no parameters): the whole source, then its call."""
    names = [node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test")
             and not (node.args.args or node.args.posonlyargs or node.args.kwonlyargs)]
    if not names:
        raise R1labError("tests: nothing in the test source runs (only definitions: a check(candidate) never "
                         "called, no assert, no def test_*()): it would pass any program")
    source = ast.unparse(tree)
    return tuple(CodeTest("assert", source=f"{source}\n{name}()") for name in names)


def _one(item: Any) -> CodeTest:
    if isinstance(item, str):
        try:
            tree = ast.parse(item)
        except (SyntaxError, ValueError) as e:
            raise R1labError(f"tests: a test is not valid Python: {e}") from None
        if not any(_runs_something(node) for node in tree.body):
            raise R1labError(f"tests: nothing in the test {item[:60]!r} runs (only definitions, imports or "
                             "constants): it would pass any program")
        return CodeTest("assert", source=item)
    if isinstance(item, dict) and "input" in item and "output" in item:
        return _stdio(item["input"], item["output"])
    if isinstance(item, (list, tuple)) and len(item) == 2:
        return _stdio(item[0], item[1])
    raise R1labError(f"tests: can't read a test case of type {type(item).__name__}: "
                     "use Python source, {'input': ..., 'output': ...} or [input, output]")


def _stdio_columns(spec: dict) -> tuple[CodeTest, ...]:
    if "input" in spec and "output" in spec:
        return (_stdio(spec["input"], spec["output"]),)
    inputs, outputs = spec.get("inputs"), spec.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
        raise R1labError("tests: a dict of tests needs equally long 'inputs' and 'outputs' lists")
    return tuple(_stdio(i, o) for i, o in zip(inputs, outputs))


def _stdio(stdin: Any, expected: Any) -> CodeTest:
    return CodeTest("stdio", stdin=_text(stdin), expected=_text(expected))


def _text(value: Any) -> str:
    if isinstance(value, list):  # some datasets store lines
        return "\n".join(map(str, value)) + "\n"
    return str(value)


def normalise_output(text: str) -> str:
    """Stdout as judges compare it: no trailing whitespace on lines, no trailing blank lines."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def prompt_helpers(prompt: str, entry_point: str) -> str:
    """The prompt's code other than the function to write (imports, helpers such as HumanEval's
    ``encode_cyclic``), as test code: the test then uses the prompt's helpers, never the
    program's own versions of them (a program that redefines ``encode_cyclic`` as the identity
    would otherwise pass ``decode_cyclic`` with the identity too). "" if the prompt isn't Python.

    >>> prompt_helpers("import math\\ndef g(x):\\n    return x\\ndef f(x):\\n    'doc'\\n", "f")
    'import math\\n\\ndef g(x):\\n    return x'
    """
    try:
        tree = ast.parse(prompt)
    except (SyntaxError, ValueError):
        return ""
    body = [node for node in tree.body
            if not (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == entry_point)]
    return ast.unparse(ast.Module(body=body, type_ignores=[]))

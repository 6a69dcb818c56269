"""The paper's accuracy reward for code: run the completion's program against the example's tests.

The program is the last fenced Python block of the completion; it runs in a sandbox
(`r1lab.sandbox`: no network, no access to your files, time, memory and process limits), each
test in a fresh process, and the reward is the share of tests that pass. A test passes only
when its own code runs to the end; exit codes and printed text decide nothing. A program that
can't be run (no code block) scores 0.0, an example without tests None (can't judge), and a
sandbox failure 0.0 with the reason logged.

Tests come from the ``tests`` column: Python source with asserts, a list of such strings, or
stdin/stdout pairs (see `r1lab.sandbox.cases`). Rows of the micro "code" task carry their tests
in ``answer`` (the only free-text column of a micro row), which is used when ``tests`` is absent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from r1lab.errors import R1labError
from r1lab.rewards.columns import column, completion_text
from r1lab.sandbox import Limits, SandboxPool, default_pool, parse_tests

logger = logging.getLogger(__name__)

RewardFn = Callable[..., list[float | None]]
CODE_TASK = "code"  # the micro task whose rows keep their tests in `answer`
LANGUAGES = ("python", "py", "python3", "")
MAX_PROGRAM_CHARS = 100_000
FENCE = "```"


def extract_code(completion: str) -> str | None:
    """The last fenced Python block (```python, ```py, ```python3 or a bare ```), or None.

    A block still open at the end (a truncated completion) does not count. Linear time: only
    ``str.find`` over the text.

    >>> extract_code("Plan.\\n```python\\ndef f(x):\\n    return x\\n```\\nThen:\\n```\\nprint(1)\\n```")
    'print(1)\\n'
    >>> extract_code("```js\\nlet x = 1;\\n```") is None, extract_code("```python\\nunclosed") is None
    (True, True)
    """
    if not isinstance(completion, str):
        return None
    found = None
    pos = 0
    while (start := completion.find(FENCE, pos)) >= 0:
        line_end = completion.find("\n", start + len(FENCE))
        if line_end < 0:
            break
        close = completion.find(FENCE, line_end + 1)
        if close < 0:
            break
        info = completion[start + len(FENCE):line_end].strip().split(" ")[0].lower()
        body = completion[line_end + 1:close]
        if info in LANGUAGES and body.strip():
            found = body
        pos = close + len(FENCE)
    return found


def make_code_reward(binary: bool = False, limits: Limits | None = None,
                     pool: SandboxPool | None = None) -> RewardFn:
    """The code reward with its own sandbox limits or pool (default: the shared `default_pool`).

    `binary`: 1.0 only when every test passes (the paper's accuracy reward), else the fraction.
    """

    def code_reward(completions: list[Any], tests: list[Any] | None = None, **columns: Any) -> list[float | None]:
        """Share of the example's tests the completion's last Python block passes, run in a sandbox.

        >>> code_reward(["```python\\ndef f(x): return 2 * x\\n```"], tests=["assert f(2) == 4"])  # doctest: +SKIP
        [1.0]
        """
        n = len(completions)
        specs = _test_specs(n, tests, columns)
        entry_points = column(columns.get("entry_point"), n)  # HumanEval rows: check(<entry_point>)
        scores: list[float | None] = [None] * n
        jobs: dict[tuple, list[int]] = {}  # a group's identical completions run once
        for i, (completion, spec) in enumerate(zip(completions, specs)):
            if spec is None:
                continue
            try:
                cases = parse_tests(spec, entry_points[i] if isinstance(entry_points[i], str) else None)
            except R1labError as e:
                logger.warning("code reward: example %d can't be judged: %s", i, e)
                continue
            code = extract_code(completion_text(completion))
            if code is None or len(code) > MAX_PROGRAM_CHARS:
                scores[i] = 0.0
                continue
            jobs.setdefault((code, cases), []).append(i)
        if jobs:
            results = (pool or default_pool()).run(list(jobs), limits)
            for result, where in zip(results, jobs.values()):
                ok = result.status != "error"
                score = float(ok and result.passed == result.total) if binary else (result.fraction if ok else 0.0)
                for i in where:
                    scores[i] = score
        return scores

    code_reward.__name__ = "binary_code_reward" if binary else "code_reward"
    return code_reward


def _test_specs(n: int, tests: Any, columns: dict[str, Any]) -> list[Any]:
    specs = column(tests, n)
    tasks, answers = column(columns.get("task"), n), column(columns.get("answer"), n)
    return [spec if spec not in (None, "") else (answers[i] if tasks[i] == CODE_TASK else None)
            for i, spec in enumerate(specs)]


code_reward = make_code_reward()
binary_code_reward = make_code_reward(binary=True)

__all__ = ["binary_code_reward", "code_reward", "extract_code", "make_code_reward"]

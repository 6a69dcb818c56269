"""Code benchmarks by the paper's protocol: k samples per problem, pass@1 = mean correctness.

    from r1lab.evaluation.code_eval import evaluate_code_rows
    rows = read_rows("humaneval.jsonl")            # prompt, test, entry_point (, task_id)
    metrics = evaluate_code_rows(rows, completions_per_row)   # k completions for each row
    metrics["pass@1"], metrics["pass@5"], metrics["problems"][0]["failures"]

A sample is correct when every test passes in the sandbox (`r1lab.sandbox`), the same
checker the code reward uses. Row layouts:

- HumanEval / MBPP+ (evalplus): ``prompt`` (a function signature and docstring), ``test``
  (defines ``check(candidate)``) and ``entry_point``. The program is the prompt followed by the
  completion's last Python block (which redefines the function; the prompt keeps its imports
  and helpers), or by the completion itself when it has no block (a raw continuation, as in
  the original HumanEval). The test is the prompt's own helpers and imports (so a completion
  that redefines a helper the test uses changes nothing), ``test``, then ``check(<entry_point>)``.
- MBPP: ``test_list`` (assert strings, one test each), with ``test_setup_code`` and
  ``test_imports`` run before each; the program is the completion's last Python block.
- r1lab's own: a ``tests`` column in any layout `r1lab.sandbox.parse_tests` reads.
"""

from __future__ import annotations

from collections.abc import Sequence

from r1lab.errors import R1labError
from r1lab.evaluation.scoring import mean, pass_at_1, pass_at_k
from r1lab.rewards.code_tests import extract_code
from r1lab.sandbox import CodeTest, Limits, SandboxPool, default_pool, parse_tests
from r1lab.sandbox.cases import prompt_helpers


def evaluate_code_rows(rows: Sequence[dict], completions_per_row: Sequence[Sequence[str]],
                       pool: SandboxPool | None = None, limits: Limits | None = None,
                       ks: Sequence[int] = (1, 5, 10)) -> dict:
    """pass@1 (the mean over each problem's k samples, averaged over problems), unbiased pass@k
    for each k > 1 in `ks` up to the fewest samples of a problem, and per-problem details."""
    if len(rows) != len(completions_per_row):
        raise R1labError(f"{len(rows)} rows but completions for {len(completions_per_row)}")
    jobs, owners = [], []
    for r, (row, completions) in enumerate(zip(rows, completions_per_row)):
        tests = code_tests(row, r + 1)  # rows are numbered from 1 in errors
        for completion in completions:
            jobs.append((program_for(row, completion), tests))
            owners.append(r)
    results = (pool or default_pool()).run(jobs, limits) if jobs else []
    per_row: list[list] = [[] for _ in rows]
    for r, result in zip(owners, results):
        per_row[r].append(result)
    problems = []
    for r, (row, outcomes) in enumerate(zip(rows, per_row)):
        correct = [o.status == "passed" for o in outcomes]
        problems.append({"task_id": row.get("task_id", r), "samples": len(correct), "correct": sum(correct),
                         "pass@1": pass_at_1(correct),
                         "failures": [o.reason for o in outcomes if o.status != "passed"][:3]})
    n_min = min((p["samples"] for p in problems), default=0)
    return {
        "pass@1": mean([p["pass@1"] for p in problems]),
        **{f"pass@{k}": mean([pass_at_k(p["samples"], p["correct"], k) for p in problems])
           for k in ks if 1 < k <= n_min},
        "num_problems": len(problems),
        "num_samples": len(results),
        "sandbox_errors": sum(o.status == "error" for o in results),
        "problems": problems,
    }


def code_tests(row: dict, index: int = 1) -> tuple[CodeTest, ...]:
    """The row's tests, in whichever layout it uses; R1labError naming the row otherwise."""
    try:
        if row.get("test") and row.get("entry_point"):
            helpers = prompt_helpers(row.get("prompt") or "", row["entry_point"])
            return (CodeTest("assert", source=f"{helpers}\n\n{row['test']}\n\ncheck({row['entry_point']})\n"),)
        if row.get("test_list"):
            setup = "\n".join([*row.get("test_imports", []), row.get("test_setup_code") or ""]).strip()
            return parse_tests([f"{setup}\n{t}" if setup else t for t in row["test_list"]])
        if row.get("tests") not in (None, ""):
            return parse_tests(row["tests"])
    except R1labError as e:
        raise R1labError(f"row {index}: {e}") from None
    raise R1labError(f"row {index}: no tests (need 'test' + 'entry_point', 'test_list', or 'tests')")


def program_for(row: dict, completion: str) -> str:
    """The program a completion stands for in this row's layout."""
    code = extract_code(completion)
    if row.get("test") and row.get("entry_point"):  # HumanEval: the prompt is the start of the program
        prompt = row.get("prompt", "")
        return f"{prompt}\n\n{code}" if code is not None else f"{prompt}{completion}"
    return code if code is not None else completion


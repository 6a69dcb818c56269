"""r1lab eval end to end on a tiny random model: micro tasks, a math JSONL, a code JSONL, bad input."""

import json

import pytest

from r1lab.cli import main as cli_main
from r1lab.evaluation.evaluate import format_table, summarize
from r1lab.files import read_jsonl


def _eval(model, out, *extra):
    return cli_main(["eval", f"model={model}", f"output_dir={out}", "k=3", "max_new_tokens=8", "progress=false",
                     *extra])


def test_micro_tasks_write_samples_summary_and_table(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "ev"
    assert _eval(tiny_model_dir, out, "num_problems=4", "tasks=[addition,countdown]") == 0
    samples = read_jsonl(out / "samples.jsonl")
    assert len(samples) == 2 * 4 * 3
    summary = json.loads((out / "summary.json").read_text())
    for task in ("addition", "countdown", "all"):
        assert set(summary[task]) >= {"problems", "pass@1", "pass@3", "cons@3", "mean_length", "format", "reflection"}
    assert summary["all"]["problems"] == 8
    table = capsys.readouterr().out
    assert "pass@1" in table and "addition" in table and "countdown" in table


def test_summary_from_hand_made_records():
    # problem 0: 2 of 3 right, majority "5" is right; problem 1: 0 of 3 right
    records = [
        {"task": "t", "problem": 0, "correct": True, "vote": "5", "length": 10, "format": True, "reflection": True,
         "finish_reason": "stop", "readable": True},
        {"task": "t", "problem": 0, "correct": True, "vote": "5", "length": 20, "format": True, "reflection": False,
         "finish_reason": "stop", "readable": False},
        {"task": "t", "problem": 0, "correct": False, "vote": "6", "length": 30, "format": False, "reflection": False,
         "finish_reason": "length", "readable": False},
        {"task": "t", "problem": 1, "correct": False, "vote": None, "length": 40, "format": False,
         "reflection": False, "finish_reason": "stop", "readable": False},
    ] + [{"task": "t", "problem": 1, "correct": False, "vote": "1", "length": 40, "format": False,
          "reflection": False, "finish_reason": "stop", "readable": False}] * 2
    m = summarize(records, k=3)["t"]
    assert m["pass@1"] == pytest.approx((2 / 3 + 0) / 2)
    assert m["pass@3"] == pytest.approx((1 + 0) / 2)
    assert m["cons@3"] == pytest.approx(0.5)
    assert m["mean_length"] == pytest.approx(30.0)
    assert m["format"] == pytest.approx(2 / 6) and m["reflection"] == pytest.approx(1 / 6)
    assert m["truncated"] == pytest.approx(1 / 6) and m["readable"] == pytest.approx(1 / 6)
    assert "t" in format_table({"t": m})


def test_math_benchmark_jsonl(tiny_model_dir, tmp_path):
    data = tmp_path / "math.jsonl"
    data.write_text(json.dumps({"problem": "What is 1/2 + 1/2?", "answer": "1"}) + "\n")
    assert _eval(tiny_model_dir, tmp_path / "ev", f"data={data}", "template=raw") == 0
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["math"]["problems"] == 1


def test_code_benchmark_jsonl_runs_tests_in_the_sandbox(tiny_model_dir, tmp_path):
    from r1lab.errors import R1labError
    from r1lab.sandbox import runner

    try:
        runner.choose_isolation(allow_weak_isolation=False)
    except R1labError as e:  # no bubblewrap here: tests/test_sandbox.py says why
        pytest.skip(f"no sandbox: {e}")
    data = tmp_path / "he.jsonl"
    data.write_text(json.dumps({"task_id": "t/0", "prompt": "def add(a, b):\n", "entry_point": "add",
                                "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"}) + "\n")
    assert _eval(tiny_model_dir, tmp_path / "ev", f"data={data}", "template=raw", "stop=[]") == 0
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["code"]["problems"] == 1 and 0.0 <= summary["code"]["pass@1"] <= 1.0


@pytest.mark.parametrize("row, message", [
    ({"answer": "1"}, "row 1 has no column 'prompt'"),
    ({"problem": "  ", "answer": "1"}, "row 1 column 'problem': empty prompt"),
    ({"problem": "2+2?"}, "row 1 has no column 'answer'"),
])
def test_bad_benchmark_rows_are_one_line_errors(tiny_model_dir, tmp_path, capsys, row, message):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(row) + "\n")
    assert _eval(tiny_model_dir, tmp_path / "ev", f"data={data}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "bad.jsonl" in err[-1]


def test_missing_files_and_unknown_keys(tiny_model_dir, tmp_path, capsys):
    assert _eval(tiny_model_dir, tmp_path / "ev", f"data={tmp_path / 'none.jsonl'}") == 2
    assert "none.jsonl: file not found" in capsys.readouterr().err
    assert _eval(tiny_model_dir, tmp_path / "ev", "temprature=0.6") == 2
    assert "unknown key 'temprature'" in capsys.readouterr().err
    assert _eval(tiny_model_dir, tmp_path / "ev", "tasks=[division]") == 2
    assert "unknown task 'division'" in capsys.readouterr().err


def test_plot_of_a_run(tmp_path):
    from r1lab.stages.plot import plot_run

    (tmp_path / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "reward/mean": s / 10, "accuracy": s / 20, "completion_length/mean": 30 + s,
                    "reflection_rate": 0.1, "kl": 0.01 * s, **({"eval/all/pass@1": 0.5} if s % 2 == 0 else {})}) + "\n"
        for s in range(1, 7)))
    png = plot_run(tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

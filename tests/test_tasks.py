import dataclasses
import random

import pytest

from r1lab.micro import tasks
from r1lab.errors import R1labError
from r1lab.micro.step_noise import evaluate_lhs
from r1lab.rewards.answers import extract_answer
from r1lab.micro.tasks.countdown import evaluate_expression


@pytest.mark.parametrize("name", list(tasks.TASKS))
def test_generation_is_deterministic_from_seed(name):
    a = tasks.generate(name, "train", 50, seed=3)
    b = tasks.generate(name, "train", 50, seed=3)
    c = tasks.generate(name, "train", 50, seed=4)
    assert a == b
    assert [p.prompt for p in a] != [p.prompt for p in c]


@pytest.mark.parametrize("name", list(tasks.TASKS))
def test_held_out_split_never_overlaps_training(name):
    task = tasks.TASKS[name]
    test = {p.prompt for p in tasks.generate(name, "test", 300, seed=0, levels=task.levels)}
    train = {p.prompt for seed in range(3) for p in tasks.generate(name, "train", 2000, seed=seed, levels=task.levels)}
    assert test and train
    assert not test & train
    assert all(tasks.split_of(name, p) == "test" for p in test)


@pytest.mark.parametrize("name", list(tasks.TASKS))
def test_clean_solutions_are_right_and_verified(name):
    task = tasks.TASKS[name]
    rng = random.Random(0)
    for problem in tasks.generate(name, "train", 200, seed=1, levels=task.levels):
        completion = task.solution(problem, rng)
        assert completion.startswith("<think> ") and completion.endswith("</answer>")
        assert tasks.verify(name, extract_answer(completion), problem.to_row()), completion


def test_arithmetic_verifier_right_wrong_malformed():
    row = tasks.generate("addition", "test", 1, seed=0)[0].to_row()
    right = row["answer"]
    assert tasks.verify("addition", right, row)
    assert tasks.verify("addition", f" {right} ", row)
    assert not tasks.verify("addition", str(int(right) + 1), row)
    for bad in [None, "", "12a", "1e3", "⁵", "1" * 40, "3 or 4", "--5"]:
        assert not tasks.verify("addition", bad, row), bad


def test_countdown_verifier():
    row = {"operands": [3, 44, 19, 75], "answer": "75"}
    assert tasks.verify("countdown", "(44-19)*3", row)
    assert tasks.verify("countdown", "3*(44-19)", row)
    assert not tasks.verify("countdown", "(44-19)*3+0", row)  # 0 is not one of the numbers
    assert not tasks.verify("countdown", "(44+19)*3", row)  # wrong value
    assert not tasks.verify("countdown", "75", row)  # numbers not used
    assert not tasks.verify("countdown", "(44-19)*3*3/3", row)  # 3 used three times
    for hostile in ["__import__('os')", "9**9**9", "(" * 500 + "1" + ")" * 500, "1/0", "", None, "3;4"]:
        assert not tasks.verify("countdown", hostile, row)
    assert evaluate_expression("44/(19-3)", [44, 19, 3]) == pytest.approx(44 / 16)


def test_flawed_corpus_traces_can_be_wrong_and_self_corrected():
    style = tasks.TraceStyle(p_step_error=0.3, p_fix_error=1.0)
    rng = random.Random(0)
    problems = tasks.generate("addition", "train", 200, seed=0, levels=(4,))
    texts = [tasks.TASKS["addition"].solution(p, rng, style) for p in problems]
    assert sum("wait ," in t for t in texts) > 50
    # every error is fixed (p_fix_error=1) and fixes are never wrong, so all answers are right
    assert all(tasks.verify("addition", extract_answer(t), p.to_row()) for t, p in zip(texts, problems))
    unfixed = tasks.TraceStyle(p_step_error=0.3)
    wrong = [not tasks.verify("addition", extract_answer(tasks.TASKS["addition"].solution(p, rng, unfixed)), p.to_row())
             for p in problems]
    assert 0.3 < sum(wrong) / len(wrong) < 0.95


def test_unknown_task_split_and_level_are_user_errors():
    with pytest.raises(R1labError, match="unknown task 'division'"):
        tasks.generate("division", "train", 1)
    with pytest.raises(R1labError, match="unknown split"):
        tasks.generate("addition", "dev", 1)
    with pytest.raises(R1labError, match="no level 9"):
        tasks.generate("addition", "train", 1, levels=(9,))
    with pytest.raises(ValueError, match="p_step_error"):
        tasks.TraceStyle(p_step_error=1.5)


@pytest.mark.parametrize("name", ["addition", "subtraction", "multiplication"])
def test_trace_check_accepts_faithful_traces_right_or_wrong(name):
    """Corpus traces follow from their steps (even wrong ones), except p_wrong_final answers."""
    task = tasks.TASKS[name]
    rng = random.Random(0)
    flawed = tasks.TraceStyle(p_step_error=0.2, p_drop_carry=0.2, p_fix_error=0.5, p_check_ok=0.1)
    for problem in tasks.generate(name, "train", 200, seed=2, levels=task.levels[:5]):
        completion = task.solution(problem, rng, flawed)
        assert tasks.check_trace(name, completion, problem.to_row()), completion
    unfaithful = tasks.TraceStyle(p_wrong_final=1.0)
    for problem in tasks.generate(name, "train", 50, seed=3):
        assert not tasks.check_trace(name, task.solution(problem, rng, unfaithful), problem.to_row())


def test_trace_check_rejects_shortcuts():
    row = {"task": "addition", "prompt": "Compute 19 + 3.", "answer": "22", "operands": [19, 3], "level": 2}
    ok = "<think> 9+3=12 , 1+0+1=2 , so 22 </think> <answer>22</answer>"
    assert tasks.check_trace("addition", ok, row)
    for bad in [
        "<think> 9+3=13 , 1+0+1=2 , so 22 </think> <answer>22</answer>",  # answer ignores a written step
        "<think> so 22 </think> <answer>22</answer>",  # no steps
        "<think> 9+3=12 , 1+0=1 , so 22 </think> <answer>22</answer>",  # carry dropped, answer patched
        "<think> 9+3=12 , 1+0+1=2 , 1+0+1=2 , so 22 </think> <answer>22</answer>",  # extra column
        "<think> 8+3=12 , 1+0+1=2 , so 22 </think> <answer>22</answer>",  # wrong column digits
        "<answer>22</answer>",
        "<think> " + "9+3=12 , " * 5000 + "so 22 </think> <answer>22</answer>",
    ]:
        assert not tasks.check_trace("addition", bad, row), bad
    # a re-check replaces the column it redoes
    fixed = "<think> 9+3=13 , wait , 9+3=12 , 1+0+1=2 , so 22 </think> <answer>22</answer>"
    assert tasks.check_trace("addition", fixed, row)
    assert tasks.check_trace("countdown", ok, {"operands": [1, 2, 3]}) is None


def test_without_needless_checks_every_recheck_repairs_a_wrong_step():
    """p_check_ok=0 (recipes/micro/pretrain_aha.yaml): "wait ," only ever follows a wrong step, and
    the step after it redoes the same column, right and never a copy of the step before."""
    task = tasks.TASKS["addition"]
    rng = random.Random(0)
    style = tasks.TraceStyle(p_step_error=0.2, p_drop_carry=0.2, p_fix_error=0.8, p_check_ok=0.0)
    rechecks = 0
    for problem in tasks.generate("addition", "train", 300, seed=4, levels=(2, 3)):
        parts = [p.strip() for p in task.reasoning(problem, rng, style)[0].split(",")]
        for i, part in enumerate(parts):
            if part != "wait":
                continue
            rechecks += 1
            (before_lhs, before), (lhs, after) = parts[i - 1].split("="), parts[i + 1].split("=")
            assert (before_lhs, before) != (lhs, after), parts  # never a copy of the step above
            assert before_lhs.split("+")[:2] == lhs.split("+")[:2], parts  # the same column
            assert evaluate_lhs(lhs) == int(after), parts  # the redone step is right
    assert rechecks > 50


def _pretrain_recipe(name: str):
    from pathlib import Path

    from r1lab.recipe import load_config
    from r1lab.stages.pretrain import PretrainConfig

    return load_config(PretrainConfig, str(Path(__file__).parent.parent / "recipes" / "micro" / name))


def test_aha_pretrain_recipe_changes_only_the_recheck_style():
    aha, base = _pretrain_recipe("pretrain_aha.yaml"), _pretrain_recipe("pretrain.yaml")
    assert (aha.style.p_fix_error, aha.style.p_check_ok) == (0.8, 0.0)
    assert dataclasses.replace(aha, style=base.style, output_dir=base.output_dir) == base


def test_recheck_recipe_rechecks_right_and_wrong_steps_alike():
    """recipes/micro/pretrain_recheck.yaml: "wait ," follows right steps as often as wrong ones, so
    the redone step can't be told from the step above it: it is always right, and a copy of the
    step above exactly when that one was right."""
    recheck, base = _pretrain_recipe("pretrain_recheck.yaml"), _pretrain_recipe("pretrain.yaml")
    assert dataclasses.replace(recheck, style=base.style, output_dir=base.output_dir) == base
    style = recheck.style
    assert style.p_fix_error == style.p_check_ok > 0
    task, rng = tasks.TASKS["addition"], random.Random(0)
    copies = repairs = 0
    for problem in tasks.generate("addition", "train", 400, seed=5, levels=(2, 3)):
        parts = [p.strip() for p in task.reasoning(problem, rng, style)[0].split(",")]
        for i in (i for i, part in enumerate(parts) if part == "wait"):
            lhs, after = parts[i + 1].split("=")
            assert evaluate_lhs(lhs) == int(after), parts
            before_lhs, before = parts[i - 1].split("=")
            right_before = evaluate_lhs(before_lhs) == int(before) and before_lhs == lhs
            copies += right_before
            repairs += not right_before
            assert (parts[i - 1] == parts[i + 1]) == right_before, parts
    assert copies > 50 and repairs > 20

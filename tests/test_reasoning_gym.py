"""reasoning-gym tasks as a data source, scored by reasoning-gym's own verifiers."""

import pytest

pytest.importorskip("reasoning_gym")

from r1lab.cli import main as cli_main  # noqa: E402
from r1lab.errors import R1labError  # noqa: E402
from r1lab.files import read_jsonl  # noqa: E402
from r1lab.problem_formats import read_problem_rows  # noqa: E402
from r1lab.rewards import load_reward  # noqa: E402

SPEC = "reasoning_gym:basic_arithmetic,leg_counting"


def test_rows_are_seeded_and_held_out_rows_differ():
    train = read_problem_rows(SPEC, "train", size=3, seed=0)
    assert [r["task"] for r in train] == ["basic_arithmetic"] * 3 + ["leg_counting"] * 3
    assert read_problem_rows(SPEC, "train", size=3, seed=0) == train
    held_out = read_problem_rows(SPEC, "test", size=3, seed=0)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held_out}
    with pytest.raises(R1labError, match="reasoning-gym has no task 'nosuch'"):
        read_problem_rows("reasoning_gym:nosuch", size=1)


def test_reward_is_reasoning_gyms_own_score():
    rows = read_problem_rows(SPEC, "train", size=2, seed=0)
    reward = load_reward("reasoning_gym")
    right = [f"<think> ... </think> <answer>{r['answer']}</answer>" for r in rows]
    wrong = ["<answer>not it</answer>", "no tags at all", *right[2:]]
    entries = [r["reasoning_gym_entry"] for r in rows]
    assert reward(right, reasoning_gym_entry=entries) == [1.0] * 4
    assert reward(wrong, reasoning_gym_entry=entries) == [0.0, 0.0, 1.0, 1.0]
    assert reward(["<answer>3</answer>"], answer=["3"]) == [None]  # not a reasoning-gym row


def test_grpo_trains_on_reasoning_gym_and_logs_its_reward(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert cli_main(["grpo", f"model={tiny_model_dir}", f"data.train={SPEC}", f"data.eval={SPEC}",
                     "data.num_train=4", "data.num_eval=2", "rewards=[reasoning_gym,format]", f"output_dir={out}",
                     "template=r1_zero", "num_generations=4", "prompts_per_step=2", "max_new_tokens=8", "beta=0",
                     "eval_every=0", "eval_k=2", "progress=false", "threads=1", "max_steps=2"]) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert all(0.0 <= r["reward/reasoning_gym"] <= 1.0 for r in rows[1:])
    assert "eval/basic_arithmetic/pass@1" in rows[-1] and "eval/leg_counting/pass@1" in rows[-1]


def test_evaluation_judges_with_reasoning_gyms_scorer():
    from r1lab.evaluation.evaluate import judge
    from r1lab.sampling.generate import Completion

    row = {**read_problem_rows("reasoning_gym:leg_counting", "test", size=1, seed=0)[0]}
    right = Completion(prompt_index=0, text=f"<think> count </think> <answer>{row['answer']}</answer>", token_ids=(1,),
                       logprobs=(0.0,), finish_reason="stop")
    wrong = Completion(prompt_index=0, text="<think> count </think> <answer>-1</answer>", token_ids=(1,),
                       logprobs=(0.0,), finish_reason="stop")
    assert judge(row, right)["correct"] and not judge(row, wrong)["correct"]

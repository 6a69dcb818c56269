"""TRL's reward signature: prompts, completion_ids, trainer_state, conversations, async, classes, failures."""

import asyncio

import pytest

from r1lab.errors import R1labError
from r1lab.rewards import FailurePolicy, RewardInputs, TrainerState, combine_rewards, load_reward
from r1lab.rewards.calling import reward_arguments

COMPLETIONS = ["<think> a </think> <answer>4</answer>", "no answer"]


def trl_reward(prompts, completions, completion_ids, trainer_state, **kwargs):
    """Written for TRL: reads every argument TRL passes."""
    return [len(ids) + trainer_state.global_step / 100 + (1.0 if p.startswith("Q") else 0.0) + len(kwargs["answer"][i])
            for i, (p, ids) in enumerate(zip(prompts, completion_ids))]


def test_trl_reward_gets_prompts_ids_state_and_columns():
    inputs = RewardInputs(prompts=["Q1", "x"], completion_ids=[[1, 2, 3], [4]],
                          trainer_state=TrainerState(global_step=7, max_steps=10, epoch=0.5))
    total, per_fn = combine_rewards([trl_reward], None, COMPLETIONS, inputs=inputs, answer=["4", "45"])
    # 3 ids + 0.07 + 1 (prompt starts with Q) + len("4"); 1 id + 0.07 + 0 + len("45")
    assert total == pytest.approx([5.07, 3.07])
    assert per_fn == {"trl_reward": total}


def test_conversational_prompts_get_message_completions():
    seen = {}

    def chat_reward(completions, prompts, **kwargs):
        seen["completions"], seen["prompts"] = completions, prompts
        return [1.0 if "<answer>" in c[0]["content"] else 0.0 for c in completions]

    prompts = [[{"role": "user", "content": "2+2?"}]] * 2
    total, _ = combine_rewards([chat_reward], None, COMPLETIONS,
                               inputs=RewardInputs(prompts=prompts))
    assert total == [1.0, 0.0]
    assert seen["completions"][0] == [{"role": "assistant", "content": COMPLETIONS[0]}]
    # r1lab's own rewards read message completions too
    total, _ = combine_rewards([load_reward("format")], None, COMPLETIONS, inputs=RewardInputs(prompts=prompts))
    assert total == [1.0, 0.0]


def test_async_reward_is_awaited_and_none_is_kept():
    async def slow(completions, **kwargs):
        await asyncio.sleep(0)
        return [None if "<answer>" not in c else 2.0 for c in completions]

    total, per_fn = combine_rewards([slow], [0.5], COMPLETIONS)
    assert total == [1.0, 0.0] and per_fn["slow"] == [2.0, None]


def test_arguments_follow_the_signature():
    inputs = RewardInputs(prompts=["p"], completion_ids=[[1]], trainer_state=TrainerState(1, 2))

    def narrow(texts, answer):  # no **kwargs, first parameter not named completions
        return texts

    args, kwargs = reward_arguments(narrow, ["c"], {"answer": ["4"], "task": ["t"]}, inputs)
    assert args == (["c"],) and kwargs == {"answer": ["4"]}
    args, kwargs = reward_arguments(trl_reward, ["c"], {"answer": ["4"]}, inputs)
    assert args == () and set(kwargs) == {"answer", "completions", "prompts", "completion_ids", "trainer_state"}


def test_reward_class_is_set_up_once(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(
        "SETUPS = []\n"
        "class LengthReward:\n"
        "    def __init__(self):\n"
        "        SETUPS.append(1)\n"
        "        self.scale = 0.5\n"
        "    def __call__(self, completions, **kwargs):\n"
        "        return [self.scale * len(c) for c in completions]\n")
    fn = load_reward(f"{path}:LengthReward")
    assert combine_rewards([fn], None, ["ab", "abcd"])[0] == [1.0, 2.0]
    assert combine_rewards([fn], None, ["ab"])[1] == {"LengthReward": [1.0]}
    import sys
    module = next(m for name, m in sys.modules.items() if name.startswith("r1lab_user_reward_")
                  and getattr(m, "LengthReward", None) is type(fn))
    assert module.SETUPS == [1]


def test_skip_policy_stops_after_n_failures_in_a_row(caplog):
    calls = []

    def flaky(completions, **kwargs):
        calls.append(1)
        if len(calls) in (1, 3, 4):
            raise RuntimeError(f"call {len(calls)}")
        return [1.0] * len(completions)

    policy = FailurePolicy("skip", max_failures=2)
    assert combine_rewards([flaky], None, ["a"], failures=policy)[1]["flaky"] == [None]  # 1 in a row
    assert combine_rewards([flaky], None, ["a"], failures=policy)[1]["flaky"] == [1.0]  # reset
    assert combine_rewards([flaky], None, ["a"], failures=policy)[1]["flaky"] == [None]  # 1 in a row
    with pytest.raises(RuntimeError, match="call 4") as excinfo:  # 2 in a row: stop
        combine_rewards([flaky], None, ["a"], failures=policy)
    assert "2 failed calls in a row" in excinfo.value.__notes__[0]
    with pytest.raises(R1labError, match="reward_failures"):
        FailurePolicy("ignore")


def test_the_docs_trl_reward_example_runs_unchanged():
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "your_model.md").read_text()
    code = doc.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(code, "your_model.md", "exec"), namespace)
    inputs = RewardInputs(prompts=["q", "q"], completion_ids=[[1] * 10, [1] * 20],
                          trainer_state=TrainerState(global_step=5, max_steps=10))
    total, _ = combine_rewards([namespace["short_and_right"]], None, ["so 72", "maybe 71"], inputs=inputs,
                               answer=["72", "72"])
    assert total == pytest.approx([1 - 0.001 * 0.5 * 10, -0.001 * 0.5 * 20])

"""End-to-end GRPO runs on a tiny random HF model and a user's JSONL, including kill and resume."""

import os
import signal
import subprocess
import sys
import time

import pytest
from transformers import AutoModelForCausalLM

from r1lab.cli import main as cli_main
from r1lab.files import read_jsonl

TIMING_KEYS = {"step_time", "rollout_s", "train_s", "tokens_per_s", "peak_memory_mb"}


def _args(model, data, out, *extra):
    return [f"model={model}", f"data.train={data}", f"output_dir={out}", "template=micro", "num_generations=4",
            "prompts_per_step=2", "max_new_tokens=12", "beta=0.04", "learning_rate=1e-3", "warmup_steps=1",
            "eval_every=0", "sample_every=1", "progress=false", "threads=1", *extra]


def test_grpo_trains_any_hf_folder_on_user_jsonl(tiny_model_dir, prompts_jsonl, tmp_path):
    out = tmp_path / "run"
    assert cli_main(["grpo", *_args(tiny_model_dir, prompts_jsonl, out, "max_steps=2", "num_iterations=2",
                                    "minibatches=2", "micro_batch_size=3")]) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for key in ["step_time", "rollout_s", "train_s", "tokens_per_s", "peak_memory_mb", "reward/mean", "reward/std",
                "reward/accuracy", "reward/format", "accuracy", "zero_variance_groups", "completion_length/mean",
                "completion_length/max", "truncation_rate", "kl", "entropy", "clip/fraction", "clip/low", "clip/high",
                "reflection_rate", "grad_norm", "loss"]:
        assert key in rows[-1], key
    assert rows[0]["kl"] >= 0.0
    assert (out / "completions.jsonl").exists() and (out / "config.yaml").exists()
    AutoModelForCausalLM.from_pretrained(out / "final")


def test_grpo_bad_input_is_one_line_error(tiny_model_dir, prompts_jsonl, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "answer": "1"}\n{"prompt": "", "answer": "2"}\n')
    assert cli_main(["grpo", *_args(tiny_model_dir, bad, tmp_path / "r", "max_steps=1")]) == 2
    assert "bad.jsonl: row 2 column 'prompt': empty prompt" in capsys.readouterr().err
    assert cli_main(["grpo", *_args(tiny_model_dir, prompts_jsonl, tmp_path / "r", "rewards=[nosuch]")]) == 2
    assert "nosuch" in capsys.readouterr().err.splitlines()[-1]
    assert cli_main(["grpo", *_args(tmp_path / "nomodel", prompts_jsonl, tmp_path / "r")]) == 2
    assert "nomodel: model folder not found" in capsys.readouterr().err


def _run(args, env=None):
    return subprocess.Popen([sys.executable, "-m", "r1lab.cli", "grpo", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _comparable(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def test_killed_run_resumes_to_the_same_metrics(tiny_model_dir, prompts_jsonl, tmp_path):
    steps = ["max_steps=6", "save_every=2", "max_new_tokens=24"]
    straight = tmp_path / "straight"
    assert _run(_args(tiny_model_dir, prompts_jsonl, straight, *steps)).wait(timeout=300) == 0

    killed = tmp_path / "killed"
    proc = _run(_args(tiny_model_dir, prompts_jsonl, killed, *steps))
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-000002" / "trainer_state.json").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists(), "the run finished before it could be killed"

    assert _run(_args(tiny_model_dir, prompts_jsonl, killed, *steps, "resume=true")).wait(timeout=300) == 0
    a, b = read_jsonl(straight / "metrics.jsonl"), read_jsonl(killed / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert _comparable(a) == _comparable(b)


def test_reward_from_step_adds_a_reward_later(tiny_model_dir, prompts_jsonl, tmp_path):
    rewards = tmp_path / "const.py"
    rewards.write_text("def one(completions, **kw):\n    return [1.0] * len(completions)\n\n"
                       "def two(completions, **kw):\n    return [2.0] * len(completions)\n")
    out = tmp_path / "run"
    assert cli_main(["grpo", *_args(tiny_model_dir, prompts_jsonl, out, "max_steps=3", "beta=0",
                                    f"rewards=[{rewards}:one,{rewards}:two]", "reward_from_step=[1,3]")]) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["reward/mean"] for r in rows] == [1.0, 1.0, 3.0]  # `two` counts from step 3 on
    assert all(r["reward/two"] == 2.0 for r in rows)  # and is logged before it counts


def test_weights_at():
    from r1lab.grpo.config import GRPOConfig

    config = GRPOConfig(rewards=("a", "b", "c"), reward_weights=(1.0, 0.5, 2.0), reward_from_step=(1, 5, 10))
    assert [config.weights_at(s) for s in (1, 4, 5, 10)] == [(1.0, 0.0, 0.0), (1.0, 0.0, 0.0), (1.0, 0.5, 0.0),
                                                            (1.0, 0.5, 2.0)]
    assert GRPOConfig(rewards=("a", "b")).weights_at(1) == (1.0, 1.0)
    with pytest.raises(ValueError, match="reward_from_step has 1 entries for 2 rewards"):
        GRPOConfig(rewards=("a", "b"), reward_from_step=(3,))


@pytest.mark.parametrize("variant", [
    ("loss_type=gspo", "eps_low=0.0003", "eps_high=0.0004", "advantage=rloo"),
    ("loss_type=cispo", "eps_low=1.0", "eps_high=0.28", "advantage=pass_at_k", "pass_k=2"),
    ("loss_type=dr_grpo", "advantage=reinforce_pp", "entropy_coef=0.01", "entropy_control=kl_cov",
     "kl_cov_ratio=0.5"),
])
def test_grpo_variants_run_and_log_entropy(tiny_model_dir, prompts_jsonl, tmp_path, variant):
    out = tmp_path / "run"
    assert cli_main(["grpo", *_args(tiny_model_dir, prompts_jsonl, out, "max_steps=2", "minibatches=2",
                                    *variant)]) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    # the exact entropy of a random 512-token micro model is near ln 512 = 6.24; the sampled estimate agrees
    for row in rows:
        assert 4.0 < row["entropy"] < 6.3 and abs(row["entropy"] - row["entropy/sampled"]) < 0.5, row
    if "entropy_control=kl_cov" in variant:  # the second minibatch is off-policy: the penalty is on
        assert all(row["kl_cov"] > 0 for row in rows)

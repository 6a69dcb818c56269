"""max_off_policy_steps=1: the next step is sampled in a thread while this one trains."""

import shutil

import pytest
import torch

from r1lab.cli import main as cli_main
from r1lab.errors import R1labError
from r1lab.files import read_jsonl
from r1lab.grpo.config import GRPOConfig
from r1lab.recipe import load_config

TIMING_KEYS = {"step_time", "rollout_s", "train_s", "tokens_per_s", "peak_memory_mb"}


def _args(model, data, out, *extra):
    reward = data.parent / "length_reward.py"
    reward.write_text("def length(completions, **kwargs):\n    return [len(c) / 40 for c in completions]\n")
    return ["grpo", f"model={model}", f"data.train={data}", f"output_dir={out}", "template=micro",
            f"rewards=[{reward}:length]",
            "num_generations=4", "prompts_per_step=2", "max_new_tokens=12", "learning_rate=3e-3", "warmup_steps=0",
            "beta=0.04", "eval_every=0", "sample_every=0", "progress=false", "threads=1", "max_steps=6",
            "save_every=3", "keep_checkpoints=0", "max_off_policy_steps=1", *extra]


def _comparable(run):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_jsonl(run / "metrics.jsonl")]


@pytest.mark.parametrize("keys, message", [
    (["max_off_policy_steps=2"], "must be 0 or 1"),
    (["max_off_policy_steps=1", "rollout_backend=vllm"], "needs rollout_backend=native"),
    (["max_off_policy_steps=1", "sharding=fsdp"], "needs rollout_backend=native and sharding=ddp"),
])
def test_overlap_settings_are_checked(keys, message):
    with pytest.raises(R1labError, match=message):
        load_config(GRPOConfig, None, ["data.tasks=[addition]", *keys])


def test_samples_ahead_one_update_old_and_resumes_exactly(tiny_model_dir, prompts_jsonl, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert cli_main(_args(tiny_model_dir, prompts_jsonl, straight)) == 0
    rows = _comparable(straight)
    # steps 1 and 4 sample from the current weights (the first step; the one after the step-3
    # checkpoint), the others from weights one update old: the importance correction sees it
    diffs = [r["vllm/logp_diff_mean"] for r in rows]
    assert all(diffs[i] < 1e-5 for i in (0, 3)), diffs
    assert all(diffs[i] > 1e-3 for i in (1, 2, 4, 5)), diffs

    assert cli_main(_args(tiny_model_dir, prompts_jsonl, killed)) == 0
    assert _comparable(killed) == rows  # the thread changes nothing between identical runs
    for lost in ("checkpoints/step-000006", "final"):  # as if killed after the step-3 checkpoint
        shutil.rmtree(killed / lost)
    assert cli_main(_args(tiny_model_dir, prompts_jsonl, killed, "resume=true")) == 0
    assert _comparable(killed) == rows
    from safetensors.torch import load_file

    a, b = load_file(straight / "final" / "model.safetensors"), load_file(killed / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)

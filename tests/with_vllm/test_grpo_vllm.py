"""`r1lab grpo rollout_backend=vllm` end to end on vLLM's CPU build, in one process and under
torchrun with two gloo processes (each with its own engine): `make test-vllm` (.venv-vllm)."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("vllm", reason="needs vLLM: `make test-vllm` runs these in .venv-vllm")

from r1lab import cli  # noqa: E402
from r1lab.files import write_jsonl  # noqa: E402

MISMATCH = ("vllm/logp_diff_mean", "vllm/logp_diff_max", "vllm/is_capped_fraction")
RUN = ["template=micro", "num_generations=4", "prompts_per_step=4", "max_new_tokens=12", "beta=0.04",
       "learning_rate=1e-3", "warmup_steps=1", "minibatches=2", "max_steps=2", "eval_every=0", "data.num_eval=2",
       "eval_k=2", "progress=false", "threads=1", "rollout_backend=vllm", "vllm_enforce_eager=true",
       "vllm_max_model_len=256", "vllm_dtype=float32"]


@pytest.fixture(scope="module")
def run_args(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("grpo_vllm")
    write_jsonl(root / "train.jsonl", [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(6) for b in (1, 2)])
    write_jsonl(root / "eval.jsonl", [{"prompt": f"{a}+3=", "answer": str(a + 3)} for a in range(2)])
    return lambda out: ["grpo", f"model={tiny_model_dir}", f"data.train={root / 'train.jsonl'}",
                        f"data.eval={root / 'eval.jsonl'}", f"output_dir={out}", *RUN]


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_process(run_args, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    assert cli.main(run_args(out)) == 0
    return metrics(out)


def test_grpo_with_vllm_logs_the_mismatch(one_process):
    steps = [row for row in one_process if row["step"] > 0]
    assert len(steps) == 2
    for row in steps:
        assert set(MISMATCH) <= row.keys()
        # fp32 on both sides: the same model, other kernels
        assert 0 <= row["vllm/logp_diff_mean"] <= row["vllm/logp_diff_max"] < 1e-3
        assert row["vllm/is_capped_fraction"] == 0.0
        assert row["ratio"] == pytest.approx(1.0, abs=1e-3)  # old log-probs are the trainer's


def test_grpo_with_vllm_under_torchrun_samples_what_one_process_samples(run_args, one_process, tmp_path):
    out = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              "-m", "r1lab.cli", *run_args(out)]
    result = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=500)
    assert result.returncode == 0, result.stderr[-3000:]
    two = metrics(out)
    # each process sampled its 2 prompts with its own engine, from each group's own seed: the
    # first step's completions are the one-process run's (later steps differ by float rounding)
    for key in ("reward/mean", "completion_length/mean", "entropy"):
        assert two[1][key] == pytest.approx(one_process[1][key], rel=1e-4), key
    assert set(MISMATCH) <= two[1].keys()

"""A GRPO run killed at random moments (SIGKILL, including mid-save) always resumes, and ends
exactly where an unbroken run ends: the same metrics.jsonl and the same final weights.

The runs are forked from a fork server that has imported torch and r1lab once, so a restart costs
no import time and inherits none of the test process's threads (a fork of a process with threads
can deadlock in the child); a SIGKILL is the same for a forked process as for any other."""

import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from r1lab.training.checkpoint import latest_checkpoint, list_checkpoints
from r1lab.cli import main as cli_main
from r1lab.files import read_jsonl

TIMING_KEYS = {"step_time", "rollout_s", "train_s", "tokens_per_s", "peak_memory_mb"}
STEPS = 8


def grpo_args(model, data, out, *extra):
    """A tiny run that saves every step and refreshes its reference every 2 (both get killed mid-write)."""
    return ["grpo", f"model={model}", f"data.train={data}", f"output_dir={out}", "template=micro",
            "num_generations=4", "prompts_per_step=2", "max_new_tokens=12", "beta=0.04", "learning_rate=1e-3",
            "warmup_steps=1", "eval_every=0", "sample_every=1", "progress=false", "threads=1", f"max_steps={STEPS}",
            "save_every=1", "ref_update_every=2", "keep_checkpoints=2", *extra]


def _child(args):
    os._exit(cli_main(args))


_FORKSERVER = multiprocessing.get_context("forkserver")
_FORKSERVER.set_forkserver_preload(["torch", "transformers", "matplotlib.figure", "r1lab.cli", "r1lab.grpo.train"])


def start(args) -> multiprocessing.Process:
    """A forked run, daemonic: one a failing test leaves behind can't keep pytest from exiting."""
    proc = _FORKSERVER.Process(target=_child, args=(args,), daemon=True)
    proc.start()
    return proc


@pytest.fixture(autouse=True)
def no_run_outlives_its_test():
    yield
    for proc in multiprocessing.active_children():
        proc.kill()
        proc.join()


def comparable(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def _saving(out: Path) -> bool:
    """A checkpoint or reference snapshot is being written (its temporary folder exists)."""
    for sub in ("checkpoints", "reference"):
        try:
            if any(name.endswith(".tmp") for name in os.listdir(out / sub)):
                return True
        except FileNotFoundError:
            pass
    return False


def kill_at(proc, out: Path, rng: random.Random, during_save: bool, budget_s: float) -> bool:
    """SIGKILL `proc` after a random delay, or a random instant into a save; True if it was saving then."""
    deadline = time.time() + (budget_s if during_save else rng.uniform(0.0, budget_s))
    while time.time() < deadline and proc.is_alive():
        if during_save and _saving(out):
            time.sleep(rng.uniform(0.0, 0.02))
            break
        time.sleep(0.001)
    saving = _saving(out)
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    return saving


@pytest.mark.slow
def test_killed_at_random_moments_the_run_always_resumes_to_the_unbroken_result(tiny_model_dir, prompts_jsonl,
                                                                                 tmp_path):
    straight = tmp_path / "straight"
    warm_up = _FORKSERVER.Process(target=int)  # the fork server starts and imports once, untimed
    warm_up.start()
    warm_up.join()
    t0 = time.time()
    unbroken = start(grpo_args(tiny_model_dir, prompts_jsonl, straight))  # started as the killed runs are
    unbroken.join()
    run_s = time.time() - t0
    assert unbroken.exitcode == 0

    out, rng = tmp_path / "killed", random.Random(0)
    kills, mid_save, exits = 0, 0, []
    for attempt in range(12):
        proc = start(grpo_args(tiny_model_dir, prompts_jsonl, out, "resume=true"))
        saving = kill_at(proc, out, rng, during_save=attempt % 2 == 1, budget_s=run_s / 3)
        exits.append(proc.exitcode)
        if proc.exitcode == -signal.SIGKILL:
            kills += 1
            mid_save += saving
        else:
            assert proc.exitcode == 0, f"attempt {attempt}: the run failed to resume (exit {proc.exitcode})"
            break
        if list_checkpoints(out):  # what a killed run left loads as a checkpoint folder
            assert (latest_checkpoint(out) / "trainer_state.json").is_file()
    else:
        assert cli_main(grpo_args(tiny_model_dir, prompts_jsonl, out, "resume=true")) == 0
    assert kills >= 5 and mid_save >= 2, (exits, mid_save)
    print(f"exits of the killed run's attempts: {exits} ({mid_save} kills mid-save); unbroken run: {run_s:.1f} s")

    assert comparable(read_jsonl(straight / "metrics.jsonl")) == comparable(read_jsonl(out / "metrics.jsonl"))
    a, b = weights(straight / "final"), weights(out / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    leftovers = [p for p in out.rglob("*") if p.name.endswith((".tmp", ".old"))]
    assert leftovers == [], leftovers


@pytest.mark.slow
def test_ctrl_c_stops_promptly_and_the_run_resumes(tiny_model_dir, prompts_jsonl, tmp_path):
    out = tmp_path / "run"
    proc = start(grpo_args(tiny_model_dir, prompts_jsonl, out))
    deadline = time.time() + 120
    while not (out / "checkpoints" / "step-000003" / "trainer_state.json").exists():
        assert proc.is_alive() and time.time() < deadline
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGINT)
    sent = time.time()
    proc.join(30)
    assert proc.exitcode == 130 and time.time() - sent < 10  # cli: "interrupted", status 130
    assert not (out / "final").exists(), "the run finished before Ctrl-C"
    assert [p for p in out.rglob("*") if p.name.endswith((".tmp", ".old"))] == []  # nothing half-written
    newest = latest_checkpoint(out)
    assert newest is not None and newest.name >= "step-000003"

    assert cli_main(grpo_args(tiny_model_dir, prompts_jsonl, out, "resume=true")) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))

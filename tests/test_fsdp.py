"""GRPO with sharding=fsdp (FSDP2) on CPU with gloo: two processes make the one-process (unsharded)
updates, a run killed with SIGKILL resumes from its sharded checkpoint, at another world size too.

    pytest tests/test_fsdp.py        # ~2.5 min on 2 busy cores (three torchrun launches of 2)
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import test_distributed
from test_distributed import assert_close_weights, comparable, grpo_args, metrics, sft_args, weights

from r1lab import cli
from r1lab.training import fsdp
from r1lab.training.checkpoint import checkpoint_dir
from r1lab.errors import R1labError

grpo_data, setup = test_distributed.grpo_data, test_distributed.setup  # its fixtures, found here by name

# grpo_data's run (4 prompts x 3, dynamic sampling, unequal shares: some steps leave a process no
# rows, so it runs idle forwards) with a reference refresh at step 2, saved and reloaded sharded.
EXTRA = ["ref_update_every=2"]


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (torchrun's workers)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def running(pid: int) -> bool:
    """Whether `pid` is a live process (a killed one may linger as a zombie until it is reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def launch(args, nproc=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "r1lab.cli", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(proc):
    try:
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:  # leave no run behind: the launcher and its workers
        for pid in (*children(proc.pid), proc.pid):
            os.kill(pid, signal.SIGKILL)
        raise
    assert proc.returncode == 0, err[-3000:]


def assert_same_run(one, two):
    assert [m["step"] for m in two] == [m["step"] for m in one]
    for a, b in zip(one, two):
        assert a.keys() == b.keys()
        for key in a:  # rewards, lengths and eval equal; loss, kl and grad_norm up to float rounding
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)


def test_fsdp_two_processes_match_one_and_survive_kill(tiny_model_dir, grpo_data, tmp_path):
    single, sharded, killed = tmp_path / "single", tmp_path / "sharded", tmp_path / "killed"
    args = lambda out, *more: grpo_args(tiny_model_dir, grpo_data, out) + EXTRA + list(more)  # noqa: E731
    assert cli.main(args(single)) == 0  # one process, unsharded: the reference run
    one = comparable(metrics(single))

    finish(launch(args(sharded, "sharding=fsdp")))
    assert_same_run(one, comparable(metrics(sharded)))
    assert_close_weights(weights(single / "final"), weights(sharded / "final"), atol=2e-4)
    assert (sharded / "checkpoints" / "step-000002" / "sharded" / ".metadata").is_file()

    proc = launch(args(killed, "sharding=fsdp"))
    deadline = time.time() + 300
    while not (checkpoint_dir(killed, 2) / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.01)
    workers = children(proc.pid)
    assert len(workers) == 2
    for pid in (proc.pid, *workers):  # the launcher and both workers (own sessions), at once
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists(), "the run finished before it could be killed"
    time.sleep(1)
    assert not any(map(running, workers))
    again = tmp_path / "again"
    shutil.copytree(killed, again)

    # the 2-process shards resume in 1 process (resharded), and in 2, to where the straight run went
    assert cli.main(args(killed, "sharding=fsdp", "resume=true")) == 0
    finish(launch(args(again, "sharding=fsdp", "resume=true")))
    for out in (killed, again):
        assert_same_run(one, comparable(metrics(out)))
        assert_close_weights(weights(single / "final"), weights(out / "final"), atol=2e-4)


def test_sharded_and_unsharded_checkpoints_do_not_mix(tiny_model_dir, grpo_data, tmp_path):
    out = tmp_path / "run"
    assert cli.main(grpo_args(tiny_model_dir, grpo_data, out) + ["max_steps=2"]) == 0
    with pytest.raises(R1labError, match="written with sharding=ddp"):
        fsdp.load_sharded(checkpoint_dir(out, 2), None, None)
    assert cli.main(grpo_args(tiny_model_dir, grpo_data, out) + ["max_steps=3", "resume=true", "sharding=fsdp"]) == 2
    assert not torch.distributed.is_initialized()  # the group of one a plain FSDP run makes ends with it


def test_fsdp_settings_are_checked(tiny_model_dir, grpo_data, tmp_path, capsys):
    run = grpo_args(tiny_model_dir, grpo_data, tmp_path / "r")
    assert cli.main(run + ["sharding=zero3"]) == 2
    assert cli.main(run + ["fsdp_cpu_offload=true"]) == 2
    assert "fsdp_cpu_offload=true needs sharding=fsdp" in capsys.readouterr().err
    assert cli.main(run + ["sharding=fsdp", "fsdp_cpu_offload=true"]) == 2  # a CPU run: nothing to offload
    assert "on a CPU run they are there already" in capsys.readouterr().err


def test_tied_names_and_gradient_sum(tiny_model_dir):
    """Tied embeddings are written once; a sharded model in one process computes what it did unsharded."""
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert fsdp.tied_names(plain) == ["lm_head.weight"]
    try:
        _compare_sharded(plain, fsdp.shard(AutoModelForCausalLM.from_pretrained(tiny_model_dir)))
    finally:
        torch.distributed.destroy_process_group()  # shard's group of one


def _compare_sharded(plain, model):
    assert sum(map(fsdp.is_sharded, model.modules())) == plain.config.num_hidden_layers + 1  # layers, root
    ids = torch.tensor([[5, 9, 17, 30, 4]])
    for m in (plain, model):
        m(input_ids=ids).logits.float().logsumexp(-1).sum().backward()
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad.full_tensor(), q.grad, rtol=1e-5, atol=1e-6, msg=name)
    state = fsdp.full_state_dict(model)
    torch.testing.assert_close(state["model.norm.weight"], plain.model.norm.weight)


def test_sft_fsdp_two_processes_match_one_and_resume_with_one(setup, tmp_path):
    """test_distributed's SFT run (unequal shares, grad_accum=2, sharded eval), sharded."""
    single, double, resumed = tmp_path / "single", tmp_path / "double", tmp_path / "resumed"
    assert cli.main(sft_args(setup, single)) == 0
    finish(launch(sft_args(setup, double) + ["sharding=fsdp"]))
    one, two = metrics(single), metrics(double)
    assert [m["step"] for m in two] == [1, 2, 3]
    for a, b in zip(one, two):
        for key in ("loss", "eval_loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), key
    assert_close_weights(weights(single / "final"), weights(double / "final"))

    shutil.copytree(double, resumed)  # its step-2 shards, resumed by one process
    shutil.rmtree(checkpoint_dir(resumed, 3))
    assert cli.main(sft_args(setup, resumed) + ["sharding=fsdp", "resume=true"]) == 0
    assert metrics(resumed)[-1]["loss"] == pytest.approx(one[-1]["loss"], rel=1e-5)
    assert_close_weights(weights(single / "final"), weights(resumed / "final"))

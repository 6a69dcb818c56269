"""A process that dies or hangs ends the run with a one-line error; Ctrl-C leaves the last checkpoint intact."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta

import pytest

# Two ranks sum a tensor forever; each exits like the CLI does (one line, status 2) on an R1labError.
WORKER = textwrap.dedent("""
    import sys, time, types
    import torch
    import torch.distributed as dist
    from r1lab.training import distributed
    from r1lab.errors import R1labError

    @distributed.launched
    def stage(config):
        print("ready", flush=True)
        while True:
            distributed.all_reduce_sum(torch.ones(1))
            time.sleep(0.01)

    try:
        stage(types.SimpleNamespace(distributed_timeout_s=float(sys.argv[1])))
    except R1labError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_ranks(tmp_path, timeout_s: float) -> list[subprocess.Popen]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2",
           "PYTHONPATH": os.pathsep.join(sys.path)}
    return [subprocess.Popen([sys.executable, str(script), str(timeout_s)],
                             env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP])  # a rank that dies; one that hangs
def test_a_dead_or_hung_rank_ends_the_other_with_an_error(tmp_path, how):
    timeout_s = 10.0
    ranks = _start_ranks(tmp_path, timeout_s)
    try:
        for proc in ranks:  # both joined the group and ran a collective
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        time.sleep(0.5)
        os.kill(ranks[1].pid, how)
        started = time.time()
        code = ranks[0].wait(timeout=timeout_s + 60)
        waited = time.time() - started
        err = ranks[0].stderr.read()
    finally:
        for proc in ranks:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == 2, err
    assert waited < timeout_s + 30
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: rank 0 of 2: lost contact with the other processes"), err
    assert "distributed_timeout_s=10" in last


@pytest.mark.slow
def test_under_torchrun_a_killed_rank_ends_the_run_naming_it(tmp_path):
    script = tmp_path / "worker.py"
    # one write() per line: with `python -u` (torchrun's default) print() writes its pieces one by
    # one, and the two workers' "ready" lines interleaved into "readyready 0 PID" / " 1 PID"
    ready = 'sys.stdout.write(f"ready {os.environ[\'RANK\']} {os.getpid()}\\n")'
    script.write_text(WORKER.replace('print("ready", flush=True)', ready)
                      .replace("import sys, time, types", "import os, sys, time, types"))
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    proc = subprocess.Popen([torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()), str(script), "10"],
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        pids, other = {}, []  # rank -> pid, from the workers' "ready RANK PID" lines
        deadline = threading.Timer(120, lambda: os.killpg(proc.pid, signal.SIGKILL))  # never hang on a read
        deadline.start()
        while len(pids) < 2 and (line := proc.stdout.readline()):
            words = line.split()
            if len(words) == 3 and words[0] == "ready":
                pids[words[1]] = words[2]
            else:
                other.append(line)
        deadline.cancel()
        assert len(pids) == 2, (other, proc.stderr.read() if proc.poll() is not None else "")
        time.sleep(0.5)
        os.kill(int(pids["1"]), signal.SIGKILL)
        started = time.time()
        code = proc.wait(timeout=70)
        waited = time.time() - started
    finally:  # torchrun and its workers (each in a session of its own): none may outlive the test
        for pid in [proc.pid, *map(int, pids.values())]:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
    err = proc.stderr.read()
    assert code != 0 and waited < 40, err
    assert "failed (exitcode: -9) local_rank: 1" in err, err  # torchrun names the dead rank


@pytest.mark.parametrize("command", ["grpo", "sft", "pretrain", "reward-model"])
def test_every_torchrun_stage_passes_its_timeout_to_the_process_group(command, monkeypatch):
    import importlib

    import torch.distributed as dist

    from r1lab.training import distributed
    from r1lab.cli import COMMANDS
    from r1lab.recipe import load_config

    module, name, _ = COMMANDS[command]
    module = importlib.import_module(module)
    config = load_config(getattr(module, name), None, ["distributed_timeout_s=42"])
    seen = {}

    class Joined(Exception):
        pass

    def init_process_group(backend, timeout):
        seen.update(backend=backend, timeout=timeout)
        raise Joined

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)  # as in a fresh torchrun worker
    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    monkeypatch.setattr(distributed.torch.cuda, "is_available", lambda: False)
    with pytest.raises(Joined):
        module.main(config)
    assert seen == {"backend": "gloo", "timeout": timedelta(seconds=42)}

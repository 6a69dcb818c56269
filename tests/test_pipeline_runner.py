"""r1lab.pipeline.runner: which stage starts when, and the worker processes (logs, times, failures)."""

import os
import signal
import threading
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest

from r1lab.pipeline import runner
from r1lab.errors import R1labError
from r1lab.files import write_text
from r1lab.pipeline.runner import Stage


def noop():
    pass


def test_next_stage_follows_needs_and_list_order():
    plan = [Stage("a", noop), Stage("b", noop, needs=("a",)), Stage("c", noop), Stage("d", noop, needs=("b", "c"))]
    assert runner.next_stage(plan, done=set(), running=set()).name == "a"
    assert runner.next_stage(plan, done=set(), running={"a"}).name == "c"  # b waits for a
    assert runner.next_stage(plan, done={"a"}, running={"c"}).name == "b"
    assert runner.next_stage(plan, done={"a"}, running={"b", "c"}) is None  # d waits for both
    assert runner.next_stage(plan, done={"a", "b", "c"}, running=set()).name == "d"
    assert runner.next_stage(plan, done={"a", "b", "c", "d"}, running=set()) is None


def test_wide_stage_runs_alone():
    plan = [Stage("side", noop), Stage("wide", noop, wide=True), Stage("after", noop)]
    assert runner.next_stage(plan, done=set(), running={"side"}) is None  # wide waits; nothing jumps it
    assert runner.next_stage(plan, done={"side"}, running=set()).name == "wide"
    assert runner.next_stage(plan, done={"side"}, running={"wide"}) is None  # nothing beside it


def test_check_plan_rejects_bad_plans():
    with pytest.raises(R1labError, match="'b' needs \\['c'\\]"):
        runner.check_plan([Stage("a", noop), Stage("b", noop, needs=("c",)), Stage("c", noop)])
    with pytest.raises(R1labError, match="listed twice"):
        runner.check_plan([Stage("a", noop), Stage("a", noop)])


def test_two_workers_run_every_stage_and_log_it(tmp_path, capsys):
    # write_text is a module-level r1lab function, so the spawned workers can unpickle it
    plan = [Stage("one", write_text, (tmp_path / "1.txt", "1")),
            Stage("two", write_text, (tmp_path / "2.txt", "2"), needs=("one",)),
            Stage("eval/three", write_text, (tmp_path / "3.txt", "3"))]
    finished = []
    runner.run(plan, workers=2, threads=1, log_dir=tmp_path / "logs", on_done=lambda n, s: finished.append(n))
    assert [(tmp_path / f"{i}.txt").read_text() for i in (1, 2, 3)] == ["1", "2", "3"]
    assert sorted(finished) == ["eval/three", "one", "two"] and finished.index("one") < finished.index("two")
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["eval_three.log", "one.log", "two.log"]
    assert "two: done in" in capsys.readouterr().out


def test_failed_stage_names_itself_and_its_log(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    plan = [Stage("ok", write_text, (tmp_path / "ok.txt", "ok")),
            Stage("broken", write_text, (tmp_path / "file" / "x.txt", "x"), needs=("ok",)),
            Stage("never", write_text, (tmp_path / "never.txt", "n"), needs=("broken",))]
    with pytest.raises(R1labError, match=r"stage broken failed: .*\(log .*broken\.log\)"):
        runner.run(plan, workers=2, threads=1, log_dir=tmp_path / "logs", on_done=lambda n, s: None)
    assert (tmp_path / "ok.txt").is_file() and not (tmp_path / "never.txt").exists()
    assert "Traceback" in (tmp_path / "logs" / "broken.log").read_text()


def test_one_worker_runs_in_list_order_here(tmp_path):
    order = []
    plan = [Stage("a", order.append, ("a",)), Stage("b", order.append, ("b",)), Stage("c", order.append, ("c",))]
    runner.run(plan, workers=1, threads=1, log_dir=tmp_path, on_done=lambda n, s: None)
    assert order == ["a", "b", "c"]  # in this process: a lambda or bound method is fine


def _stage_workers() -> list[int]:
    """Pids of this process's spawned stage workers (not multiprocessing's resource tracker)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and b"spawn_main" in cmdline:
            pids.append(int(entry))
    return pids


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_dead_worker_stops_the_run_naming_its_stage(tmp_path, sig):
    # "sleeper" would run for 10 minutes: the run must notice its worker died, not wait for it
    plan = [Stage("sleeper", time.sleep, (600,)), Stage("after", write_text, (tmp_path / "a.txt", "a"),
                                                     needs=("sleeper",))]

    def kill_the_worker():
        deadline = time.time() + 60
        while not (pids := _stage_workers()) and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        os.kill(pids[0], sig)

    killer = threading.Thread(target=kill_the_worker)
    killer.start()
    started = time.time()
    with pytest.raises(R1labError, match=rf"stage sleeper failed: its worker process died \(killed by {sig.name}\)"):
        runner.run(plan, workers=2, threads=1, log_dir=tmp_path / "logs", on_done=lambda n, s: None)
    killer.join()
    assert time.time() - started < 120 and not (tmp_path / "a.txt").exists() and _stage_workers() == []


def test_a_failure_stops_the_other_running_stage(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    plan = [Stage("sleeper", time.sleep, (600,)), Stage("broken", write_text, (tmp_path / "file" / "x", "x"))]
    started = time.time()
    with pytest.raises(R1labError, match=r"stage broken failed: .*stopped \['sleeper'\]"):
        runner.run(plan, workers=2, threads=1, log_dir=tmp_path / "logs", on_done=lambda n, s: None)
    assert time.time() - started < 120 and _stage_workers() == []  # the sleeper was stopped, the others ended

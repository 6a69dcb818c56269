"""Run a pipeline's stages on N worker processes, each as soon as the stages it needs are done.

    stages = [Stage("base", pretrain_base, (config,), wide=True),
              Stage("r1_zero", run_grpo, (rl, base, out), needs=("base",)),
              Stage("student_base", pretrain_student, (config,))]
    schedule.run(stages, workers=2, threads=1, log_dir=root / "logs", on_done=clock.record)

Why: on the 2-core development machine a process with one torch thread runs at full speed beside
another one, while one process with two threads ran at a third of the speed (pipeline/graph.py). So the
stages that don't wait on each other (the student's pretraining, the reward models, the
evaluations) run in a second process beside the chain base -> R1-Zero -> ... -> R1.

The rules: a free worker takes the first stage, in list order, whose needs are all done (so list
the longest chain first); a `wide` stage starts its own processes (torchrun over every core) and
runs alone, in this process. With one worker the stages run in list order in this process and
print to the console; with more, each stage prints to ``log_dir/<name>.log`` and the console shows
when it starts and ends. A failed stage stops the run: the other running stage is killed (stages
write checkpoints atomically, so a rerun resumes it) and the error names the stage and its log.
Each stage runs in a process of its own; the scheduler sleeps until one of them exits (it does not
poll), so a worker that dies (killed, out of memory) is noticed at once and named in the error.
Ctrl-C stops the workers too.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import time
import traceback
from multiprocessing.connection import wait
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1lab.errors import R1labError


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[..., Any]  # a module-level function: it is pickled to a worker process
    args: tuple = ()
    needs: tuple[str, ...] = ()
    wide: bool = False  # it launches processes on every core itself: nothing runs beside it


def check_plan(stages: Sequence[Stage]) -> None:
    """Names unique; every need names a stage listed earlier (so the list order is a valid order)."""
    seen: set[str] = set()
    for stage in stages:
        if stage.name in seen:
            raise R1labError(f"stage '{stage.name}' is listed twice")
        missing = [need for need in stage.needs if need not in seen]
        if missing:
            raise R1labError(f"stage '{stage.name}' needs {missing}, which are not listed before it")
        seen.add(stage.name)


def next_stage(stages: Sequence[Stage], done: set[str], running: set[str]) -> Stage | None:
    """The stage a free worker starts now: the first not started whose needs are done; None to wait.

    A wide stage starts only when nothing runs, and nothing starts beside it.

    >>> plan = [Stage("a", print), Stage("b", print, needs=("a",)), Stage("c", print)]
    >>> next_stage(plan, done=set(), running={"a"}).name
    'c'
    """
    if any(stage.wide for stage in stages if stage.name in running):
        return None
    for stage in stages:
        if stage.name in done or stage.name in running or not all(need in done for need in stage.needs):
            continue
        return None if stage.wide and running else stage
    return None


def run(stages: Sequence[Stage], workers: int, threads: int, log_dir: Path,
        on_done: Callable[[str, float], None]) -> None:
    """Run every stage once; `on_done(name, seconds)` after each (in this process)."""
    check_plan(stages)
    if workers <= 1:
        for stage in stages:
            on_done(stage.name, _timed(stage))
        return
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def say(text: str) -> None:
        minutes, seconds = divmod(int(time.perf_counter() - started), 60)
        print(f"[{minutes:02d}:{seconds:02d}] {text}", flush=True)

    context = multiprocessing.get_context("spawn")  # fork after torch has threads can deadlock
    done: set[str] = set()
    running: dict[str, _Worker] = {}
    idle: list[_Worker] = []
    try:
        while len(done) < len(stages):
            while len(running) < workers and (stage := next_stage(stages, done, set(running))) is not None:
                if stage.wide:
                    say(f"{stage.name}: started, on every core")
                    seconds = _timed(stage)
                    done.add(stage.name)
                    on_done(stage.name, seconds)
                    say(f"{stage.name}: done in {seconds:.0f} s")
                    continue
                log = log_dir / f"{stage.name.replace('/', '_')}.log"
                say(f"{stage.name}: started (log {log})")
                idle = [w for w in idle if w.process.is_alive()]  # one that died idle is not reused
                running[stage.name] = idle.pop() if idle else _Worker(context, threads)
                running[stage.name].start(stage, log)
            if not running:
                raise R1labError(f"no stage can start; waiting on: {[s.name for s in stages if s.name not in done]}")
            for name in _answered(running):
                worker = running.pop(name)
                idle.append(worker)  # stopped in `finally` if this stage failed
                seconds = worker.seconds(others=sorted(running))
                done.add(name)
                on_done(name, seconds)
                say(f"{name}: done in {seconds:.0f} s")
    finally:
        for worker in [*running.values(), *idle]:  # busy ones only after a failure or Ctrl-C
            worker.stop()


class _Worker:
    """A spawned process that runs stages one after another (imports are paid once); each stage's
    result comes back through a pipe, which is also readable (at end of file) if the process dies."""

    def __init__(self, context, threads: int):
        jobs, self.jobs = context.Pipe(duplex=False)
        self.results, results = context.Pipe(duplex=False)
        # not daemonic: a stage may start processes of its own
        self.process = context.Process(target=_worker_loop, args=(jobs, results, threads), name="r1lab-stage-worker")
        self.process.start()
        jobs.close()  # the child holds these ends now: its exit closes the pipe
        results.close()
        self.name, self.log, self.busy = "", Path(), False

    def start(self, stage: Stage, log: Path) -> None:
        self.name, self.log, self.busy = stage.name, log, True
        self.jobs.send((stage.run, stage.args, str(log)))

    def seconds(self, others: list[str]) -> float:
        """The stage's wall seconds once it has answered; an R1labError naming it if it failed."""
        killed = f"; stopped {others}" if others else ""
        self.busy = False
        try:
            ok, value = self.results.recv()
        except EOFError:  # the process died without answering
            self.process.join(30)
            code = self.process.exitcode
            how = f"killed by {signal.Signals(-code).name}" if code and code < 0 else f"exited with status {code}"
            raise R1labError(f"stage {self.name} failed: its worker process died ({how}) "
                             f"(log {self.log}){killed}") from None
        if not ok:
            raise R1labError(f"stage {self.name} failed: {value} (log {self.log}){killed}")
        return value

    def stop(self) -> None:
        """Let an idle worker exit (its job pipe closes); terminate a busy one."""
        self.jobs.close()
        self.process.join(0 if self.busy else 5)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def _answered(running: dict[str, _Worker]) -> list[str]:
    """Block until at least one busy worker has answered or died; their stage names."""
    ready = set(wait([w.results for w in running.values()]))
    return [name for name, w in running.items() if w.results in ready]


def _timed(stage: Stage) -> float:
    start = time.perf_counter()
    stage.run(*stage.args)
    return time.perf_counter() - start


def _worker_loop(jobs, results, threads: int) -> None:
    """In a worker process: run stages until the job pipe closes; for each send back (True,
    seconds) or (False, its error's text)."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    while True:
        try:
            fn, args, log = jobs.recv()
        except EOFError:  # the scheduler is done with this worker
            return
        try:
            result = (True, _run_logged(fn, args, log))
        except Exception as exc:  # the stage's own error: its text goes back, its traceback is in the log
            result = (False, str(exc) or type(exc).__name__)
        results.send(result)


def _run_logged(fn: Callable[..., Any], args: tuple, log: str) -> float:
    """In a worker: `fn(*args)` with its output appended to `log`; returns its wall seconds."""
    with open(log, "a", encoding="utf-8", buffering=1) as out, contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(out):
        start = time.perf_counter()
        try:
            fn(*args)
        except BaseException:
            traceback.print_exc()  # into the log; the error itself goes back to the scheduler
            raise
        return time.perf_counter() - start

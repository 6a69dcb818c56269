"""A bounded pool of sandboxed runs: many completions at once, each in a sandbox of its own.

    with SandboxPool(workers=2) as pool:
        results = pool.run([(program, tests), (other_program, tests)])

`default_pool()` is the one the code reward and the code task share, made on first use.

A run's tests go one after another in its sandbox (each in a fresh process); runs go in
parallel, at most `workers` at a time. Nothing a program does raises here: a sandbox that
fails is a result with status "error", passed 0, and a logged warning.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Sequence

from r1lab.errors import R1labError
from r1lab.sandbox.cases import CodeTest
from r1lab.sandbox.isolation import Isolation
from r1lab.sandbox.limits import Limits
from r1lab.sandbox.runner import ExecResult, choose_isolation, run_tests

logger = logging.getLogger(__name__)

Job = tuple[str, Sequence[CodeTest]]  # (program, tests from parse_tests)


def default_workers() -> int:
    """4 per core, at most 32: a run is short bursts of CPU (bwrap, interpreter start, forks)
    between waits on the kernel and on pipes, so one worker per core leaves the cores idle
    (measured on 2 shared cores: 42 runs/s with 2 workers, 59 with 4, 60-66 with 8-12)."""
    return min(4 * (os.cpu_count() or 1), 32)


class SandboxPool:
    """`workers` sandboxes at a time (default: `default_workers`)."""

    def __init__(self, workers: int | None = None, limits: Limits = Limits(),
                 allow_weak_isolation: bool | None = None, isolation: Isolation | None = None):
        workers = workers or default_workers()
        if workers < 1:
            raise R1labError(f"sandbox workers must be >= 1, got {workers}")
        self.workers, self.limits = workers, limits
        self.isolation = isolation or choose_isolation(allow_weak_isolation)  # fail fast, before a run
        if not self.isolation.strong:
            logger.warning("code sandbox: %s", self.isolation.describe())
        else:
            logger.info("code sandbox: %s", self.isolation.describe())
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="r1lab-sandbox")

    def submit(self, program: str, tests: Sequence[CodeTest], limits: Limits | None = None,
               label: str = "") -> Future[ExecResult]:
        return self._executor.submit(self._run_one, program, tuple(tests), limits or self.limits, label)

    def run(self, jobs: Sequence[Job], limits: Limits | None = None) -> list[ExecResult]:
        """Results in the order of `jobs`. Interrupted (Ctrl-C), it cancels the runs not yet
        started at once; those running end at their deadlines (or with the trainer: bwrap's
        --die-with-parent)."""
        futures = [self.submit(program, tests, limits) for program, tests in jobs]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    def _run_one(self, program: str, tests: tuple[CodeTest, ...], limits: Limits, label: str) -> ExecResult:
        try:
            result = run_tests(program, tests, limits, self.isolation, label)
        except Exception as e:  # noqa: BLE001 -- a sandbox failure scores 0; it must not stop training
            result = ExecResult(0, len(tests), "error", f"{type(e).__name__}: {e}", 0.0)
        if result.status == "error":
            logger.warning("code sandbox failed (scored 0): %s", result.reason)
        return result

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_DEFAULT: list[SandboxPool] = []  # one per process, made on first use (probing isolation takes ~0.1 s)
_DEFAULT_LOCK = threading.Lock()


def default_pool() -> SandboxPool:
    """The process's shared pool, with default workers and limits.

    Weak isolation only if R1LAB_ALLOW_WEAK_SANDBOX=1; otherwise R1labError where no sandbox works.
    """
    with _DEFAULT_LOCK:
        if not _DEFAULT:
            _DEFAULT.append(SandboxPool())
        return _DEFAULT[0]

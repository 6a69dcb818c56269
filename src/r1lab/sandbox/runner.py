"""One sandboxed run: a program and its tests in, an `ExecResult` out.

    >>> from r1lab.sandbox import run_tests, parse_tests
    >>> run_tests("def f(x):\\n    return 3 * x + 2", parse_tests("assert f(1) == 5")).passed  # doctest: +SKIP
    1
"""

from __future__ import annotations

import ast
import functools
import logging
import marshal
import os
import secrets
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from contextlib import nullcontext
from dataclasses import dataclass
from collections.abc import Sequence

from r1lab.sandbox import seccomp
from r1lab.sandbox.cases import CodeTest, normalise_output, parse_tests
from r1lab.sandbox.cgroups import RunCgroup
from r1lab.sandbox.isolation import (
    ENV,
    UID_SLOTS,
    Isolation,
    candidates,
    no_isolation_error,
    weak_allowed,
)
from r1lab.sandbox.limits import Limits

logger = logging.getLogger(__name__)

MAX_REPORT = 256 << 20  # bytes of results the trainer reads from one run
DEADLINE = "the run did not finish within its deadline"


@dataclass(frozen=True)
class ExecResult:
    passed: int  # tests that finished (and, for stdin/stdout tests, printed the expected output)
    total: int
    status: str  # "passed" (all), "failed" (some), or "error": the sandbox itself failed (scored 0)
    reason: str  # why the first failing test failed, or the sandbox error; "" when all passed
    seconds: float  # wall time of the whole run

    @property
    def fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0


def run_tests(program: str, tests: Sequence[CodeTest] | str | list, limits: Limits = Limits(),
              isolation: Isolation | None = None, label: str = "") -> ExecResult:
    """Run `program`, then each test, in a fresh sandbox; never raises for anything the program does.

    `tests` is a tuple from `parse_tests` or anything it accepts. `label` (default: a random one)
    is put on the harness's command line, so its processes can be found from outside.
    """
    is_parsed = isinstance(tests, (list, tuple)) and tests and all(isinstance(t, CodeTest) for t in tests)
    cases = tuple(tests) if is_parsed else parse_tests(tests)
    isolation = isolation or choose_isolation()
    label = label or f"r1lab-sandbox-{uuid.uuid4().hex[:12]}"
    start = time.monotonic()
    uid_slot = UID_SLOTS.take() if isolation.needs_uid else nullcontext(-1)
    with uid_slot as uid:
        lines, stderr, error = _execute(program, cases, limits, isolation, uid, label)
    return _result(cases, lines, stderr, error, time.monotonic() - start)


@functools.lru_cache(maxsize=2)
def _choose(allow_weak: bool) -> Isolation:
    failures = []
    for isolation in candidates():
        if isolation.kind == "weak" and not allow_weak:
            break
        problem = probe(isolation)
        if problem is None:
            if failures:
                logger.warning("code sandbox: using %s; stronger ones failed: %s", isolation.describe(),
                               "; ".join(failures))
            return isolation
        failures.append(f"{isolation.describe()}: {problem}")
    raise no_isolation_error(failures)


_CHOOSE_LOCK = threading.Lock()


def choose_isolation(allow_weak_isolation: bool | None = None) -> Isolation:
    """The strongest isolation that works here (probed once per process); R1labError if none.

    Weak isolation is used only when allowed (the argument, else R1LAB_ALLOW_WEAK_SANDBOX=1).
    """
    with _CHOOSE_LOCK:
        return _choose(weak_allowed(allow_weak_isolation))


def probe(isolation: Isolation) -> str | None:
    """None if a trivial program passes its test in this isolation, else what went wrong."""
    limits = Limits(time_s=10.0)
    result = run_tests("def f(x):\n    return x + 1\n", parse_tests("assert f(1) == 2"), limits, isolation)
    if result.passed == 1:
        return None
    return result.reason or result.status


def _execute(program: str, cases: tuple[CodeTest, ...], limits: Limits, isolation: Isolation, uid: int,
             label: str) -> tuple[list[bytes], bytes, str]:
    """The harness's result lines (those carrying the run's secret, without it), its stderr, and an
    error if the run failed or had to be killed at its deadline (`DEADLINE` starts that error)."""
    secret = secrets.token_hex(16)
    header = {"program": program, "limits": limits.for_harness(_nproc(limits, isolation, uid))}
    payload = b"".join(_trainer_frame(marshal.dumps(x)) for x in (header, (secret, [t.spec() for t in cases])))
    budget = limits.run_budget(len(cases))
    started = Started(isolation, limits, label)
    try:
        proc = started.start(uid)
        out, err = proc.communicate(payload, timeout=max(budget - (time.monotonic() - started.at), 0.001))
        error = "" if proc.returncode == 0 else f"the sandbox exited with status {proc.returncode}"
    except subprocess.TimeoutExpired:
        started.kill()
        out, err = started.proc.communicate()
        error = f"{DEADLINE} ({budget:g} s) and was killed"
    except SandboxStartError as e:
        return [], b"", f"can't start the sandbox: {e}"
    finally:
        started.cleanup()
    tag = secret.encode("ascii") + b" "
    lines = [line[len(tag):] for line in out[:MAX_REPORT].splitlines() if line.startswith(tag)]
    return lines, err[-2000:], error


class SandboxStartError(Exception):
    pass


class Started:
    """One sandbox's process and what goes with it: the bwrap info pipe (for the sandbox's pid), the
    seccomp filter's pipe, its cgroup, and weak isolation's working directory."""

    def __init__(self, isolation: Isolation, limits: Limits, label: str):
        self.isolation, self.limits, self.label = isolation, limits, label
        self.proc: subprocess.Popen | None = None
        self.child: int | None = None
        self.info_r: int | None = None
        self.fds: list[int] = []
        self.cgroup: RunCgroup | None = None
        self.workdir = tempfile.mkdtemp(prefix="r1lab-sandbox-") if isolation.kind == "weak" else None
        self.at = time.monotonic()

    def start(self, uid: int) -> subprocess.Popen:
        """Start the sandbox; its judge waits for its input, so it is in its cgroup before it runs anything."""
        isolation, workdir = self.isolation, self.workdir
        try:
            self.info_r, info_w = self._pipe() if isolation.strong else (None, None)
            filter_r = self._filter_pipe() if isolation.seccomp else None
            if isolation.cgroup:
                self.cgroup = RunCgroup(isolation.cgroup, self.limits, self.label)
            if workdir and uid >= 0:
                os.chown(workdir, uid, uid)
            env = dict(ENV, HOME=workdir, TMPDIR=workdir) if workdir else dict(ENV)
            user = uid if isolation.spawn_as_uid else None
            command = isolation.command(self.limits, uid, info_w, self.label, filter_r)
            self.proc = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=workdir or "/",
                env=env, start_new_session=True, pass_fds=tuple(fd for fd in (info_w, filter_r) if fd is not None),
                user=user, group=user, extra_groups=[] if user is not None else None)
        except OSError as e:
            raise SandboxStartError(str(e)) from None
        for fd in (info_w, filter_r):
            if fd is not None:
                self._close(fd)
        if self.cgroup is not None:
            self.child = _read_child_pid(self.info_r, 5.0)
            try:
                self.cgroup.add(self.child if self.child else -1)
            except OSError as e:
                self.kill()
                self.proc.communicate()
                raise SandboxStartError(f"can't move it into its cgroup {self.cgroup.path}: {e}") from None
        return self.proc

    def _pipe(self) -> tuple[int, int]:
        r, w = os.pipe()
        self.fds += [r, w]
        return r, w

    def _filter_pipe(self) -> int:
        """A pipe holding the seccomp filter (a few hundred bytes: fits the pipe's buffer), for bwrap."""
        r, w = self._pipe()
        os.write(w, seccomp.filter_bytes() or b"")
        self._close(w)
        return r

    def _close(self, fd: int) -> None:
        if fd in self.fds:
            self.fds.remove(fd)
            os.close(fd)

    def kill(self) -> None:
        """Kill the sandbox's pid 1 (so the kernel kills all of it before bwrap exits), then bwrap."""
        if self.child is None and self.info_r in self.fds:
            self.child = _read_child_pid(self.info_r, 0.0)
        for pid, kill in ((self.child, os.kill), (self.proc.pid if self.proc else None, os.killpg)):
            if pid:
                try:
                    kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    def cleanup(self) -> None:
        for fd in list(self.fds):
            self._close(fd)
        if self.cgroup is not None:
            self.cgroup.close()
        if self.isolation.kind == "weak":
            kill_labelled(self.label)  # no PID namespace: descendants that left the process group
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _nproc(limits: Limits, isolation: Isolation, uid: int) -> int:
    """RLIMIT_NPROC for the program: its processes + the judge and server; 0 (none) where the
    count would include the user's own processes (weak isolation without root)."""
    if isolation.kind == "weak" and uid < 0:
        return 0
    return limits.processes + 2


def _trainer_frame(data: bytes) -> bytes:
    return b"%d\n" % len(data) + data


def _read_child_pid(info_r: int, wait_s: float) -> int | None:
    """The sandbox's pid 1 as the host sees it, from bwrap's --info-fd JSON (waiting up to `wait_s`)."""
    if wait_s > 0 and not select.select([info_r], [], [], wait_s)[0]:
        return None
    os.set_blocking(info_r, False)
    try:
        text = os.read(info_r, 4096).decode("ascii", "replace")
    except OSError:
        return None
    digits = text.partition('"child-pid":')[2].strip().split("\n")[0].strip(" ,}")
    return int(digits) if digits.isdigit() else None


def kill_labelled(label: str) -> int:
    """SIGKILL every process whose command line carries `label`; how many were found."""
    found = 0
    needle = label.encode()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if needle not in f.read():
                    continue
            os.kill(int(name), signal.SIGKILL)
            found += 1
        except OSError:
            continue
    return found


def _result(cases: tuple[CodeTest, ...], lines: list[bytes], stderr: bytes, error: str, seconds: float) -> ExecResult:
    reports: dict[int, tuple[str, str, bytes | None]] = {}
    done = False
    for line in lines:
        try:
            record = ast.literal_eval(line.decode("utf-8", "replace"))
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        if isinstance(record, tuple) and record[:1] == ("done",):
            done = True
        elif isinstance(record, tuple) and len(record) == 6 and record[0] == "result":
            reports[record[1]] = (str(record[2]), str(record[3]), record[4])
    passed, first_failure = 0, ""
    for i, case in enumerate(cases):
        ok, why = _judge(case, reports.get(i))
        passed += ok
        if not ok and not first_failure:
            first_failure = f"test {i + 1}/{len(cases)}: {why}"
    if not done and error.startswith(DEADLINE):  # the program's doing (e.g. values built to hang the judge)
        return ExecResult(0, len(cases), "failed", error, seconds)
    if not done:
        detail = error or "the harness stopped early"
        tail = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] if stderr else []
        return ExecResult(0, len(cases), "error", f"{detail}{': ' + tail[0] if tail else ''}", seconds)
    status = "passed" if passed == len(cases) else "failed"
    return ExecResult(passed, len(cases), status, first_failure, seconds)


def _judge(case: CodeTest, report: tuple[str, str, bytes | None] | None) -> tuple[bool, str]:
    if report is None:
        return False, "no result (the sandbox ended early)"
    status, reason, output = report
    if status != "passed":
        return False, f"{status}: {reason}" if reason else status
    if case.kind == "stdio":
        printed = output.decode("utf-8", "replace") if isinstance(output, bytes) else ""
        if normalise_output(printed) != normalise_output(case.expected):
            return False, "wrong output"
    return True, ""

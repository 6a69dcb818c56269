"""math-verify in worker processes, so a hostile answer can't hang, crash or starve the trainer.

Why processes: sympy can spend minutes (or all memory) on an answer like ``9^{9^{9^{9}}}``,
often inside C code that no Python-level interrupt reaches, and math-verify's own timeouts use
``signal.alarm``, which only works on the main thread. So math-verify runs with its signal
timeouts disabled (``parsing_timeout=None``, ``timeout_seconds=None``) in a process that is
killed when it overruns.

Layout, for each of up to `POOL_SIZE` concurrent calls:

    trainer --JSON lines--> supervisor (python child: imports sympy, warms up, never parses)
                                 `--fork--> solver (runs math-verify; killed past the deadline)

Starting Python and importing sympy takes seconds, forking a warm supervisor milliseconds, so
a killed solver is replaced at once and the next answer doesn't wait. The supervisor is a
``subprocess`` (not multiprocessing): it never re-imports the user's ``__main__`` and is safe
to start from a process that already runs threads (torch); it is single-threaded, so forking
it is safe. POSIX only. Protocol: ``{"p": predicted, "r": reference, "t": seconds}`` ->
``{"ok": true | false | null}`` (null: no verdict within the time).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time

from r1lab.errors import R1labError

logger = logging.getLogger(__name__)

POOL_SIZE = 4  # concurrent math-verify calls (one supervisor each, started when first needed)
STARTUP_TIMEOUT = 60.0  # seconds for a supervisor to import sympy and warm up (cold disks are slow)
GRACE = 5.0  # seconds past a call's timeout before the supervisor itself is deemed broken
MEMORY_LIMIT = 2 << 30  # bytes of address space per solver: a memory bomb fails fast instead
_WARM_UP = (("x^2+2x+1", "(x+1)^2"), ("\\{1,2\\}", "1, 2"), ("x=3", "3"), ("[1,2)", "(1,2]"))
_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _LineReader:
    """Lines from a pipe with a deadline (``select.poll``: fds above 1024 are common in trainers)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.poller = select.poll()
        self.poller.register(fd, select.POLLIN)
        self.buffer = b""

    def readline(self, deadline: float | None) -> bytes | None:
        """The next line; None at end of file or, with a `deadline`, if it didn't come in time."""
        while b"\n" not in self.buffer:
            wait = None if deadline is None else max(deadline - time.monotonic(), 0.0) * 1000
            if not self.poller.poll(wait):
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


# --- the trainer's side ------------------------------------------------------------------------


class _Supervisor:
    def __init__(self) -> None:
        env = dict(os.environ)  # r1lab importable in the child even when found via sys.path only
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_SOURCE_ROOT, env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from r1lab.rewards._mathverify import serve; serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env=env,
            start_new_session=True,  # its own process group: one killpg also takes the solver
        )
        self.replies = _LineReader(self.proc.stdout.fileno())
        self.ready = False

    def is_warm(self) -> bool:
        """Whether it has finished starting (checked without waiting)."""
        if not self.ready and self.replies.readline(time.monotonic()) == b"ready":
            self.ready = True
        return self.ready

    def wait_ready(self) -> None:
        if not self.ready and self.replies.readline(time.monotonic() + STARTUP_TIMEOUT) != b"ready":
            raise R1labError(
                f"the math-verify worker did not start within {STARTUP_TIMEOUT:.0f} s "
                f"(is math-verify[antlr4_13_2] installed for {sys.executable}?)"
            )
        self.ready = True

    def ask(self, pred: str, ref: str, timeout: float) -> tuple[bool, bool | None]:
        """(whether the supervisor still works, math-verify's verdict or None past `timeout`)."""
        self.wait_ready()
        try:
            _write_all(self.proc.stdin.fileno(), json.dumps({"p": pred, "r": ref, "t": timeout}).encode() + b"\n")
        except OSError:
            return False, None
        line = self.replies.readline(time.monotonic() + timeout + GRACE)
        if line is None:
            return False, None
        verdict = json.loads(line)["ok"]
        return True, None if verdict is None else bool(verdict)

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()


class _Pool:
    def __init__(self, size: int) -> None:
        self.size = size
        self.lock = threading.Lock()
        self._reset()
        atexit.register(self.close)

    def _reset(self) -> None:
        self.pid = os.getpid()
        self.slots = threading.BoundedSemaphore(self.size)
        self.idle: list[_Supervisor] = []

    def _take(self) -> _Supervisor:
        with self.lock:
            if os.getpid() != self.pid:
                self._reset()  # a forked trainer process: the inherited workers are the parent's
            if not self.idle:
                return _Supervisor()
            worker = min(self.idle, key=lambda w: not w.is_warm())
            self.idle.remove(worker)
            return worker

    def _give_back(self, worker: _Supervisor) -> None:
        with self.lock:
            self.idle.append(worker)

    def warm_up(self, n: int) -> None:
        """Start workers until `n` (at most the pool size) are idle, and wait until they're ready."""
        with self.lock:
            if os.getpid() != self.pid:
                self._reset()
            workers = [_Supervisor() for _ in range(min(n, self.size) - len(self.idle))]
        for worker in workers:  # outside the pool until ready: no other thread reads their pipes
            worker.wait_ready()
            self._give_back(worker)

    def match(self, pred: str, ref: str, timeout: float) -> bool | None:
        if not self.slots.acquire(timeout=STARTUP_TIMEOUT + timeout + GRACE):
            logger.warning("math-verify pool busy for too long; answer %r scored as wrong (not cached)", pred[:50])
            return None
        try:
            worker = self._take()
            try:
                working, verdict = worker.ask(pred, ref, timeout)
            except BaseException:
                worker.kill()
                raise
            if not working:
                logger.warning("math-verify worker failed on %r; restarting it", pred[:50])
                worker.kill()
                return None
            self._give_back(worker)
            return verdict
        finally:
            self.slots.release()

    def close(self) -> None:
        with self.lock:
            if os.getpid() == self.pid:
                for worker in self.idle:
                    worker.kill()
            self.idle = []


_POOL = _Pool(POOL_SIZE)


def warm_up(n: int = 1) -> None:
    """Start `n` math-verify workers now and wait for them, so the first rewards don't wait."""
    _POOL.warm_up(n)


def match(pred: str, ref: str, timeout: float) -> bool | None:
    """math-verify's ``verify(parse(ref), parse(pred))`` in a worker; None (no verdict) past
    `timeout` s, when every worker stayed busy too long, or when a worker died."""
    return _POOL.match(pred, ref, timeout)


# --- the supervisor's side ---------------------------------------------------------------------


def _verify(pred: str, ref: str) -> bool:
    from math_verify import LatexExtractionConfig, parse, verify

    gold = parse(f"\\boxed{{{ref}}}", parsing_timeout=None)
    # The prediction as LaTeX only: math-verify's default also tries its plain-expression reader,
    # which takes the last number out of what LaTeX can't read, so "3 \lor 5" would be 5.
    answer = parse(f"\\boxed{{{pred}}}", extraction_config=[LatexExtractionConfig()], parsing_timeout=None)
    return bool(gold) and bool(answer) and verify(gold, answer, timeout_seconds=None)


class _Solver:
    """A forked copy of the warm supervisor that runs math-verify, one request at a time."""

    def __init__(self, close_in_child: int) -> None:
        request_read, self.requests = os.pipe()
        reply_read, reply_write = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the solver
            for fd in (self.requests, reply_read, close_in_child):  # close_in_child: the trainer's pipe
                os.close(fd)
            _solve(request_read, reply_write)
        os.close(request_read)
        os.close(reply_write)
        self.replies = _LineReader(reply_read)

    def ask(self, line: bytes, deadline: float) -> bool | None:
        _write_all(self.requests, line + b"\n")
        reply = self.replies.readline(deadline)
        return None if reply is None else reply == b"1"

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)
        os.close(self.requests)
        os.close(self.replies.fd)


def _solve(requests: int, replies: int) -> None:
    try:
        try:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
        except (ImportError, ValueError, OSError):
            pass  # no such limit here: the supervisor's deadline still bounds the call
        reader = _LineReader(requests)
        while (line := reader.readline(None)) is not None:
            try:
                request = json.loads(line)
                ok = _verify(request["p"], request["r"])
            except Exception:  # includes MemoryError (the address-space limit) and RecursionError
                ok = False
            _write_all(replies, b"1\n" if ok else b"0\n")
    finally:
        os._exit(0)  # never return into the supervisor's loop


def serve() -> None:
    """The supervisor's main loop (runs in the child process the trainer starts)."""
    replies = os.dup(1)
    os.dup2(2, 1)  # anything sympy or math-verify prints goes to stderr, not into the protocol
    sys.stdout = sys.stderr
    # Timeouts are enforced by killing the solver, so silence "timeout disabled" warnings.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    for pred, ref in _WARM_UP:  # sympy imports modules on first use: pay for that once, here
        _verify(pred, ref)
    _write_all(replies, b"ready\n")
    requests = _LineReader(0)
    solver = _Solver(close_in_child=replies)
    try:
        while (line := requests.readline(None)) is not None:
            deadline = time.monotonic() + float(json.loads(line)["t"])
            ok = solver.ask(line, deadline)
            if ok is None:  # overran (or died): kill it, and fork a fresh one while we are idle
                solver.kill()
                solver = _Solver(close_in_child=replies)
            _write_all(replies, json.dumps({"ok": ok}).encode() + b"\n")  # null: no verdict in time
    except BrokenPipeError:
        pass  # the trainer has gone
    finally:
        solver.kill()

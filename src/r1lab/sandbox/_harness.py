"""The trusted driver that runs inside the sandbox. Standard library only: the sandbox can't import r1lab.

Three processes (`r1lab.sandbox` explains why this split makes a pass impossible to forge):

- judge (pid 1 of the sandbox): reads the program, forks the server, only then reads the tests,
  and runs each test's code itself, calling the program's functions through proxies that pass
  plain data. It never executes a line of the program, and only it can write to the trainer.
- server (`_worker`): forked before the judge has read any test, so no test (and no expected
  value) is in the memory that workers are forked from; it forks one fresh worker per test, and
  after each test kills every other process in the sandbox.
- worker (`_worker`): runs the program (untrusted), then answers calls with plain data, or, for
  stdin/stdout tests, runs it as a script with the test's input.

A test's code runs in a namespace of its own with the judge's real builtins: the program's
functions come in as proxies, its plain-data constants as copies, and no name of the program
that would shadow a builtin (``len``, ``all``, ``abs``...) or a dunder comes in at all.

Started by `r1lab.sandbox.runner` as ``python -I -S -B -c BOOT judge MODE UID LABEL``; MODE is
"ns" (a bubblewrap sandbox: the judge is pid 1 of its own PID namespace) or "weak" (rlimits
only); UID >= 0: drop root to it first; LABEL only marks the processes for ``ps``.
Trainer -> judge (fd 0): two length-prefixed marshal frames, {program, limits} then (secret,
tests), the second read only after the server is forked. Judge -> trainer (fd 1): one line per
test, the run's secret, a space, then the ``repr`` of ``("result", i, status, reason, output,
ms)``, and last ``("done", n)``; the trainer reads them with `ast.literal_eval` and ignores any
line without the secret (only the judge ever holds it: no worker's memory does).
"""

import _signal
import builtins
import marshal
import os
import resource
import select
import sys
import time

if __package__:  # imported as r1lab.sandbox._harness (tests, tools); in the sandbox it is top-level
    from ._wire import MAX_MESSAGE, decode, encode, frame, read_frame, read_trainer_frame, write_all
    from ._worker import server
else:
    from _wire import MAX_MESSAGE, decode, encode, frame, read_frame, read_trainer_frame, write_all
    from _worker import server

BUILTIN_NAMES = frozenset(dir(builtins))  # a program's names never shadow these in a test
NO_PROGRAM_ERRORS = {"StopIteration", "StopAsyncIteration"}  # would end a test's iterator early, as if done
JUDGE_EXTRA_MB = 512  # the judge's address space: the program's limit + this (values it decodes, the tests)
REPORT_CAP = 48 << 20  # stdout bytes of all a run's tests reported to the trainer (repr: up to 4x on the wire)
DRAIN_CAP = 64 << 20  # bytes read from a dead worker's pipes after a test; more is left unread
STATE = {"armed": False, "tripped": None}  # the judge's alarm and the test's first failure (judge memory)


# ---------------------------------------------------------------------------------------------
# The judge.

class Stop(BaseException):
    """Ends a test as failed. A BaseException, so a test's ``except Exception`` can't swallow it;
    and recorded, so a test whose bare ``except:`` did still fails."""


class Timeout(Stop):
    pass


class WorkerGone(Stop):
    pass


class OutputLimit(Stop):
    pass


def trip(error):
    if STATE["tripped"] is None:
        STATE["tripped"] = error
    return error


class Link:
    """The judge's side of one worker: calls, replies, and its (counted, capped) output."""

    def __init__(self, pipes, output_cap, deadline):
        self.call_w, self.call_r, self.reply_r, self.out_r, self.err_r = pipes
        self.output_cap, self.deadline = output_cap, deadline
        self.buffer, self.output, self.printed = b"", [], 0
        self.pidfd = None

    def watch(self, pid):
        try:
            self.pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self.pidfd = None  # old kernel: a dead worker is noticed at the deadline

    def close(self):
        if self.pidfd is not None:
            os.close(self.pidfd)

    def wait_gone(self):
        """Wait, reading its output, until the worker's process has ended (Timeout at the deadline);
        at once where there is no pidfd (Linux < 5.3): there the worker's "exit" message decides."""
        while self.pidfd is not None:
            ready = self._wait([self.pidfd, self.out_r, self.err_r], [])
            self._drain()
            if self.pidfd in ready:
                return

    def send(self, message):
        data = frame(encode(message))
        if len(data) > MAX_MESSAGE:
            raise ValueError("arguments too large to pass to the program")
        view = memoryview(data)
        while view:
            self._wait([], [self.call_w])
            try:
                view = view[os.write(self.call_w, view):]
            except BlockingIOError:
                pass

    def recv(self):
        while True:
            message = self._take()
            if message is not None:
                return message
            watched = [self.reply_r, self.out_r, self.err_r] + ([self.pidfd] if self.pidfd is not None else [])
            ready = self._wait(watched, [])
            gone = self.pidfd in ready
            self._drain()
            if gone and self._take_ready() is None:
                raise trip(WorkerGone())

    def _take_ready(self):
        self._drain()
        return self._peek()

    def _peek(self):
        if len(self.buffer) < 4:
            return None
        size = int.from_bytes(self.buffer[:4], "big")
        if size > MAX_MESSAGE:
            raise ValueError("oversized reply from the program")
        return size if len(self.buffer) >= 4 + size else None

    def _take(self):
        size = self._peek()
        if size is None:
            return None
        data, self.buffer = self.buffer[4:4 + size], self.buffer[4 + size:]
        return decode(data)

    def _wait(self, readers, writers):
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise trip(Timeout())
        ready_r, ready_w, _ = select.select(readers, writers, [], remaining)
        if not ready_r and not ready_w:
            raise trip(Timeout())
        return ready_r

    def _drain(self):
        self.buffer += _read_available(self.reply_r, MAX_MESSAGE + 4 - len(self.buffer))
        for fd, keep in ((self.out_r, True), (self.err_r, False)):
            data = _read_available(fd, self.output_cap + 1)
            self.printed += len(data)
            if keep:
                self.output.append(data)
            if self.printed > self.output_cap:
                raise trip(OutputLimit())


def _read_available(fd, cap):
    chunks, total = [], 0
    while total < cap:
        try:
            chunk = os.read(fd, min(1 << 16, cap - total))
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def judge(mode, uid):
    if uid >= 0 and os.getuid() == 0:  # root: every sandbox process runs as an unprivileged uid
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    if os.getuid() == 0 and uid >= 0:
        raise SystemExit("r1lab harness: could not drop root privileges")
    if not _not_dumpable() and mode == "ns":
        raise SystemExit("r1lab harness: can't make the judge non-dumpable (prctl via _ctypes)")
    _signal.signal(_signal.SIGINT, _signal.SIG_DFL)  # pid 1 ignores unhandled signals from the sandbox
    _signal.signal(_signal.SIGALRM, _on_alarm)
    report = os.dup(1)
    os.dup2(os.open(os.devnull, os.O_RDWR), 1)  # a test's prints must not reach the trainer
    header = read_trainer_frame(0)
    # A test computes with the program's values ("x" * f(1)): the judge's memory is capped too.
    judge_bytes = (header["limits"]["memory_mb"] + JUDGE_EXTRA_MB) << 20
    resource.setrlimit(resource.RLIMIT_AS, (judge_bytes, judge_bytes))
    pipes = [os.pipe() for _ in range(6)]  # ctl call, ctl reply, worker call, worker reply, out, err
    (ctl_r, ctl_w), (ack_r, ack_w), (call_r, call_w), (reply_r, reply_w), (out_r, out_w), (err_r, err_w) = pipes
    server_pid = os.fork()
    if server_pid == 0:
        for fd in (0, report, ctl_w, ack_r, call_w, reply_r, out_r, err_r):
            os.close(fd)
        server(header["program"], header["limits"], mode, ctl_r, ack_w, (call_r, reply_w, out_w, err_w))
    for fd in (ctl_r, ack_w, reply_w, out_w, err_w):
        os.close(fd)
    for fd in (call_w, reply_r, out_r, err_r):
        os.set_blocking(fd, False)
    secret, tests = read_trainer_frame(0)  # read only now: the server's memory never held a test or the secret
    secret = secret.encode("ascii")
    control = Control(ctl_w, ack_r, server_pid)
    links = (call_w, call_r, reply_r, out_r, err_r)
    limits = header["limits"]
    end = time.monotonic() + limits["total_s"]
    reported = 0  # stdout bytes sent to the trainer: many tests x a full output each must not flood it
    for i, (kind, payload) in enumerate(tests):
        start = time.monotonic()
        if start < end:
            status, reason, output = run_test(kind, payload, limits, min(start + limits["time_s"], end), control, links)
        else:
            status, reason, output = "timeout", f"the run's {limits['total_s']:g} s were spent", None
        reported += len(output or b"")
        if reported > REPORT_CAP:
            status, reason, output = "failed", f"the run printed more than {REPORT_CAP >> 20} MiB in all", None
        _report(report, secret, ("result", i, status, reason, output, int(1000 * (time.monotonic() - start))))
    control.stop()
    _report(report, secret, ("done", len(tests)))


def _report(fd, secret, record):
    write_all(fd, secret + b" " + repr(record).encode() + b"\n")


def _not_dumpable():
    """prctl(PR_SET_DUMPABLE, 0): no process of the sandbox (same uid) may ptrace the judge, read
    its memory or steal its fds (pidfd_getfd), and no process forked from it dumps a core."""
    try:
        import _ctypes

        prctl = _ctypes.dlsym(_ctypes.dlopen(None, 2), "prctl")
        _ctypes.call_function(prctl, (4, 0, 0, 0, 0))  # PR_SET_DUMPABLE
        return _ctypes.call_function(prctl, (3, 0, 0, 0, 0)) == 0  # PR_GET_DUMPABLE
    except (ImportError, OSError, AttributeError):
        return False


def _on_alarm(signum, frame):
    if STATE["armed"]:
        STATE["armed"] = False
        raise trip(Timeout())


class Control:
    """The judge's line to the server."""

    def __init__(self, call_w, ack_r, pid):
        self.call_w, self.ack_r, self.pid, self.alive = call_w, ack_r, pid, True

    def ask(self, message, timeout, expect):
        """The server's reply tagged `expect` (stale replies of an interrupted exchange are
        skipped), or None when the server is gone or silent for `timeout` seconds."""
        if not self.alive:
            return None
        try:
            write_all(self.call_w, frame(marshal.dumps(message)))
        except OSError:  # the program killed the server
            self.alive = False
            return None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.ack_r], [], [], 0.002)
            _reap_orphans(self)
            if ready:
                data = read_frame(self.ack_r)
                if data is None:
                    break
                reply = marshal.loads(data)
                if reply[0] == expect:
                    return reply
        self.alive = False
        return None

    def stop(self):
        try:
            self.ask(("exit",), 2.0, "exit")
        except OSError:
            pass


def _reap_orphans(control):
    """Processes orphaned in the sandbox become the judge's (pid 1) children: reap them."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid == control.pid:
            control.alive = False


def run_test(kind, payload, limits, deadline, control, pipes):
    """(status, reason, output) of one test: "passed", "failed", "timeout" or "error"."""
    start = time.monotonic()
    link = Link(pipes, limits["output_bytes"], deadline)
    status, reason = "error", "the sandbox server is gone"
    STATE["tripped"] = None
    try:
        reply = control.ask(("spawn", kind, payload if kind == "stdio" else ""), 2.5, "pid")
        if reply is not None:
            link.watch(reply[1])
            remaining = link.deadline - time.monotonic()
            if remaining <= 0:
                raise trip(Timeout())
            STATE["armed"] = True  # from here to the end of the test, wherever the judge is
            _signal.setitimer(_signal.ITIMER_REAL, remaining)
            status, reason = _judge_test(kind, payload, link)
            if STATE["tripped"] is not None:  # swallowed by the test's own bare except
                raise STATE["tripped"]
    except Timeout:
        status, reason = "timeout", f"did not finish within {deadline - start:.3g} s"
    except WorkerGone:
        status, reason = "failed", "the program's process ended before the test finished"
    except OutputLimit:
        status, reason = "failed", f"printed more than {limits['output_bytes']} bytes"
    except (ValueError, TypeError, IndexError, KeyError) as e:
        status, reason = "failed", f"bad reply from the program: {e}"[:300]
    except Exception as e:  # noqa: BLE001 -- a harness bug must cost this test, not the run
        status, reason = "error", f"harness: {type(e).__name__}: {e}"[:300]
    finally:
        STATE["armed"] = False
        _signal.setitimer(_signal.ITIMER_REAL, 0)
        link.close()
    _, cleaned, wait_status = control.ask(("clean",), 2.5, "clean") or (None, False, None)
    if cleaned is not True and status == "passed":
        status, reason = "failed", "the program attacked the sandbox (its server was killed)"
    elif kind == "stdio" and status == "passed" and link.pidfd is not None:
        code = os.waitstatus_to_exitcode(wait_status) if wait_status is not None else None
        if code != 0:  # its "exit" message is the program's word; how its process ended is not
            status, reason = "failed", f"the program's process ended with status {code}"
    _drain_all(pipes)
    output = b"".join(link.output)[: limits["output_bytes"]] if kind == "stdio" else None
    return status, reason, output


def _drain_all(pipes):
    """Empty the pipes for the next test, reading at most `DRAIN_CAP` bytes: a writer the clean-up
    could not reach (weak isolation) must not keep the judge here forever."""
    call_w, call_r, reply_r, out_r, err_r = pipes
    budget = DRAIN_CAP
    while budget > 0 and select.select([call_r], [], [], 0)[0]:  # stale calls a dead worker never read
        budget -= len(os.read(call_r, 1 << 16))
    for fd in (reply_r, out_r, err_r):
        while budget > 0 and (data := _read_available(fd, 1 << 20)):
            budget -= len(data)


def _judge_test(kind, payload, link):
    if kind == "stdio":
        return _judge_stdio(link)
    first = link.recv()
    if first[0] == "raised":
        return _raised(first)
    if first[0] != "ready":
        return "failed", "bad reply from the program"
    namespace = _test_namespace(first[1], link)
    code = compile(payload, "<test>", "exec")
    try:
        exec(code, namespace)
    except Stop:
        raise
    except BaseException as e:  # noqa: BLE001 -- SystemExit, AssertionError...: the test did not finish
        return "failed", _failure(e)
    return "passed", ""


def _judge_stdio(link):
    """A stdin/stdout run: it ends when the program's process does (its exit status, checked after
    the clean-up, must be 0; the trainer compares its stdout). The worker's messages only say why
    it failed: the program can write them too. Without a pidfd (Linux < 5.3) its "exit" decides."""
    if link.pidfd is None:
        first = link.recv()
        return _raised(first) if first[0] == "raised" else ("passed", "") if first[0] == "exit" else \
            ("failed", "bad reply from the program")
    link.wait_gone()
    message = link._take()
    if message is not None and message[0] == "raised":
        return _raised(message)
    return "passed", ""


def _raised(message):
    return "failed", f"the program raised {message[1]}: {message[2]}"[:300]


def _failure(e):
    line = None
    tb = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<test>":
            line = tb.tb_lineno
        tb = tb.tb_next
    where = f" (test line {line})" if line else ""
    text = str(e)
    return (f"{type(e).__name__}{where}" + (f": {text}" if text else ""))[:300]


def _test_namespace(names, link):
    """The test's globals: the real builtins, then the program's names (as the worker listed
    them: untrusted), except any that would shadow a builtin, or a dunder such as __builtins__."""
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    for name, kind, value in names:
        if not (isinstance(name, str) and name.isidentifier()) or name in BUILTIN_NAMES or name.startswith("__"):
            continue
        if kind == "call":
            namespace[name] = _proxy(name, link)
        elif kind == "value" and isinstance(value, bytes):
            namespace[name] = decode(value)
        elif kind == "module" and isinstance(value, str):
            module = _stdlib_module(value)
            if module is not None:
                namespace[name] = module
    return namespace


NO_IMPORT = frozenset({"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "webbrowser", "pydoc",
                       "ensurepip", "venv", "lib2to3", "test", "site"})


def _stdlib_module(name):
    """A module the program imported, imported here too if it is a harmless stdlib module: the
    judge's own copy, found on the judge's path (stdlib only), whatever the program put in its
    sys.modules or wrote to disk. Never a private one or a ``__main__`` (that would run a tool)."""
    parts = name.split(".")
    if parts[0] not in getattr(sys, "stdlib_module_names", ()) or parts[0] in NO_IMPORT:
        return None
    if any(not part.isidentifier() or part.startswith("_") for part in parts):
        return None
    try:
        __import__(name)
        return sys.modules[name]
    except Exception:  # noqa: BLE001
        return None


def _proxy(name, link):
    """The program's function `name` as the test calls it: plain data to the worker and back; the
    program's exceptions raised again here as the builtin of that name (else RuntimeError)."""

    def call(*args, **kwargs):
        link.send(("call", name, list(args), kwargs))
        reply = link.recv()
        if reply[0] == "ok":
            return decode(reply[1])
        exc = getattr(builtins, str(reply[1]), None)
        message = str(reply[2])
        # StopIteration out of a call inside map()/filter()/zip() would end the test's iteration
        # as if it were complete (``all(map(check, cases))`` -> True): a RuntimeError, as PEP 479
        # makes it inside generators.
        if not (isinstance(exc, type) and issubclass(exc, Exception)) or reply[1] in NO_PROGRAM_ERRORS:
            exc, message = RuntimeError, f"{reply[1]}: {message}"
        try:
            error = exc(message)
        except Exception:  # noqa: BLE001 -- e.g. UnicodeDecodeError wants five arguments
            error = RuntimeError(f"{reply[1]}: {message}")
        raise error

    call.__name__ = call.__qualname__ = name
    return call


def main():
    role, mode, uid = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if role != "judge":
        raise SystemExit(f"r1lab harness: unknown role {role!r}")
    judge(mode, uid)
    os._exit(0)  # don't wait for threads or run finalisers: everything is reported

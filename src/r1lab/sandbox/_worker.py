"""The sandbox's server and workers (see `_harness` for the three processes). Standard library only.

- worker: runs the program (untrusted from its first line), then answers the judge's calls with
  plain data, or, for stdin/stdout tests, runs it as a script with the test's input.
- server: forked by the judge before it read any test; forks one fresh worker per test and,
  after each test, kills every other process in the sandbox and tells the judge how the worker
  ended (its wait status: a stdin/stdout test passes only if the program itself exited with 0).
"""

import fcntl  # fcntl and resource are for the workers: imported once per run, not per test
import marshal
import os
import resource
import sys
import time

if __package__:  # imported as r1lab.sandbox._worker (tests, tools); in the sandbox it is top-level
    from ._wire import Unencodable, decode, encode, frame, read_frame, write_all
else:
    from _wire import Unencodable, decode, encode, frame, read_frame, write_all

WORKER_FDS = 3  # the worker's call pipe is fd 3, its reply pipe fd 4


# The worker: untrusted from the moment the program starts.

def worker(program, kind, stdin, limits, fds):
    """Set up fds and limits (trusted), then run the program; never returns."""
    try:
        os.setpgid(0, 0)
        call_r, reply_w, out_w, err_w = fds
        stdin_fd = _stdin_fd(stdin) if kind == "stdio" else os.open(os.devnull, os.O_RDONLY)
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (stdin_fd, out_w, err_w, call_r, reply_w)]
        for i, fd in enumerate(high):  # stdin, stdout, stderr, then calls on 3 and replies on 4
            os.dup2(fd, i)
        os.closerange(WORKER_FDS + 2, 1024)  # every pipe of the judge and server
        _set_limits(limits)
    except BaseException:  # noqa: BLE001 -- a worker that can't be set up must not run the program
        os._exit(70)
    os._exit(_run(program, kind))


def _stdin_fd(text):
    data = text.encode("utf-8", "surrogateescape")
    try:
        fd = os.memfd_create("stdin")
    except (AttributeError, OSError):  # the seccomp filter refuses memfd_create (a way around RLIMIT_AS)
        fd = _temp_fd()
    write_all(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _temp_fd():
    name = os.path.join(os.getcwd(), ".r1lab-stdin-" + os.urandom(8).hex())
    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    os.unlink(name)
    return fd


def _set_limits(limits):
    mb = 1 << 20
    cpu = int(limits["time_s"]) + 2
    pairs = [(resource.RLIMIT_AS, limits["memory_mb"] * mb), (resource.RLIMIT_CPU, cpu),
             (resource.RLIMIT_FSIZE, limits["disk_mb"] * mb), (resource.RLIMIT_NOFILE, limits["open_files"]),
             (resource.RLIMIT_CORE, 0)]
    if limits["nproc"]:
        pairs.append((resource.RLIMIT_NPROC, limits["nproc"]))
    for which, value in pairs:
        resource.setrlimit(which, (value, value))


def _run(program, kind):
    """Run the program in a fresh module; stdio: report how it ended; else serve calls.
    The worker's exit status: 1 if the program failed (for stdio, the status decides)."""
    import builtins

    name = "__main__" if kind == "stdio" else "solution"  # a __main__ guard must not read stdin in call mode
    module = type(sys)(name)
    module.__builtins__ = builtins
    sys.modules[name] = module
    sys.argv = ["<program>"]
    try:
        exec(compile(program, "<program>", "exec"), module.__dict__)
    except SystemExit as e:
        if kind != "stdio" or e.code not in (None, 0):
            _reply(("raised", "SystemExit", f"the program exited ({e.code!r}) before the tests ran"))
            return 1
    except BaseException as e:  # noqa: BLE001 -- any failure of the program is the program's
        _reply(("raised", type(e).__name__, _message(e)))
        return 1
    if kind == "stdio":
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:  # noqa: BLE001
                pass
        _reply(("exit",))
        return 0
    _reply(("ready", _names(module.__dict__)))
    _serve_calls(module.__dict__)
    return 0


def _names(ns):
    names = []
    for key, value in list(ns.items()):
        if not isinstance(key, str) or key.startswith("__"):
            continue
        if isinstance(value, type(sys)):
            names.append((key, "module", str(getattr(value, "__name__", ""))))
        elif callable(value):
            names.append((key, "call", None))
        else:  # a constant the tests may read; big tables stay behind (tests call, they rarely read)
            try:
                if len(value) > 10_000:
                    continue
            except Exception:  # noqa: BLE001 -- no len(): a scalar
                pass
            try:
                data = encode(value)
            except Exception:  # noqa: BLE001
                continue
            if len(data) <= 1 << 20:
                names.append((key, "value", data))
    return names


def _serve_calls(ns):
    while True:
        data = read_frame(WORKER_FDS)
        if data is None:
            os._exit(0)
        try:
            _, name, args, kwargs = decode(data)
            result = ("ok", encode(ns[name](*args, **kwargs)))
        except BaseException as e:  # noqa: BLE001 -- reported to the judge, which raises it in the test
            result = ("raised", "TypeError" if isinstance(e, Unencodable) else type(e).__name__, _message(e))
        _reply(result)


def _reply(message):
    try:
        data = encode(message)
    except BaseException:  # noqa: BLE001
        data = encode(("raised", "TypeError", "the reply can't be encoded"))
    write_all(WORKER_FDS + 1, frame(data))


def _message(e):
    try:
        return str(e)[:300]
    except BaseException:  # noqa: BLE001 -- a hostile __str__
        return ""


# ---------------------------------------------------------------------------------------------
# The server: forks workers and cleans up after them. Trusted, runs no program code.

def server(program, limits, mode, ctl_r, ctl_w, worker_fds):
    current = None
    while True:
        data = read_frame(ctl_r)
        message = marshal.loads(data) if data else ("exit",)
        if message[0] == "spawn":
            current = os.fork()
            if current == 0:
                os.close(ctl_r)
                os.close(ctl_w)
                worker(program, message[1], message[2], limits, worker_fds)
            try:
                os.setpgid(current, current)  # also here, so a kill can't race the worker's own call
            except OSError:
                pass
            write_all(ctl_w, frame(marshal.dumps(("pid", current))))
        elif message[0] == "clean":
            clean, status = _kill_all(current, mode)
            current = None
            write_all(ctl_w, frame(marshal.dumps(("clean", clean, status))))
        else:
            if current is not None:
                _kill_all(current, mode)
            os._exit(0)


def _kill_all(worker_pid, mode):
    """Kill the worker and everything it started; in a sandbox, every process but judge and server.

    (whether all are gone, the worker's wait status or None): a worker that had already exited
    keeps its own status, one that was still running gets SIGKILL's."""
    status = None
    if worker_pid is None and mode != "ns":
        return True, status
    if mode != "ns":  # weak isolation: only the worker's process group can be reached safely
        for kill in (os.killpg, os.kill):
            try:
                kill(worker_pid, 9)
            except OSError:
                pass
        return True, _reap(worker_pid)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            os.kill(-1, 9)  # pid 1 (the judge) and the caller are spared; one kill is atomic vs fork
        except ProcessLookupError:
            return True, status
        if worker_pid is not None:
            status = _reap(worker_pid)
            worker_pid = None
        else:
            time.sleep(0.001)  # orphans die and the judge reaps them
    return False, status


def _reap(pid):
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return None



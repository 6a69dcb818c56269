"""Which isolation this machine can give, and the command that starts the harness inside it.

Three kinds, strongest first; `r1lab.sandbox.runner.choose_isolation` probes them in order:

- ``root`` (the trainer runs as root, as in many containers): bubblewrap with new PID, network,
  mount, IPC and UTS namespaces. The program sees /usr (and the interpreter's own prefix)
  read-only, a minimal /dev, no /proc, a fresh size-capped tmpfs as /tmp (the only writable
  place), no network but its own loopback, an empty environment. The harness drops to an
  unprivileged uid of its own before it reads anything (root is exempt from RLIMIT_NPROC, so a
  fork bomb would otherwise be capped by nothing), and bwrap's no_new_privs and nosuid mounts
  keep it there.
- ``userns`` (a normal user; or root when the kind above fails, then bwrap is started as an
  unprivileged uid): the same sandbox inside a new user namespace, as its uid 65534. RLIMIT_NPROC
  is counted per user namespace, so each sandbox's process cap is its own.
- Both kinds add a seccomp filter (`r1lab.sandbox.seccomp`) where libseccomp can build one,
  and put each run in a cgroup v2 of its own (`r1lab.sandbox.cgroups`: memory.max, pids.max)
  where the trainer may create one; `Isolation.describe` says which of the two hold.
- ``weak`` (opt-in only): the harness runs directly, with rlimits, a scrubbed environment and
  a temp working directory (as an unprivileged uid when the trainer is root); the program can
  read the user's files and reach the network.
"""

from __future__ import annotations

import compileall
import contextlib
import dataclasses
import functools
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator

from r1lab.errors import R1labError
from r1lab.sandbox import seccomp
from r1lab.sandbox.cgroups import cgroup_parent
from r1lab.sandbox.limits import Limits

WEAK_ENV = "R1LAB_ALLOW_WEAK_SANDBOX"
HARNESS_DIR = str(Path(__file__).resolve().parent)
INSIDE_HARNESS_DIR = "/r1lab"
SANDBOX_UID = 65534  # the program's uid inside its user namespace ("nobody")
# Root-started sandboxes run as uid UID_BASE + slot, in a range of its own per trainer process (by
# pid), far above the uids of real accounts and of the usual subuid ranges.
UID_BASE = 1_900_000_000
UIDS_PER_PROCESS = 256
BOOT = "import sys; sys.path.append({dir!r}); import _harness; _harness.main()"
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


@dataclass(frozen=True)
class Isolation:
    kind: str  # "userns", "root" or "weak"
    python: str  # the interpreter; inside a sandbox it has the same path
    bwrap: str = ""
    binds: tuple[str, ...] = ()  # host directories bound read-only at the same path, besides /usr
    disable_userns: bool = False  # bwrap >= 0.8: the program can't make user namespaces of its own
    size_option: bool = False  # bwrap >= 0.8: the /tmp tmpfs is size-capped
    seccomp: bool = False  # the seccomp filter is installed (``bwrap --seccomp``)
    cgroup: str = ""  # a cgroup v2 folder the trainer may make per-run cgroups in; "": rlimits only

    @property
    def strong(self) -> bool:
        return self.kind != "weak"

    @property
    def needs_uid(self) -> bool:
        """Whether each run needs an unprivileged uid of its own: the trainer is root."""
        return self.kind == "root" or os.geteuid() == 0

    @property
    def spawn_as_uid(self) -> bool:
        """Start bwrap itself as that uid (a user namespace made by root would map to root)."""
        return self.kind == "userns" and os.geteuid() == 0

    def describe(self) -> str:
        text = {
            "userns": "bubblewrap: user, PID, network and mount namespaces; read-only /usr; tmpfs /tmp",
            "root": "bubblewrap as root: PID, network and mount namespaces; unprivileged uid; tmpfs /tmp",
            "weak": "WEAK: rlimits and a temp directory only; no network or filesystem isolation",
        }[self.kind]
        if self.strong:
            text += "; seccomp filter" if self.seccomp else "; no seccomp filter"
            text += f"; cgroup v2 memory.max and pids.max under {self.cgroup}" if self.cgroup else \
                "; no cgroup v2: memory and processes capped by per-process rlimits only"
        return text

    def command(self, limits: Limits, uid: int, info_fd: int | None, label: str,
                seccomp_fd: int | None = None) -> list[str]:
        """The argv that starts the harness's judge (`info_fd`: where bwrap writes the sandbox's pid;
        `seccomp_fd`: where it reads the seccomp filter)."""
        mode = "weak" if self.kind == "weak" else "ns"
        uid = -1 if self.spawn_as_uid else uid  # the judge drops to `uid` itself in the other kinds
        harness_dir = HARNESS_DIR if self.kind == "weak" else INSIDE_HARNESS_DIR
        python = [self.python, "-I", "-S", "-B", "-c", BOOT.format(dir=harness_dir), "judge", mode, str(uid), label]
        if self.kind == "weak":
            return python
        args = [self.bwrap, "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
                "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--as-pid-1",
                "--hostname", "sandbox", "--ro-bind", "/usr", "/usr"]
        args += _root_links()
        for path in self.binds:  # parents world-traversable, or the root kind's uid can't reach them
            args += _parent_dirs(path) + ["--ro-bind", path, path]
        args += ["--ro-bind", HARNESS_DIR, INSIDE_HARNESS_DIR, "--dev", "/dev"]
        if self.size_option:
            args += ["--size", str(limits.disk_mb << 20)]
        args += ["--perms", "1777", "--tmpfs", "/tmp", "--chdir", "/tmp", "--clearenv",
                 "--setenv", "PATH", ENV["PATH"], "--setenv", "LANG", ENV["LANG"],
                 "--setenv", "HOME", "/tmp", "--setenv", "TMPDIR", "/tmp"]
        if info_fd is not None:
            args += ["--info-fd", str(info_fd)]
        if seccomp_fd is not None:
            args += ["--seccomp", str(seccomp_fd)]
        args += ["--remount-ro", "/dev", "--remount-ro", "/"]  # only /tmp is writable
        if self.kind == "userns":
            args += ["--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)]
            args += ["--disable-userns"] if self.disable_userns else []
        else:  # root: the judge keeps only the capabilities it needs to drop to `uid`, then drops them
            args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        return args + python


def candidates() -> list[Isolation]:
    """The isolations to try on this machine, strongest first (weak last, always possible)."""
    for name in ("_harness.py", "_worker.py", "_wire.py"):  # their .pyc, so each sandbox loads them fast (if writable)
        compileall.compile_file(os.path.join(HARNESS_DIR, name), quiet=2)
    python = os.path.realpath(sys.executable)
    # The userns kind started by root, and weak, run the interpreter as an unprivileged uid, which
    # can't reach one installed under root's home (pyenv, conda): use the system's there.
    unprivileged = python if os.geteuid() != 0 or _reachable_by_all(python) else _system_python(python)
    weak = Isolation("weak", unprivileged)
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return [weak]
    help_text = _bwrap_help(bwrap)
    common = {"bwrap": bwrap, "size_option": "--size" in help_text}
    userns = Isolation("userns", unprivileged, binds=_interpreter_binds(unprivileged),
                       disable_userns="--disable-userns" in help_text, **common)
    found = [userns]
    if userns.disable_userns:  # a kernel that refuses nested user namespaces: try without
        found.append(Isolation("userns", unprivileged, binds=userns.binds, **common))
    if os.geteuid() == 0:
        found.insert(0, Isolation("root", python, binds=_interpreter_binds(python), **common))
    found = [dataclasses.replace(isolation, cgroup=cgroup_parent()) for isolation in found]
    if "--seccomp" in help_text and seccomp.filter_bytes() is not None:  # each kind with the filter first
        found = [variant for isolation in found
                 for variant in (dataclasses.replace(isolation, seccomp=True), isolation)]
    return found + [weak]


def _reachable_by_all(path: str) -> bool:
    """Every folder above `path` is searchable by others (mode o+x)."""
    parent = os.path.dirname(path)
    while parent not in ("/", ""):
        try:
            if not os.stat(parent).st_mode & 0o001:
                return False
        except OSError:
            return False
        parent = os.path.dirname(parent)
    return True


def _system_python(fallback: str) -> str:
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        real = os.path.realpath(candidate)
        if os.path.exists(real) and _reachable_by_all(real):
            return real
    return fallback


def weak_allowed(allow_weak_isolation: bool | None) -> bool:
    """The explicit argument wins; else the R1LAB_ALLOW_WEAK_SANDBOX=1 environment variable."""
    if allow_weak_isolation is not None:
        return bool(allow_weak_isolation)
    return os.environ.get(WEAK_ENV, "").strip().lower() in ("1", "true", "yes")


def no_isolation_error(failures: list[str]) -> R1labError:
    detail = "; ".join(failures) if failures else "bubblewrap (bwrap) is not installed"
    return R1labError(
        "running model-written code needs an isolated sandbox, and none works here "
        f"({detail}). Install bubblewrap (e.g. 'apt-get install bubblewrap') and allow user "
        f"namespaces, or accept weaker isolation (rlimits only; the code could read your files and "
        f"use the network) with allow_weak_isolation=True or {WEAK_ENV}=1"
    )


@functools.lru_cache(maxsize=4)
def _bwrap_help(bwrap: str) -> str:
    try:
        done = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10, env=ENV)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout + done.stderr


def _interpreter_binds(python: str) -> tuple[str, ...]:
    """Folders outside /usr the interpreter needs: its install prefix (and its binary's folder)."""
    prefix = os.path.realpath(sys.base_prefix) if python == os.path.realpath(sys.executable) else ""
    paths: list[str] = []
    for path in (prefix, os.path.dirname(python)):
        inside_usr = path == "/usr" or path.startswith("/usr/")
        covered = any(path == p or path.startswith(p + "/") for p in paths)
        if path and not inside_usr and not covered:
            paths.append(path)
    return tuple(paths)


def _parent_dirs(path: str) -> list[str]:
    args = []
    parts = Path(path).parts[1:-1]
    for i in range(len(parts)):
        args += ["--perms", "0755", "--dir", "/" + "/".join(parts[: i + 1])]
    return args


def _root_links() -> list[str]:
    """/bin, /lib... as on the host: symlinks into /usr (merged /usr) or read-only binds."""
    args = []
    for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(name):
            args += ["--symlink", os.readlink(name), name]
        elif os.path.isdir(name):
            args += ["--ro-bind", name, name]
    return args


class UidSlots:
    """Unprivileged uids for sandboxes started by root, one per sandbox running at once.

    RLIMIT_NPROC counts a uid's processes across the host, so sandboxes running at once must not
    share a uid, or one fork bomb would use up the others' process caps.
    """

    def __init__(self, base: int, count: int):
        self._base, self._count = base, count
        self._free = list(range(count))
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def take(self) -> Iterator[int]:
        with self._lock:
            if not self._free:
                raise R1labError(f"more than {self._count} sandboxes at once")
            slot = self._free.pop()
        try:
            yield self._base + slot
        finally:
            with self._lock:
                self._free.append(slot)


# The uid pool is process-wide by nature: two pools in one trainer must not hand out the same uid.
UID_SLOTS = UidSlots(UID_BASE + (os.getpid() % 100_000) * UIDS_PER_PROCESS, UIDS_PER_PROCESS)

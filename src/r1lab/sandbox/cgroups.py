"""A cgroup v2 per sandboxed run: memory and process count capped for the whole sandbox at once.

Rlimits are per process: RLIMIT_AS caps each process's address space (so `Limits.processes`
processes may hold `processes * memory_mb` together), RLIMIT_NPROC counts a uid's processes.
A cgroup caps the sum, and counts kernel memory an address space doesn't (tmpfs and pipe pages,
socket buffers). Each run gets ``<parent>/r1lab-<label>`` with

- ``memory.max`` = the program's `memory_mb` + `HARNESS_MB` for the judge and server,
  ``memory.swap.max`` = 0 (no escape to swap): past it the kernel's OOM killer ends a process;
- ``pids.max`` = `processes` + 2 (the judge and server): past it fork fails;

and the sandbox's first process (the judge) is moved in before it reads anything, so all it
starts is inside. At the end ``cgroup.kill`` ends whatever is left and the folder is removed.

Where: the trainer's own cgroup must be a cgroup v2 folder it can write and whose children may
use the memory and pids controllers (root on a cgroup v2 host, or a delegated systemd unit:
``systemd-run --user -p Delegate=yes``). Elsewhere (cgroup v1, or v2 without delegation, as in
most containers) `cgroup_parent` is "" and the sandbox keeps to its rlimits; `Isolation.describe`
says which holds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

from r1lab.sandbox.limits import Limits

logger = logging.getLogger(__name__)

ROOT = "/sys/fs/cgroup"
HARNESS_MB = 96  # the judge and the server: two small interpreters
CONTROLLERS = ("memory", "pids")


def cgroup_parent(root: str = ROOT, own: str = "/proc/self/cgroup") -> str:
    """The cgroup v2 folder to make per-run cgroups in (the trainer's own), or "" where there is none."""
    if not os.path.exists(os.path.join(root, "cgroup.controllers")):
        return ""  # no unified (v2) hierarchy here
    try:
        with open(own) as f:
            path = next((line[3:].strip() for line in f if line.startswith("0::")), None)
    except OSError:
        return ""
    if path is None:
        return ""
    parent = os.path.join(root, path.lstrip("/"))
    try:
        with open(os.path.join(parent, "cgroup.subtree_control")) as f:
            enabled = f.read().split()
        missing = [c for c in CONTROLLERS if c not in enabled]
        if missing:  # fails (EBUSY) where the parent holds processes and isn't the root: no delegation
            with open(os.path.join(parent, "cgroup.subtree_control"), "w") as f:
                f.write(" ".join(f"+{c}" for c in missing))
    except OSError as e:
        logger.info("code sandbox: no cgroup v2 limits (%s: %s)", parent, e)
        return ""
    return parent if os.access(parent, os.W_OK) else ""


class RunCgroup:
    """One run's cgroup: made with its limits on creation; `add` the sandbox's first process; `close`."""

    def __init__(self, parent: str, limits: Limits, label: str):
        self.path = os.path.join(parent, "r1lab-" + label.replace("/", "_"))
        os.mkdir(self.path)
        try:
            self._write("memory.max", str((limits.memory_mb + HARNESS_MB) << 20))
            self._write("pids.max", str(limits.processes + 2))
            with contextlib.suppress(OSError):  # no swap accounting on this kernel: no swap to escape to
                self._write("memory.swap.max", "0")
        except OSError:
            self.close()
            raise

    def add(self, pid: int) -> None:
        self._write("cgroup.procs", str(pid))

    def close(self) -> None:
        """Kill whatever is still inside (kernel >= 5.14), then remove the folder."""
        with contextlib.suppress(OSError):
            self._write("cgroup.kill", "1")
        for _ in range(100):  # the killed processes leave the cgroup within milliseconds
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.01)
        logger.warning("code sandbox: could not remove the cgroup %s", self.path)

    def _write(self, name: str, value: str) -> None:
        with open(os.path.join(self.path, name), "w") as f:
            f.write(value)

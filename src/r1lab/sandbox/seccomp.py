"""The sandbox's seccomp filter: system calls that would get a program around its limits fail.

bubblewrap installs it (``bwrap --seccomp FD``) on the sandbox's first process just before the
harness starts, so it holds for the judge, the server and every process the program makes.
Built with libseccomp (through `pyseccomp`, its ctypes binding), which also kills any call made
through another ABI (32-bit ``int 0x80``, x32) than the interpreter's. Where libseccomp or its
binding is missing the sandbox runs without the filter and says so (`Isolation.describe`).

What it refuses (EPERM), and why rlimits alone don't stop it:

- memory the address-space limit (RLIMIT_AS) doesn't count: memfd and SysV shared-memory pages
  live in the kernel until mapped (a detached segment stays), POSIX message queues too;
- new namespaces and mounts: in a user namespace of its own a program may mount a tmpfs with no
  size limit (memory again) and see around the sandbox's mounts;
- reading or steering other processes or the kernel: ptrace, process_vm_*, pidfd_getfd, kcmp,
  perf events, BPF, userfaultfd, io_uring (a second way to make every call above), keyrings.

``clone3`` fails with ENOSYS, so the C library falls back to ``clone``, whose flags the filter
can see (clone3 passes them in memory a filter can't read); ``clone`` with a namespace flag fails.
"""

from __future__ import annotations

import errno
import functools
import logging
import tempfile

logger = logging.getLogger(__name__)

BLOCKED = (
    "memfd_create", "memfd_secret", "shmget", "shmat", "mq_open",
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "mount_setattr", "move_mount", "open_tree",
    "fsopen", "fsconfig", "fsmount", "fspick",
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp", "perf_event_open", "bpf",
    "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "keyctl", "add_key", "request_key",
)
# CLONE_NEWTIME, CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET
NAMESPACE_FLAGS = (0x80, 0x20000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)


@functools.lru_cache(maxsize=1)
def filter_bytes() -> bytes | None:
    """The compiled BPF program for ``bwrap --seccomp``, or None where libseccomp can't build it."""
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError) as e:  # the binding, or libseccomp.so.2 itself, is missing
        logger.info("code sandbox: no seccomp filter (%s)", e)
        return None
    try:
        rules = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        for name in BLOCKED:
            try:
                rules.add_rule(seccomp.ERRNO(errno.EPERM), name)
            except (ValueError, RuntimeError, OSError):  # a call this libseccomp or architecture lacks
                continue
        rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
        for flag in NAMESPACE_FLAGS:
            rules.add_rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
        with tempfile.TemporaryFile() as f:
            rules.export_bpf(f)
            f.seek(0)
            return f.read()
    except (ValueError, RuntimeError, OSError) as e:
        logger.warning("code sandbox: can't build the seccomp filter (%s); running without it", e)
        return None

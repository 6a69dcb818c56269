"""What one sandboxed run may use: every limit in one frozen dataclass, validated on creation."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from r1lab.errors import R1labError

SLACK_S = 8.0  # seconds on top of a run's test time: bwrap and the harness start (slow on a loaded
# machine), the clean-up after a hostile test (killing its processes: up to 2 s), the harness's exit


@dataclass(frozen=True)
class Limits:
    """Per-test limits of the program under test (the harness's own processes are not counted).

    Memory and processes are per-process rlimits, and, where a cgroup v2 can be made, also
    caps on the whole sandbox (`r1lab.sandbox.cgroups`); with rlimits only, a program can hold
    at most ``processes * memory_mb`` at once (8 GiB with the defaults). A test's wall time covers
    starting the program, its top-level code and the test; `total_s` caps a whole run, so a
    program that hangs on every input costs 20 s, not 4 s per test. CPU time is capped at the
    wall time + 2 s per process, so a busy loop is killed even if the wall clock is not watched.
    """

    time_s: float = 4.0  # wall seconds per test
    total_s: float = 20.0  # wall seconds for all of a run's tests; tests left when it is spent fail unrun
    memory_mb: int = 512  # address space of each process (RLIMIT_AS)
    processes: int = 16  # processes and threads at once, the program's first process included
    open_files: int = 64  # file descriptors of each process
    output_kb: int = 1024  # stdout + stderr per test; more fails the test
    disk_mb: int = 32  # the sandbox's writable /tmp (a tmpfs) and the largest file in it

    def __post_init__(self) -> None:
        for name in ("time_s", "total_s"):
            if not 0 < getattr(self, name) <= 3600:
                raise R1labError(f"sandbox {name} must be in (0, 3600] seconds, got {getattr(self, name)}")
        for name in ("memory_mb", "processes", "open_files", "output_kb", "disk_mb"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise R1labError(f"sandbox limit '{name}' must be a positive integer, got {value!r}")
        if self.memory_mb < 64:
            raise R1labError(f"sandbox memory_mb must be at least 64 (Python itself needs ~30), got {self.memory_mb}")
        if self.open_files < 16:
            raise R1labError(f"sandbox open_files must be at least 16, got {self.open_files}")

    def run_budget(self, num_tests: int) -> float:
        """Seconds after which the trainer kills a whole run, whatever runs in it: a hard deadline,
        enforced from outside the sandbox. The harness times each test itself, but a test stuck in
        C code (a set of values built to collide in the hash table) doesn't see its alarm; this
        catches it. The tests' own time, plus `SLACK_S` to start the sandbox and to clean up."""
        return min(num_tests * self.time_s, self.total_s) + SLACK_S

    def for_harness(self, nproc: int) -> dict:
        """The limits as the harness reads them (it can't import r1lab); `nproc` 0: no process cap."""
        return {**asdict(self), "output_bytes": self.output_kb * 1024, "nproc": nproc}

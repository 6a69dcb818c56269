"""Running model-written code safely: the sandbox behind the code reward and code evaluation.

    from r1lab.sandbox import SandboxPool, parse_tests
    with SandboxPool() as pool:
        [result] = pool.run([("def f(x):\\n    return 3 * x + 2", parse_tests("assert f(1) == 5"))])
    result.passed, result.total, result.status   # (1, 1, 'passed')

The program is the untrusted output of a model under optimisation pressure. Two questions:

1. Can it harm the host? Each run is a bubblewrap sandbox (`isolation`): new PID, network,
   mount, IPC and UTS namespaces (and a user namespace unless the trainer is root, where the
   sandbox drops to an unprivileged uid of its own instead); it sees /usr and the
   interpreter read-only, no /proc, a fresh size-capped tmpfs /tmp, a scrubbed environment;
   rlimits (`Limits`) cap each process's address space, CPU time, processes, open files and
   file sizes, and each test's wall time and output; a seccomp filter (`seccomp`) refuses the
   calls that get around them (memfd, SysV shared memory, new namespaces, ptrace...); a cgroup
   v2 per run (`cgroups`: memory.max, pids.max) caps the sandbox as a whole where the trainer
   may make one. When the run ends, or at the trainer's hard deadline (the tests' time + 8 s,
   enforced from outside), the sandbox's pid 1 dies and the kernel kills every process in its
   PID namespace, so nothing the program started outlives it. Without bubblewrap r1lab refuses
   (R1labError), unless weak isolation (rlimits only) is allowed explicitly.

2. Can it fake a pass? A test passes only when the *test's own code* runs to its end in a
   process that never executes a line of the program. Inside the sandbox (`_harness`):

   - the judge (pid 1) reads the program, forks a server, and only then reads the tests. It
     runs each test's code itself; the program's functions are proxies that send plain data
     (numbers, strings, bytes, lists, tuples, dicts, sets) to a worker and get plain data back,
     decoded by a strict parser. A returned object can't override ``==`` (the "always equal"
     hack), patch ``assert``, ``AssertionError``, builtins or the judge's code: none of it exists
     on the judge's side. The test runs with the judge's real builtins (a program's ``len`` or
     ``all`` never enters its namespace), and an exception from the program can't end a test's
     iteration as if complete (``StopIteration`` in ``all(map(...))`` becomes RuntimeError).
     Only the judge can write to the trainer; no other process holds that pipe, there is no
     /proc to reopen it through, the judge is not dumpable, so it can't be ptraced, and the
     trainer reads only lines carrying a per-run secret; as pid 1 it ignores SIGKILL from inside.
   - each test gets a fresh worker, forked from the server, whose memory never held a test or
     an expected output: the program can't read the answers. Stdin/stdout tests are compared
     with the expected output by the trainer, outside the sandbox.
   - a stdin/stdout run passes only if the program's process itself ended with status 0 (its
     messages decide nothing); a call-mode worker that exits (``sys.exit(0)``, ``os._exit(0)``),
     prints "PASSED", kills or stops its parent (the server; the test then counts as failed),
     or raises SystemExit inside a call, leaves the test unfinished: failed. A timeout, a dead worker or too much output
     fails the test even if the test's own ``except:`` swallowed it. Exit codes and printed text
     decide nothing (except that a stdin/stdout program's stdout is its answer).

   The price: values crossing the boundary must be plain data, so a test that passes a callback
   to the program, or checks an argument the program mutated in place, can't pass.
"""

from r1lab.sandbox.cases import CodeTest, normalise_output, parse_tests
from r1lab.sandbox.isolation import WEAK_ENV, Isolation
from r1lab.sandbox.limits import Limits
from r1lab.sandbox.pool import SandboxPool, default_pool
from r1lab.sandbox.runner import ExecResult, choose_isolation, run_tests

__all__ = ["CodeTest", "ExecResult", "Isolation", "Limits", "SandboxPool", "WEAK_ENV", "choose_isolation",
           "default_pool", "normalise_output", "parse_tests", "run_tests"]

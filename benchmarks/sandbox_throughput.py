"""How many short sandboxed test executions per second the code reward gets on this machine.

    python benchmarks/sandbox_throughput.py                 # 200 runs, default workers (4 per core)
    python benchmarks/sandbox_throughput.py --runs 400 --workers 4 --tests 3

One execution = one completion run against its tests in a fresh sandbox (bubblewrap, new
namespaces, the harness's judge/server/worker processes): the unit of work of `code_reward`.
The programs are small correct solutions of the micro code task, so the number measures the
sandbox's overhead, not the programs. The target of issue 5: >= 50 executions/s on 2 cores.
On a shared machine the wall-clock rate depends on the other load; the CPU time per execution
(all processes of the sandbox) gives the rate the cores could sustain if they were free.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import time

from r1lab.sandbox import Limits, SandboxPool, parse_tests


def jobs(n: int, tests_per_run: int, seed: int = 0) -> list[tuple[str, tuple]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(2, 9), rng.randint(0, 9)
        program = f"def f(x):\n    return {a} * x + {b}\n"
        tests = "\n".join(f"assert f({x}) == {a * x + b}" for x in range(1, tests_per_run + 1))
        out.append((program, parse_tests(tests)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=0, help="default: 4 per core, at most 32")
    parser.add_argument("--tests", type=int, default=1, help="asserts per run")
    args = parser.parse_args()
    work = jobs(args.runs, args.tests)
    with SandboxPool(workers=args.workers or None, limits=Limits(time_s=10.0)) as pool:
        pool.run(work[:4])  # warm up: page cache, .pyc files
        cpu_before = _cpu_seconds()
        start = time.perf_counter()
        results = pool.run(work)
        elapsed = time.perf_counter() - start
        cpu = (_cpu_seconds() - cpu_before) / len(work)
    bad = [r for r in results if r.status != "passed"]
    print(f"isolation: {pool.isolation.kind} ({pool.isolation.describe()})")
    print(f"cores: {os.cpu_count()}  workers: {pool.workers}  runs: {len(results)}  tests per run: {args.tests}")
    print(f"per run: median {statistics.median(r.seconds for r in results) * 1000:.0f} ms")
    print(f"executions/s: {len(results) / elapsed:.1f}  (test executions/s: {len(results) * args.tests / elapsed:.1f})")
    cores = os.cpu_count() or 1
    print(f"CPU per execution: {cpu * 1000:.1f} ms -> {cores / cpu:.0f} executions/s if the {cores} cores were free")
    if bad:
        print(f"{len(bad)} runs did not pass, e.g. {bad[0].reason}")


def _cpu_seconds() -> float:
    """User + system time of this process and of every finished sandbox (bwrap and all below it)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


if __name__ == "__main__":
    main()

"""Programs a policy could write to fake a pass, and what the sandbox does with them.

Each class of attack has a hostile program (wrong, but built to pass) that must score 0, and
where it matters a control: the same trick with a correct program still passes, or the attack
really works where the defence is missing (weak isolation, no seccomp), so its 0 means something.
"""

import time
import uuid

import pytest

from test_sandbox import ISOLATION, needs_sandbox  # the isolation this machine gives (tests/ is on sys.path)

from r1lab.errors import R1labError
from r1lab.sandbox import Limits, _wire, parse_tests, run_tests, runner
from r1lab.sandbox.cgroups import RunCgroup, cgroup_parent
from r1lab.sandbox.isolation import Isolation
from r1lab.sandbox.limits import SLACK_S

LIMITS = Limits(time_s=2.0, total_s=4.0)
WRONG = "def f(x):\n    return 0\n"
RIGHT = "def f(x):\n    return 3 * x + 2\n"


needs_seccomp = pytest.mark.skipif(ISOLATION is None or not ISOLATION.seccomp,
                                   reason="no seccomp filter here (bubblewrap without --seccomp, or no libseccomp)")


def _run(program, tests, limits=LIMITS, isolation=None):
    return run_tests(program, parse_tests(tests), limits, isolation or ISOLATION, f"r1lab-test-{uuid.uuid4().hex[:10]}")


# --- the program's names can't stand in for the test's ------------------------------------------

SHADOWS = {
    "len": ("def len(x):\n    return 5\n", "assert len([f(1)] * f(1)) == 5"),
    "all": ("def all(x):\n    return True\n", "assert all([f(1) == 5, f(2) == 8])"),
    "abs": ("abs = lambda x: 0\n", "assert abs(f(1) - 5) < 1e-9"),
    "set": ("class set:\n    def __init__(self, *a):\n        pass\n    def __eq__(self, o):\n        return True\n",
            "assert set([f(1)]) == {5}"),
    "sorted": ("def sorted(x, **k):\n    return [1, 2, 3]\n", "assert sorted([f(1), 1, 2]) == [1, 2, 5]"),
    "isinstance": ("isinstance = lambda *a: True\n",
                   "assert isinstance(f(1), int) if f(1) == 5 else isinstance(f(1), str)"),
    "max": ("def max(*a):\n    return 5\n", "assert max(f(1), 0) == 5"),
    "__builtins__": ("__builtins__ = {}\n", "assert f(1) == 5"),
    "check": ("def check(candidate):\n    pass\n", "def check(candidate):\n    assert candidate(1) == 5\ncheck(f)"),
}


@needs_sandbox
@pytest.mark.parametrize("name", list(SHADOWS))
def test_a_program_cannot_redefine_what_the_test_uses(name):
    extra, test = SHADOWS[name]
    assert _run(WRONG + extra, test).passed == 0
    assert _run(RIGHT + extra, test).passed == 1  # the test's names are the real ones: right code still passes


@needs_sandbox
def test_a_forged_ready_message_cannot_bring_in_builtins():
    """The worker is the program's: it can announce any names, `__builtins__` and `len` included."""
    forge = ("import os, sys\nsys.path.append('/r1lab')\nfrom _wire import encode, frame\n"
             "names = [('__builtins__', 'value', encode({})), ('len', 'call', None), ('f', 'call', None)]\n"
             "os.write(4, frame(encode(('ready', names))))\n")
    result = _run(WRONG + "def len(x):\n    return 5\n" + forge, "assert len(f(3)) == 5")
    assert result.passed == 0


# --- exceptions that would end a check early ---------------------------------------------------

@needs_sandbox
@pytest.mark.parametrize("raised", ["StopIteration", "StopAsyncIteration", "GeneratorExit", "KeyboardInterrupt"])
@pytest.mark.parametrize("test", [
    "assert all(map(lambda x: f(x) == 3 * x + 2, [1, 2, 3]))",
    "assert all(f(x) == 3 * x + 2 for x in [1, 2, 3])",
    "assert list(filter(lambda x: f(x) != 3 * x + 2, [1, 2])) == []",
    "assert not any(map(lambda x: f(x) != 3 * x + 2, [1, 2]))",
    "for a, b in zip(map(f, [1, 2]), [5, 8]):\n    assert a == b",
    "import itertools\nassert all(itertools.starmap(lambda x: f(x) == 3 * x + 2, [(1,), (2,)]))",
])
def test_an_exception_from_the_program_never_ends_an_iteration_as_done(raised, test):
    assert _run(f"def f(x):\n    raise {raised}\n", test).passed == 0
    assert _run(RIGHT, test).passed == 1


# --- tests in which nothing runs ---------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "def check(candidate):\n    assert candidate(1) == 5\n",
    "METADATA = {}\n\ndef check(candidate):\n    assert candidate(1) == 5\n",
    "import math\nx = 3\nclass T:\n    def test(self):\n        assert f(1) == 5\n",
    ["def check(candidate):\n    assert candidate(1) == 5\n"],
    ["x = 1"],
])
def test_a_test_text_in_which_nothing_runs_is_refused(text):
    with pytest.raises(R1labError, match="nothing in the test"):
        parse_tests(text)


def test_humaneval_tests_get_their_check_call_from_the_entry_point():
    text = "METADATA = {}\n\ndef check(candidate):\n    assert candidate(1) == 5\n"
    [test] = parse_tests(text, entry_point="f")
    assert test.source.rstrip().endswith("check(f)")
    with pytest.raises(R1labError, match="not a Python name"):
        parse_tests(text, entry_point="f(); import os")


@needs_sandbox
def test_the_code_reward_calls_humaneval_checks_and_refuses_checkless_tests():
    from r1lab.rewards.code_tests import make_code_reward
    from r1lab.sandbox import SandboxPool

    text = "def check(candidate):\n    assert candidate(1) == 5\n"
    completions = [f"```python\n{RIGHT}```", f"```python\n{WRONG}```"]
    with SandboxPool(workers=2, limits=LIMITS, isolation=ISOLATION) as pool:
        reward = make_code_reward(pool=pool)
        assert reward(completions, tests=[text, text], entry_point=["f", "f"]) == [1.0, 0.0]
        assert reward(completions, tests=[text, text]) == [None, None]  # can't be judged: no call, no entry point


def test_pytest_functions_are_each_one_test_and_are_called():
    tests = parse_tests("import math\ndef test_one():\n    assert f(1) == 5\ndef test_two():\n    assert f(2) == 8\n"
                        "def helper(x):\n    return x\n")
    assert [t.source.splitlines()[-1] for t in tests] == ["test_one()", "test_two()"]


@needs_sandbox
def test_pytest_functions_judge_the_program():
    tests = "def test_one():\n    assert f(1) == 5\ndef test_two():\n    assert f(2) == 8\n"
    assert (_run(RIGHT, tests).passed, _run(WRONG, tests).passed) == (2, 0)


# --- the channels: to the trainer, and the worker's own ----------------------------------------

def test_lines_without_the_runs_secret_are_ignored(tmp_path):
    """A process that reaches the trainer's pipe (weak isolation can, through /proc) can't forge
    results: here the whole 'harness' is a forger, and nothing it writes counts."""
    forger = tmp_path / "forger"
    forger.write_text("#!/bin/sh\ncat > /dev/null\necho \"('result', 0, 'passed', '', None, 1)\"\n"
                      "echo \"deadbeef ('result', 0, 'passed', '', None, 1)\"\necho \"('done', 1)\"\n")
    forger.chmod(0o755)
    result = run_tests(RIGHT, parse_tests("assert f(1) == 5"), LIMITS, Isolation("weak", str(forger)))
    assert (result.passed, result.status) == (0, "error")


STDIO = [{"input": "", "output": "3\n"}]
FORGED_EXIT = ("import os, sys\nsys.path.append('/r1lab')\nfrom _wire import encode, frame\nprint(3, flush=True)\n"
               "os.write(4, frame(encode(('exit',))))\n")


@needs_sandbox
@pytest.mark.parametrize("after", ["import time\ntime.sleep(100)\n", "os._exit(1)\n", "raise SystemExit(3)\n",
                                   "os.kill(os.getpid(), 9)\n"])
def test_a_stdio_program_passes_only_if_its_process_ends_with_status_0(after):
    result = _run(FORGED_EXIT + after, STDIO)
    assert result.passed == 0, result
    ended_by_itself = "print(3, flush=True)\nimport os\nos._exit(0)\n"  # early, by itself, with 0: fine
    assert _run(ended_by_itself, STDIO).passed == 1
    assert _run("print(3)\nraise SystemExit(0)\n", STDIO).passed == 1


# --- time: the whole run has a hard deadline ---------------------------------------------------

@needs_sandbox
def test_values_built_to_collide_in_a_hash_table_are_refused_quickly():
    program = "P = (1 << 61) - 1\ndef f(x):\n    return [i * P for i in range(30_000)]\n"
    limits = Limits(time_s=10.0)  # generous: the refusal, not the alarm, must end it (even on a loaded machine)
    start = time.monotonic()
    result = _run(program, "assert len(set(f(1))) == 30_000", limits)
    assert result.passed == 0 and "collide" in result.reason, result
    assert time.monotonic() - start < limits.time_s + SLACK_S


def test_wire_refuses_colliding_values_but_not_repeats():
    P = (1 << 61) - 1
    with pytest.raises(ValueError, match="collide"):
        _wire.decode(_wire.encode([i * P for i in range(1000)]))
    with pytest.raises(ValueError, match="collide"):
        _wire.decode(_wire.encode({(i * P, 1) for i in range(40)} | {(i * P, 2) for i in range(40)}))
    assert _wire.decode(_wire.encode([7] * 10_000)) == [7] * 10_000  # equal values share a hash: fine
    assert len(_wire.decode(_wire.encode(list(range(100_000))))) == 100_000


@needs_sandbox
def test_a_test_stuck_in_c_code_is_killed_at_the_runs_deadline():
    """sum(range(n)) on the program's n runs in C without checking for signals, so the judge's
    alarm can't stop it; the trainer's deadline (the tests' time + SLACK_S) does."""
    program = "def f(x):\n    return 10 ** 12\n"
    limits = Limits(time_s=1.0, total_s=1.0)
    start = time.monotonic()
    result = _run(program, "assert sum(range(f(1))) == 0", limits)
    seconds = time.monotonic() - start
    assert result.passed == 0 and result.status == "failed" and "deadline" in result.reason, result
    assert limits.run_budget(1) <= seconds < limits.run_budget(1) + 3.0


@needs_sandbox
def test_the_judge_memory_is_capped_too():
    result = _run("def f(x):\n    return 8 << 30\n", "assert len('x' * f(1)) > 0", Limits(time_s=5.0))
    assert result.passed == 0 and "MemoryError" in result.reason, result


# --- memory and processes past the per-process limits ------------------------------------------

MEMFD = ("import os\ndef f(x):\n    fds = []\n    for _ in range(3):\n        fd = os.memfd_create('m')\n"
         "        os.write(fd, b'x' * (30 << 20))\n        fds.append(fd)\n    return 'escaped'\n")
SHM = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\ndef f(x):\n"
       "    return 'escaped' if libc.shmget(0, 16 << 20, 0o1600) >= 0 else ctypes.get_errno()\n")
NAMESPACE = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\ndef f(x):\n"
             "    return 'escaped' if libc.unshare(0x10000000 | 0x20000) == 0 else ctypes.get_errno()\n")


@needs_seccomp
@pytest.mark.parametrize("program, refused", [(MEMFD, "PermissionError"), (SHM, ": 1"), (NAMESPACE, ": 1")],
                         ids=["memfd", "SysV shm", "user+mount namespace"])
def test_memory_outside_the_address_space_limit_is_refused(program, refused):
    result = _run(program, "assert f(0) == 'escaped', f(0)", Limits(time_s=5.0, memory_mb=64))
    assert result.passed == 0 and refused in result.reason, result  # EPERM from the filter


@needs_seccomp
def test_the_memfd_attack_works_without_seccomp():
    """Control: with the same limits but no filter, 90 MB of memfd fit under a 64 MB address space."""
    import dataclasses

    unfiltered = dataclasses.replace(ISOLATION, seccomp=False)
    assert _run(MEMFD, "assert f(0) == 'escaped'", Limits(time_s=5.0, memory_mb=64), unfiltered).passed == 1
    assert _run(MEMFD, "assert f(0) == 'escaped'", Limits(time_s=5.0, memory_mb=64)).passed == 0


def test_cgroup_v2_per_run_files(tmp_path):
    """The files a run's cgroup gets, on a fake cgroup folder (the real one needs cgroup v2 + delegation)."""
    run = RunCgroup(str(tmp_path), Limits(memory_mb=256, processes=8), "x1")
    folder = tmp_path / "r1lab-x1"
    assert (folder / "memory.max").read_text() == str((256 + 96) << 20)
    assert (folder / "pids.max").read_text() == "10"
    run.add(1234)
    assert (folder / "cgroup.procs").read_text() == "1234"
    assert cgroup_parent(root=str(tmp_path / "none")) == ""  # no cgroup.controllers: not cgroup v2


def test_cgroup_parent_enables_the_controllers_for_its_children(tmp_path):
    root, own = tmp_path / "cg", tmp_path / "self_cgroup"
    (root / "trainer.scope").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory pids")
    (root / "trainer.scope" / "cgroup.subtree_control").write_text("cpu")
    own.write_text("0::/trainer.scope\n")
    assert cgroup_parent(str(root), str(own)) == str(root / "trainer.scope")
    assert (root / "trainer.scope" / "cgroup.subtree_control").read_text() == "+memory +pids"
    own.write_text("1:name=systemd:/\n")  # cgroup v1 only: no unified entry
    assert cgroup_parent(str(root), str(own)) == ""


@pytest.mark.skipif(not cgroup_parent(), reason="no writable cgroup v2 with memory and pids controllers here")
@needs_sandbox
def test_cgroup_caps_the_sandboxs_processes_together():
    bomb = "import os, time\ndef f(x):\n    n = 0\n    try:\n        for _ in range(64):\n" \
           "            if os.fork() == 0:\n" \
           "                time.sleep(30)\n            n += 1\n    except OSError:\n        pass\n    return n\n"
    result = _run(bomb, "assert f(0) >= 64", Limits(time_s=5.0, processes=8))
    assert result.passed == 0


# --- modules the program fakes ------------------------------------------------------------------

FAKES = {
    "sys.modules": "import sys, types\nm = types.ModuleType('math')\nm.isclose = lambda *a, **k: True\n"
                   "m.sqrt = lambda x: 0\nsys.modules['math'] = m\n",
    "math.py in /tmp and cwd": "import os\nfor d in ('/tmp', os.getcwd()):\n    try:\n"
                               "        open(os.path.join(d, 'math.py'), 'w').write('isclose = lambda *a, **k: True')\n"
                               "    except OSError:\n        pass\n",
    "spoofed module name": "import types\nmath = types.ModuleType('ensurepip.__main__')\n"
                           "tool = types.ModuleType('unittest.__main__')\n",
    "harness module in /tmp": "open('/tmp/_wire.py', 'w').write('raise SystemExit')\n"
                              "open('/tmp/_harness.py', 'w').write('raise SystemExit')\n",
}


@needs_sandbox
@pytest.mark.parametrize("name", list(FAKES))
def test_a_faked_module_changes_nothing_for_the_test(name):
    tests = "import math\nassert math.isclose(f(1), 5)\nassert math.sqrt(f(7) + 2) == 5"
    assert _run(WRONG + FAKES[name], tests).passed == 0
    assert _run(RIGHT + FAKES[name], tests).passed == 2


@needs_sandbox
def test_no_sandbox_process_is_left():
    time.sleep(0.05)
    assert runner.kill_labelled("r1lab-test-") == 0


@needs_sandbox
def test_printing_a_full_output_on_every_test_cannot_flood_the_trainer():
    """Each test may print up to output_kb; the run's report to the trainer is capped as a whole."""
    flood = "import sys\nsys.stdout.write('\\x01' * (1 << 20))\n"
    limits = Limits(time_s=5.0, total_s=60.0, output_kb=1024)
    result = _run(flood, [{"input": "", "output": "\x01" * (1 << 20)}] * 60, limits)
    assert result.passed == 48 and "MiB in all" in result.reason, result  # right answers, until the cap


def test_an_interrupted_pool_run_cancels_the_waiting_runs(monkeypatch):
    from r1lab.sandbox import SandboxPool
    from r1lab.sandbox.runner import ExecResult

    started = []

    def slow(program, tests, limits, isolation, label):
        started.append(program)
        if program == "interrupt":
            raise KeyboardInterrupt
        time.sleep(0.2)
        return ExecResult(1, 1, "passed", "", 0.2)

    monkeypatch.setattr("r1lab.sandbox.pool.run_tests", slow)
    pool = SandboxPool(workers=1, isolation=Isolation("weak", "/bin/false"))
    tests = parse_tests("assert f(1) == 5")
    jobs = [("interrupt", tests)] + [(str(i), tests) for i in range(20)]
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        pool.run(jobs)
    pool.close()
    assert time.monotonic() - start < 2.0 and len(started) <= 2


@needs_sandbox
def test_the_runs_secret_is_never_in_a_workers_memory(monkeypatch):
    secret = "feedface" + uuid.uuid4().hex[:24]
    monkeypatch.setattr(runner.secrets, "token_hex", lambda n: secret)
    search = ("import gc\ndef f(x):\n    return [s for o in gc.get_objects() if isinstance(o, (dict, list, tuple))\n"
              "            for s in (o.values() if isinstance(o, dict) else o)\n"
              "            if isinstance(s, (str, bytes)) and len(s) == 32 and s[:8] in ('feedface', b'feedface')]\n")
    result = _run(search, "assert f(0) == [], f(0)")
    assert result.passed == 1, result  # and the run itself worked: the secret did reach the judge


@needs_sandbox
def test_a_humaneval_completion_cannot_redefine_the_prompts_helpers():
    """HumanEval/38's test decodes with the prompt's encode_cyclic: a completion that makes both
    the identity would pass if the test used the program's encode_cyclic."""
    from r1lab.evaluation.code_eval import evaluate_code_rows
    from r1lab.sandbox import SandboxPool

    row = {"prompt": "def enc(s: str):\n    return s[::-1]\n\n\ndef dec(s: str):\n    \"\"\"Undo enc.\"\"\"\n",
           "test": "def check(candidate):\n    assert candidate(enc('abc')) == 'abc'\n", "entry_point": "dec"}
    hack = "```python\ndef enc(s):\n    return s\n\ndef dec(s):\n    return s\n```"
    right = "```python\ndef dec(s):\n    return s[::-1]\n```"
    with SandboxPool(workers=2, limits=LIMITS, isolation=ISOLATION) as pool:
        metrics = evaluate_code_rows([row], [[hack, right]], pool=pool, ks=(1,))
    assert metrics["problems"][0]["correct"] == 1 and metrics["pass@1"] == 0.5

"""The code sandbox: hostile programs score 0, in bounded time, and leave the host untouched.

Tests that need the sandbox skip, with the reason, where no bubblewrap isolation works (`make
test` installs bubblewrap when it can). The rest (wire format, test layouts, code extraction,
pass@k, the code task) run everywhere.
"""

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from r1lab.evaluation.code_eval import evaluate_code_rows
from r1lab.errors import R1labError
from r1lab.rewards.code_tests import binary_code_reward, code_reward, extract_code, make_code_reward
from r1lab.sandbox import ExecResult, Limits, SandboxPool, _wire, parse_tests, run_tests, runner
from r1lab.sandbox.isolation import WEAK_ENV, Isolation, weak_allowed
from r1lab.sandbox.runner import kill_labelled
from r1lab.micro.tasks.base import TraceStyle
from r1lab.micro.tasks.programs import TEMPLATES, CodeTask, Spec, unfence

LIMITS = Limits(time_s=1.0)
BOUND = LIMITS.time_s + 4.0  # seconds any one hostile run may take, everything included, on a loaded machine
GOOD = "def f(x):\n    return 3 * x + 2\n"
TESTS = "assert f(1) == 5"


def _isolation():
    try:
        return runner.choose_isolation(allow_weak_isolation=False), ""
    except R1labError as e:
        return None, str(e)


ISOLATION, WHY_NOT = _isolation()
needs_sandbox = pytest.mark.skipif(ISOLATION is None, reason=f"no sandbox isolation on this machine: {WHY_NOT}")


# --- wire format, test layouts, extraction: no sandbox needed -------------------------------------


@pytest.mark.parametrize("value", [
    None, True, False, ..., 0, -7, 3 ** 200, 1.5, float("inf"), -0.0, 2 + 3j, "", "héllo\n\udc80", b"\x00\xff",
    [1, [2, [3, []]]], (1, "a"), {"k": [1, 2], 3: (4,)}, {1, 2}, frozenset({"a"}), range(2, 9, 3),
])
def test_wire_round_trips_plain_data(value):
    assert _wire.decode(_wire.encode(value)) == value or value != value


def test_wire_materialises_iterators_and_refuses_objects():
    assert list(_wire.decode(_wire.encode(x * x for x in range(4)))) == [0, 1, 4, 9]

    class AlwaysEqual:
        def __eq__(self, other):
            return True

    with pytest.raises(TypeError, match="can't cross the sandbox boundary"):
        _wire.encode(AlwaysEqual())
    loop = []
    loop.append(loop)
    with pytest.raises(TypeError):
        _wire.encode(loop)


@pytest.mark.parametrize("data", [
    b"", b"l3;i1;", b"i1;i2;", b"s5:ab", b"s-1:", b"q", b"l" * 5000 + b"1;", b"l99999999;", b"S1;l0;", b"i;", b"f1e;",
    b"s2:\xff\xfe", b"d1;i1;",
])
def test_wire_decode_refuses_malformed_input_quickly(data):
    start = time.monotonic()
    with pytest.raises((ValueError, TypeError, UnicodeDecodeError)):
        _wire.decode(data)
    assert time.monotonic() - start < 0.5


def test_parse_tests_layouts():
    tests = parse_tests("import math\nassert f(1) == 5\nx = 2\nassert f(x) == 8")
    assert [t.source for t in tests] == ["import math\nassert f(1) == 5", "import math\nx = 2\nassert f(x) == 8"]
    assert len(parse_tests("def check(c):\n    assert c(1) == 5\ncheck(f)")) == 1
    listed = ["assert f(1) == 5", "assert f(2) == 8"]
    assert [t.source for t in parse_tests(listed)] == listed
    stdio = parse_tests({"inputs": ["1 2\n", "3 4\n"], "outputs": ["3\n", "7\n"]})
    assert [(t.kind, t.stdin, t.expected) for t in stdio] == [("stdio", "1 2\n", "3\n"), ("stdio", "3 4\n", "7\n")]
    assert parse_tests(json.dumps([["1", "2"]]))[0].expected == "2"
    assert parse_tests([{"input": "x", "output": "y"}])[0].spec() == ("stdio", "x")  # no expected output inside
    for bad in ["assert (", [], 3, [{"in": 1}], {"inputs": [1], "outputs": []}]:
        with pytest.raises(R1labError):
            parse_tests(bad)


def test_extract_code_takes_the_last_python_block():
    assert extract_code("a\n```python\nx = 1\n```\nb\n```py\ny = 2\n```\n```text\nno\n```") == "y = 2\n"
    assert extract_code("<answer>```python\ndef f(x): return x\n```</answer>") == "def f(x): return x\n"
    assert extract_code("```python\ndef f(x):\n    return x") is None  # truncated
    assert extract_code("no code") is None and extract_code(None) is None
    start = time.monotonic()
    extract_code("```python\n" * 50_000 + "x")  # linear in the text, whatever the model writes
    assert time.monotonic() - start < 1.0


def test_limits_and_weak_opt_in(monkeypatch):
    with pytest.raises(R1labError, match="time_s"):
        Limits(time_s=0)
    with pytest.raises(R1labError, match="memory_mb"):
        Limits(memory_mb=8)
    monkeypatch.delenv(WEAK_ENV, raising=False)
    assert not weak_allowed(None) and weak_allowed(True)
    monkeypatch.setenv(WEAK_ENV, "1")
    assert weak_allowed(None) and not weak_allowed(False)


def test_no_isolation_is_refused_unless_weak_is_allowed(monkeypatch):
    weak = Isolation("weak", "/nonexistent/python3")
    monkeypatch.setattr(runner, "candidates", lambda: [weak])
    monkeypatch.delenv(WEAK_ENV, raising=False)
    runner._choose.cache_clear()
    try:
        with pytest.raises(R1labError, match=f"allow_weak_isolation=True or {WEAK_ENV}=1"):
            runner.choose_isolation()
        with pytest.raises(R1labError, match="weak"):  # allowed, but this python doesn't exist
            runner.choose_isolation(allow_weak_isolation=True)
    finally:
        runner._choose.cache_clear()


# --- the micro code task and pass@k, with a fake pool ----------------------------------------------


class FakePool:
    """Passes a program iff it contains 'good'; records what it was asked to run."""

    def __init__(self):
        self.jobs = []

    def run(self, jobs, limits=None):
        self.jobs += jobs
        return [ExecResult(len(t) if "good" in p else 0, len(t), "passed" if "good" in p else "failed", "", 0.0)
                for p, t in jobs]


def test_code_reward_columns_with_a_fake_pool():
    pool = FakePool()
    reward = make_code_reward(pool=pool)
    completions = ["```python\ngood = 1\n```", "```python\nbad = 1\n```", "no code", "```python\ngood\n```",
                   "```python\ngood\n```"]
    tests = ["assert x\nassert y", "assert x", "assert x", None, None]
    scores = reward(completions, tests=tests, task=["", "", "", "code", "math"], answer=["", "", "", "assert z", "4"])
    assert scores == [1.0, 0.0, 0.0, 1.0, None]  # no code: 0; a code row's tests are in `answer`; math: can't judge
    assert [len(t) for _, t in pool.jobs] == [2, 1, 1]
    pool.jobs.clear()
    assert reward(["```python\ngood\n```"] * 3, tests=["assert x"] * 3) == [1.0] * 3
    assert len(pool.jobs) == 1  # a group's identical completions run once


def test_pass_at_k_by_the_papers_protocol():
    rows = [{"task_id": "a", "tests": "assert f()"}, {"task_id": "b", "test": "def check(c): pass", "entry_point": "f",
                                                      "prompt": "def f():\n"}]
    samples = [["```python\ngood\n```", "bad", "```python\ngood\n```", "bad"], ["bad"] * 3 + ["    good"]]
    pool = FakePool()
    metrics = evaluate_code_rows(rows, samples, pool=pool, ks=(1, 2, 5))
    # a: 2 of 4 right; b: 1 of 4. pass@1 = mean(0.5, 0.25); pass@2 = mean(1 - C(2,2)/C(4,2), 1 - C(3,2)/C(4,2))
    assert metrics["pass@1"] == pytest.approx(0.375)
    assert metrics["pass@2"] == pytest.approx((5 / 6 + 1 / 2) / 2)
    assert "pass@5" not in metrics and metrics["num_samples"] == 8
    assert pool.jobs[4][0] == "def f():\n" + "bad"  # HumanEval: prompt + raw continuation
    assert pool.jobs[4][1][0].source.endswith("check(f)\n")


def test_code_task_problems_tests_and_traces():
    task = CodeTask()
    problems = [task.sample(__import__("random").Random(s), level) for s in range(5) for level in task.levels]
    for p in problems:
        spec = Spec(TEMPLATES[p.operands[0]], p.operands[1], p.operands[2])
        assert p.answer.count("assert f(") == 4 and len(parse_tests(p.answer)) == 4
        good, bug = spec.function(), spec.function(buggy=True)
        assert any(good(x) != bug(x) for x in spec.inputs())  # the tests catch the plausible bug
        completion = task.solution(p)
        assert completion.startswith("<think> plan : return ") and "```python\ndef f(" in completion
        row = p.to_row()
        assert task.verify(f"```python {spec.code()} ```", row)  # as answer extraction leaves it
        assert not task.verify(spec.code(buggy=True), row) and not task.verify(None, row)
    noticed = TraceStyle(p_step_error=1.0, p_fix_error=1.0)
    steps, final = task.reasoning(problems[0], __import__("random").Random(0), noticed)
    assert "wait , return" in steps
    assert unfence(final).strip() == Spec(TEMPLATES[problems[0].operands[0]], *problems[0].operands[1:]).code()


# --- the sandbox itself -----------------------------------------------------------------------------


def _run(program, tests=TESTS, limits=LIMITS, label=None):
    label = label or f"r1lab-test-{uuid.uuid4().hex[:10]}"
    start = time.monotonic()
    result = run_tests(program, parse_tests(tests), limits, ISOLATION, label)
    return result, time.monotonic() - start, label


def _leftovers(label):
    time.sleep(0.05)
    return kill_labelled(label)


@needs_sandbox
def test_correct_programs_pass_and_broken_variants_do_not():
    cases = [
        (GOOD, "assert f(1) == 5\nassert f(2) == 8\nassert f(-1) == -1", "def f(x):\n    return 3 * x + 1\n"),
        ("import sys\na, b = map(int, sys.stdin.read().split())\nprint(a + b)",
         [{"input": "1 2\n", "output": "3\n"}, ["40 2", "42"]],
         "import sys\nprint(sum(map(int, sys.stdin.read().split())) + 1)"),
        ("def g(xs):\n    return sorted(xs)[::-1]\n", ["assert g([1, 3, 2]) == [3, 2, 1]", "assert list(g(())) == []"],
         "def g(xs):\n    return sorted(xs)\n"),
        ("def gen(n):\n    yield from range(n)\n", "assert list(gen(3)) == [0, 1, 2]\nassert next(gen(5)) == 0",
         "def gen(n):\n    yield from range(1, n)\n"),
        ("def h(d):\n    if d < 0:\n        raise ValueError('neg')\n    return {d: {d}}\n",
         "assert h(2) == {2: {2}}\ntry:\n    h(-1)\nexcept ValueError:\n    pass\nelse:\n    assert False",
         "def h(d):\n    return {d: {d}}\n"),
    ]
    for good, tests, broken in cases:
        assert _run(good, tests)[0].status == "passed", good
        result = _run(broken, tests)[0]
        assert result.passed < result.total, broken


@needs_sandbox
def test_code_task_solutions_score_one_and_bugs_below_one():
    task = CodeTask()
    rng = __import__("random").Random(3)
    problems = [task.sample(rng, level) for level in task.levels for _ in range(2)]
    rows = [p.to_row() for p in problems]
    good = [task.solution(p) for p in problems]
    bugs = [f"```python\n{Spec(TEMPLATES[p.operands[0]], *p.operands[1:]).code(buggy=True)}\n```" for p in problems]
    columns = {"task": [r["task"] for r in rows], "answer": [r["answer"] for r in rows]}
    assert code_reward(good, **columns) == [1.0] * len(rows)
    assert all(s < 1.0 for s in code_reward(bugs, **columns))
    assert binary_code_reward(bugs, **columns) == [0.0] * len(rows)
    multi_line = "```python\ndef f(x):\n    y = x\n    return y\n```"
    assert task.verify(multi_line, {"answer": "assert f(3) == 3", "operands": []})  # not the reference: runs


HOST = Path.home()


def _hostile_programs(canary: Path, marker: str, port: int):
    return {
        "infinite loop": "while True:\n    pass\n" + GOOD,
        "sleeping forever": "import time\ntime.sleep(10 ** 6)\n" + GOOD,
        "deep recursion": "import sys\nsys.setrecursionlimit(10 ** 8)\ndef r(n):\n    return r(n + 1)\nr(0)\n" + GOOD,
        "recursion in the call": "def f(x):\n    return f(x)\n",
        "fork bomb": "import os, time\nfor _ in range(500):\n    if os.fork() == 0:\n        time.sleep(1000)\n"
                     "        os._exit(0)\n" + GOOD,
        "fork bomb that leaves": "import os, time\nfor _ in range(500):\n    if os.fork() == 0:\n        os.setsid()\n"
                                 "        while True:\n            time.sleep(1)\n" + GOOD,
        "allocating gigabytes": "x = bytearray(4 << 30)\n" + GOOD,
        "allocating step by step": "x = []\nwhile True:\n    x.append(bytearray(50 << 20))\n" + GOOD,
        "deleting a host file": f"import os\nos.remove({str(canary)!r})\n" + GOOD,
        "overwriting a host file": f"open({str(canary)!r}, 'w').write('pwned')\n" + GOOD,
        "removing a host folder": f"import shutil\nshutil.rmtree({str(canary.parent)!r})\n" + GOOD,
        "writing to home": f"open({str(HOST / marker)!r}, 'w').write('x')\n" + GOOD,
        "writing outside /tmp": f"open('/{marker}', 'w').write('x')\n" + GOOD,
        "writing to /dev/shm": f"open('/dev/shm/{marker}', 'w').write('x')\n" + GOOD,
        "loopback connection": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n" + GOOD,
        "killing the parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n" + GOOD,
        "killing everything": f"import os\nfor pid in (1, {os.getpid()}, {os.getppid()}, -1):\n    try:\n"
                              "        os.kill(pid, 9)\n    except OSError:\n        pass\n" + GOOD,
        "stopping the parent": "import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)\n" + GOOD,
        "printing gigabytes": "import sys\nfor _ in range(2048):\n    sys.stdout.write('x' * (1 << 20))\n" + GOOD,
        "printing to stderr": "import sys\nfor _ in range(2048):\n    sys.stderr.write('x' * (1 << 20))\n" + GOOD,
        "exit 0 before the tests": "import sys\nsys.exit(0)\n" + GOOD,
        "os._exit(0) before the tests": GOOD + "import os\nos._exit(0)\n",
        "printing passed markers": "print('PASSED')\nprint(\"('result', 0, 'passed', '', None, 1)\")\n"
                                   "print(\"('done', 1)\")\nimport os\nos.write(1, b'1 passed\\n')\n",
        "redefining AssertionError": "import builtins\nbuiltins.AssertionError = type('E', (Exception,), {})\n"
                                     "def f(x):\n    return 0\n",
        "__build_class__ trick": "import builtins\nbuiltins.__build_class__ = lambda *a, **k: None\n"
                                 "def f(x):\n    return 0\n",
        "patching the harness": "import sys\nfor m in list(sys.modules.values()):\n"
                                "    for n in ('run_test', '_judge_test', 'judge', 'decode'):\n        try:\n"
                                "            setattr(m, n, lambda *a, **k: ('passed', ''))\n"
                                "        except Exception:\n            pass\ndef f(x):\n    return 0\n",
        "SystemExit inside the test": "def f(x):\n    raise SystemExit(0)\n",
        "always-equal object": "class A:\n    def __eq__(self, other):\n        return True\n    __hash__ = None\n"
                               "def f(x):\n    return A()\n",
        "int with a lying __eq__": "class I(int):\n    def __eq__(self, other):\n        return True\ndef f(x):\n"
                                   "    return I(0)\n",
        "signal tricks": "import os, signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nsignal.alarm(0)\n"
                         "def f(x):\n    os.kill(1, signal.SIGALRM)\n    os.kill(1, signal.SIGKILL)\n    return 0\n",
        "reading the answers from memory": "import gc, re\ntexts = [s for o in gc.get_objects() for s in ("
                                           "o.values() if isinstance(o, dict) else o if isinstance(o, (list, tuple))"
                                           " else ()) if isinstance(s, str) and 'assert' in s]\nfound = dict("
                                           "re.findall(r'f\\((-?\\d+)\\) == (-?\\d+)', ' '.join(texts)))\n"
                                           "def f(x):\n    return int(found[str(x)])\n",
        "ptrace on the judge": "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                               "for pid in (1, os.getppid()):\n    if libc.ptrace(16, pid, 0, 0) != 0:\n"
                               "        raise OSError(ctypes.get_errno(), 'no')\n" + GOOD,
        "reading /proc": "print(open('/proc/1/environ').read())\n" + GOOD,
    }


def test_the_memory_attack_works_where_the_tests_are_in_memory():
    """Control: the attack really reads answers held in memory, so its 0 in the sandbox means
    the tests were out of reach. Run in a fresh interpreter: this process holds other strings."""
    program = _hostile_programs(Path("/x"), "m", 1)["reading the answers from memory"]
    # what a worker forked after the judge read the tests would hold
    script = "held = ['assert f(1) == 5']\n" + program + "\nprint(f(1))\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "5", out.stderr


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    folder = tmp_path_factory.mktemp("host")
    canary = folder / "canary.txt"
    canary.write_text("keep me")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.05)
    marker = f"r1lab-escape-{uuid.uuid4().hex[:8]}"
    yield canary, marker, server
    server.close()


HOSTILE = list(_hostile_programs(Path("/x"), "m", 1))


@needs_sandbox
@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_program_scores_zero_and_leaves_the_host_untouched(name, host):
    canary, marker, server = host
    program = _hostile_programs(canary, marker, server.getsockname()[1])[name]
    before = canary.stat().st_mtime_ns
    result, seconds, label = _run(program)
    assert result.passed == 0 and result.total == 1, result
    assert result.status != "error" or name in ("killing everything",), result  # decided by the tests, not a crash
    assert seconds < BOUND + (2.5 if name == "stopping the parent" else 0)
    assert _leftovers(label) == 0  # no process of the run is left, whatever it forked
    assert canary.read_text() == "keep me" and canary.stat().st_mtime_ns == before
    for folder in (Path("/tmp"), HOST, Path("/dev/shm"), Path("/")):
        assert not (folder / marker).exists()
    with pytest.raises(OSError):  # nothing connected to the loopback port
        server.accept()


@needs_sandbox
def test_secrets_in_the_environment_do_not_leak(monkeypatch):
    secret = f"s3cret-{uuid.uuid4().hex}"
    monkeypatch.setenv("R1LAB_TEST_SECRET", secret)
    program = ("import os\nprint(os.environ.get('R1LAB_TEST_SECRET', 'none'))\nfor p in ('/proc/1/environ', "
               "'/proc/self/environ'):\n    try:\n        print(open(p).read())\n    except OSError:\n        pass\n")
    result, _, _ = _run(program, [{"input": "", "output": secret}])
    assert result.passed == 0 and result.reason.endswith("wrong output"), result
    expected = f"answer-{uuid.uuid4().hex}"  # the expected output never enters the sandbox
    peek = ("import gc\nfound = [s for o in gc.get_objects() if isinstance(o, (list, tuple, dict)) for s in o "
            "if isinstance(s, str) and s.startswith('answer-')]\nprint(found[0] if found else 'none')")
    assert _run(peek, [{"input": "", "output": expected}])[0].passed == 0


@needs_sandbox
def test_output_and_time_limits_are_per_test():
    slow_second = "import time\ndef f(x):\n    if x == 2:\n        time.sleep(100)\n    return 3 * x + 2\n"
    result, seconds, _ = _run(slow_second, "assert f(1) == 5\nassert f(2) == 8\nassert f(3) == 11")
    assert (result.passed, result.total) == (2, 3) and "timeout" in result.reason
    assert seconds < 2 * BOUND
    for handler in ("except:", "except Exception:", "except BaseException:"):  # a swallowed timeout still fails
        assert _run(slow_second, f"try:\n    f(2)\n{handler}\n    pass")[0].passed == 0, handler
    hangs = _run(slow_second, "assert f(2) == 8\n" * 5, Limits(time_s=1.0, total_s=1.5))
    assert hangs[0].passed == 0 and hangs[1] < BOUND  # the run's total time caps hanging on every test
    dies = "import os\ndef f(x):\n    os._exit(0)\n"
    assert _run(dies, "try:\n    f(2)\nexcept:\n    pass")[0].passed == 0


@needs_sandbox
def test_pool_runs_in_parallel_and_a_broken_sandbox_is_a_logged_zero(caplog):
    jobs = [(GOOD if i % 2 else GOOD.replace("2", "1"), parse_tests(TESTS)) for i in range(8)]
    with SandboxPool(workers=2, limits=LIMITS, isolation=ISOLATION) as pool:
        assert [r.passed for r in pool.run(jobs)] == [0, 1] * 4
    broken = Isolation(ISOLATION.kind, ISOLATION.python, bwrap="/nonexistent/bwrap", binds=ISOLATION.binds)
    with SandboxPool(workers=1, limits=LIMITS, isolation=broken) as pool, caplog.at_level("WARNING"):
        [result] = pool.run(jobs[:1])
    assert (result.passed, result.status) == (0, "error") and "sandbox failed" in caplog.text


@needs_sandbox
def test_grpo_runs_with_the_code_reward_on_micro_code_rows(tiny_model_dir, tmp_path):
    from r1lab.cli import main as cli_main
    from r1lab.files import read_jsonl

    rng = __import__("random").Random(0)
    rows = [CodeTask().sample(rng, 1).to_row() for _ in range(4)]
    data = tmp_path / "code.jsonl"
    data.write_text("".join(json.dumps({**r, "tests": r["answer"]}) + "\n" for r in rows))
    out = tmp_path / "run"
    args = [f"model={tiny_model_dir}", f"data.train={data}", f"output_dir={out}", "template=micro", "num_generations=2",
            "prompts_per_step=2", "max_new_tokens=8", "max_steps=1", "eval_every=0", "progress=false", "threads=1",
            "rewards=[r1lab.rewards.code_tests:code_reward,format]"]
    assert cli_main(["grpo", *args]) == 0
    [metrics] = read_jsonl(out / "metrics.jsonl")
    assert any("code_reward" in key for key in metrics)


def test_no_sandbox_process_outlives_the_test_session():
    assert kill_labelled("r1lab-test-") == 0
    os.kill(os.getppid(), 0)  # the trainer's parent is alive (the trainer is: it runs this)

"""Rewards: answer extraction, math-verify in a worker, hostile completions, and each reward's numbers."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import doctest  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

import r1lab.rewards as rewards  # noqa: E402
from r1lab.errors import R1labError  # noqa: E402
from r1lab.rewards import (  # noqa: E402
    REWARDS,
    FailurePolicy,
    accuracy_reward,
    answers_match,
    combine_rewards,
    cosine_length_reward,
    extract_answer,
    format_reward,
    language_consistency_reward,
    lenient_format_reward,
    load_reward,
    make_accuracy_reward,
    make_cosine_length_reward,
    make_language_consistency_reward,
    make_repetition_penalty,
    readable_format_reward,
    repetition_penalty_reward,
    tag_count_reward,
)
from r1lab.rewards import _mathverify, answers, combinators, formatting, rules, text  # noqa: E402

HOSTILE_TIMEOUT = 1.0  # math-verify time limit in the hostile tests
HOSTILE_BOUND = 3.0  # seconds any single hostile completion may take, all included


@pytest.fixture(scope="module", autouse=True)
def warm_pool():
    """Start one math-verify worker up front: timing asserts below measure calls, not startup."""
    _mathverify.warm_up(1)


# --- extraction ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<think> 2+2 </think> <answer> 4 </answer>", "4"),
        ("<think>hmm</think><answer>\\boxed{\\frac{1}{2}}</answer>", "\\frac{1}{2}"),
        ("so the answer is \\boxed{\\frac{1}{\\sqrt{2}}}.", "\\frac{1}{\\sqrt{2}}"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces don't close the box
        ("\\boxed{\\boxed{7}}", "7"),
        ("\\boxed{5} and again \\boxed{ 5 }", "5"),  # the same answer twice is fine
        ("<answer>5</answer> then <answer>5.</answer>", "5"),  # equal after normalisation
        ("\\boxed{3} in the reasoning <answer>4</answer>", "4"),  # tags win over boxes outside them
        ("<answer>(1,2)</answer>", "(1,2)"),
        ("<answer>1, -2</answer>", "1, -2"),  # MATH's "all solutions" form is kept
        ("<answer>\\text{color}</answer>", "\\text{color}"),  # "or" inside a word is no alternative
    ],
)
def test_extract_answer_finds_the_final_answer(completion, expected):
    assert extract_answer(completion) == expected


@pytest.mark.parametrize(
    "completion",
    [
        "The answer is 4.",  # no tag, no box
        "<answer>3</answer> <answer>5</answer>",  # two different answers
        "\\boxed{3} or maybe \\boxed{5}",
        "<answer>3 or 5</answer>",  # a candidate list
        "<answer>3 \\text{ OR } 5</answer>",
        "<answer>4",  # never closed
        "4</answer>",  # closed, never opened
        "<answer><answer>4</answer>",  # nested
        "<answer>  </answer>",  # empty
        "\\boxed{12",  # a truncated completion
        "<answer>\\boxed{4</answer>",
        "<answer>" + "9" * 300 + "</answer>",  # too long to be a final answer
        "<answer>5}</answer>",  # unbalanced braces could break out of \boxed{} later
        None,
    ],
)
def test_extract_answer_refuses_missing_ambiguous_or_malformed_answers(completion):
    assert extract_answer(completion) is None


# --- equivalence --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "predicted, reference, expected",
    [
        ("1,000", "1000", True),
        ("$42$", "42", True),
        ("0.50", ".5", True),
        ("-3", "3", False),
        ("1" + "0" * 101, "1" + "0" * 101, True),  # exact string equality, even when huge
        ("1" + "0" * 101, "2", False),  # over MAX_DIGITS: never parsed
        ("1/2", "0.5", True),
        ("\\frac{1}{2}", "0.5", True),
        ("\\dfrac12", "1/2", True),
        ("2\\sqrt{2}", "\\sqrt{8}", True),
        ("5, 3", "3, 5", True),  # a solution set, in any order
        ("3, 5", "3", False),  # a list never matches one of its members
        ("x^2+2x+1", "(x+1)^2", True),
        ("1e400", "2e400", False),  # no float(inf) == float(inf)
        ("\\frac{1}{3}", "0.33", False),
    ],
)
def test_answers_match(predicted, reference, expected):
    assert answers_match(predicted, reference) is expected


def test_answers_match_from_a_thread_is_bounded():
    out = []
    worker = threading.Thread(target=lambda: out.append(
        (answers_match("\\frac{2}{4}", "0.5"), answers_match("9^{9^{9^{9}}}", "3", timeout=0.5))))
    start = time.monotonic()
    worker.start()
    worker.join(timeout=30)
    assert out == [(True, False)]
    assert time.monotonic() - start < 0.5 + 2.0


# --- accuracy -----------------------------------------------------------------------------------


def test_accuracy_reward_scores_right_wrong_and_equivalent_answers():
    completions = [
        "<think> 2+2 </think> <answer>4</answer>",
        "<think> 2+3 </think> <answer>5</answer>",
        "<answer>1/2</answer>",
        "<answer>0.5</answer>",
        "\\boxed{\\frac{1}{2}}",
        "4",  # no format
        "\\boxed{4} \\boxed{5}",  # two answers
        "<answer>4</answer>",  # no reference
    ]
    answer = ["4", "4", "0.5", "\\frac{1}{2}", "1/2", "4", "4", ""]
    assert accuracy_reward(completions, answer=answer, unknown_column=[0] * 8) == [
        1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, None]


def test_accuracy_reward_from_a_thread():
    out = []
    completions = ["<answer>\\frac{3}{6}</answer>", "<answer>9^{9^{9^{9}}}</answer>"]
    reward = make_accuracy_reward(timeout=HOSTILE_TIMEOUT)
    worker = threading.Thread(target=lambda: out.append(reward(completions, answer=["0.5", "3"])))
    start = time.monotonic()
    worker.start()
    worker.join(timeout=30)
    assert out == [[1.0, 0.0]]
    assert time.monotonic() - start < HOSTILE_BOUND


HOSTILE = {
    "1 MB of text": "x" * 10**6,
    "1 MB of reasoning, huge answer": "<think>" + "a " * 500_000 + "</think><answer>" + "9" * 300 + "</answer>",
    "deep unclosed braces": "\\boxed{" + "{" * 100_000,
    "deep closed braces": "\\boxed{" + "{" * 100_000 + "}" * 100_001,
    "many unclosed boxes": "\\boxed{" * 100_000,
    "box without brace": "\\boxed" + " " * 10**6,
    "10^100000 written out": "<answer>1" + "0" * 100_000 + "</answer>",
    "a million digits boxed": "\\boxed{" + "1" * 10**6 + "}",
    "150 digits": "<answer>" + "1" * 150 + "</answer>",
    "power tower": "<answer>9^{9^{9^{9}}}</answer>",
    "factorial of a tower": "\\boxed{(10^{10^{10}})!}",
    "huge factorial": "<answer>99999999!</answer>",
    "backslashes": "<answer>" + "\\" * 100_000 + "</answer>",
    "10000 open tags": "<answer>" * 10_000,
    "10000 close tags": "</answer>" * 10_000 + "<answer>3</answer>",
    "10000 differing tags": "<answer>1</answer><answer>2</answer>" * 5_000,
    "10000 wrong tags": "<answer>1</answer>" * 10_000,
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_completions_score_zero_quickly(name):
    answers._definite_match.cache_clear()  # time the worker, not the cache of an earlier test
    reward = make_accuracy_reward(timeout=HOSTILE_TIMEOUT)
    start = time.monotonic()
    scores = reward([HOSTILE[name]], answer=["3"])
    assert time.monotonic() - start < HOSTILE_BOUND
    assert scores == [0.0]


def test_micro_world_tasks_defer_to_their_verifier(monkeypatch):
    tasks = pytest.importorskip("r1lab.micro.tasks")
    problem = tasks.generate("addition", split="train", n=1, seed=0)[0]
    row = problem.to_row()
    right, wrong = f"<answer>{problem.answer}</answer>", f"<answer>{int(problem.answer) + 1}</answer>"
    columns = {key: [value, value] for key, value in row.items()}
    assert accuracy_reward([right, wrong], **columns) == [1.0, 0.0]

    calls = []
    monkeypatch.setattr(tasks, "verify", lambda task, predicted, row: calls.append((task, predicted, row)) or True)
    assert accuracy_reward(["<answer>x</answer>", "no answer"], **columns) == [1.0, 0.0]
    assert calls == [("addition", "x", row)]  # the whole row, every column; no call without an answer
    # Task values that aren't micro-world tasks are maths.
    assert accuracy_reward(["<answer>0.5</answer>"], answer=["1/2"], task=["gsm8k"]) == [1.0]


# --- format -------------------------------------------------------------------------------------


def test_format_rewards():
    completions = [
        "<think> reason </think> <answer> 4 </answer>",
        "\n<think>\nreason\n</think>\n\n<answer>4</answer>\n",
        "<think> reason </think> <answer>4</answer> trailing text",
        "preamble <think> reason </think> <answer>4</answer>",
        "<answer>4</answer> <think> reason </think>",
        "<think> a </think> <think> b </think> <answer>4</answer>",
        "<think> reason </think> so \\boxed{4}",
        "\\boxed{4}",
        "",
    ]
    assert format_reward(completions) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert lenient_format_reward(completions) == [1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    assert tag_count_reward(completions) == [1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.0, 0.0]


def test_readable_format_reward():
    completions = [
        "<think> 9+3=12 </think> <summary> The sum is 12. </summary> <answer>12</answer>",
        "\n<think>\nx\n</think>\n<summary>\ny\n</summary>\n<answer>1</answer>\n",
        "<think> x </think> <answer>1</answer>",  # R1-Zero's format: no summary
        "<think> x </think> <answer>1</answer> <summary> y </summary>",  # summary after the answer
        "<think> x </think> stray <summary> y </summary> <answer>1</answer>",  # text between blocks
        "<think> x </think> <summary> y </summary> <summary> z </summary> <answer>1</answer>",
        "<think> x <summary> y </summary> </think> <answer>1</answer>",  # summary inside the reasoning
    ]
    assert readable_format_reward(completions) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    # the strict R1-Zero format still rejects a summary block
    assert format_reward(completions[:1]) == [0.0]
    assert REWARDS["format_readable"] is readable_format_reward


def test_format_rewards_accept_a_prompt_that_opened_the_think_block():
    completion = ["reasoning </think> <answer>4</answer>"]
    prompt = ["User: 2+2? Assistant: <think>\n"]
    assert format_reward(completion, prompts=prompt) == [1.0]
    assert lenient_format_reward(completion, prompt=prompt) == [1.0]
    assert tag_count_reward(completion, prompts=prompt) == [1.0]
    assert format_reward(completion, prompts=["User: 2+2? Assistant:"]) == [0.0]


# --- language consistency -----------------------------------------------------------------------


def test_language_consistency_counts_words_by_script():
    completions = [
        "<think> The answer is 四 </think> <answer>4</answer>",  # 3 English words of 4
        "The answer is 四",  # no think block: the whole completion
        "<think> 3 + 4 = 7, \\frac{1}{2} \\cdot \\pi = π/2 </think>",  # no words at all
        "<think> 答案是 four </think>",  # 1 of 4 in English
        "<think> so the final answer </think> 答案 答案 答案 答案",  # only the reasoning counts
    ]
    assert language_consistency_reward(completions) == [0.75, 0.75, 1.0, 0.25, 1.0]
    chinese = make_language_consistency_reward("zh")
    assert chinese(completions[3:4]) == [0.75]
    # A `language` column picks the target per example; an unknown language can't be judged.
    assert language_consistency_reward(completions[3:4] * 3, language=["zh", None, "klingon"]) == [0.75, 0.25, None]
    with pytest.raises(R1labError, match="unknown target language"):
        make_language_consistency_reward("klingon")


# --- cosine length ------------------------------------------------------------------------------


def test_cosine_length_reward_against_hand_numbers():
    reward = make_cosine_length_reward(max_len=100)
    right, wrong = "<answer>4</answer>", "<answer>5</answer>"
    # cos(0)=1: the ends of the ranges; cos(pi/2)=0: the midpoints; cos(pi)=-1 and clamped beyond.
    scores = reward([right] * 4 + [wrong] * 4 + ["no answer"], answer=["4"] * 9,
                    lengths=[0, 50, 100, 1000, 0, 50, 100, 1000, 0])
    expected = [1.0, 0.75, 0.5, 0.5, -1.0, -0.75, -0.5, -0.5, -1.0]
    assert scores == pytest.approx(expected)
    # Length in characters without a `lengths` column: 18 + 7 = 25 chars -> (1 + cos(pi/4)) / 2.
    assert reward([right + "x" * 7], answer=["4"]) == pytest.approx([0.5 + 0.5 * (1 + math.cos(math.pi / 4)) / 2])
    assert cosine_length_reward([right], answer=[None]) == [None]
    with pytest.raises(R1labError):
        make_cosine_length_reward(max_len=0)


# --- repetition ---------------------------------------------------------------------------------


def test_repetition_penalty_against_hand_numbers():
    # trigrams of "a b c a b c": abc bca cab abc -> 3 distinct of 4 -> -(1 - 3/4)
    assert repetition_penalty_reward(["a b c a b c", "A B C a b c", "", "a b", "one two three four"]) == [
        -0.25, -0.25, 0.0, 0.0, 0.0]
    bigrams = make_repetition_penalty(ngram_size=2, max_penalty=-0.5)
    assert bigrams(["a a a a"]) == pytest.approx([-(1 - 1 / 3) * 0.5])  # (a,a) x3, one distinct
    with pytest.raises(R1labError):
        make_repetition_penalty(ngram_size=0)
    with pytest.raises(R1labError):
        make_repetition_penalty(max_penalty=1.0)


# --- registry, loading, combining ---------------------------------------------------------------


def test_registry_names():
    assert set(REWARDS) == {"accuracy", "format", "format_lenient", "format_readable", "tag_count",
                            "language_consistency", "cosine_length", "repetition", "faithfulness", "code",
                            "code_binary", "reasoning_gym"}
    for name, fn in REWARDS.items():
        assert load_reward(name) is fn


def test_load_reward_from_file_and_module(tmp_path):
    path = tmp_path / "tmp.py"
    path.write_text("def fn(completions, **kw):\n    return [float(len(c)) for c in completions]\nNOT_FN = 3\n")
    fn = load_reward(f"{path}:fn")
    assert fn(["ab", "c"]) == [2.0, 1.0]
    assert load_reward("r1lab.rewards.text:repetition_penalty_reward") is repetition_penalty_reward

    for spec, message in [
        (f"{tmp_path}/missing.py:fn", "no such file"),
        (f"{path}:nope", "no function 'nope'"),
        (f"{path}:NOT_FN", "not callable"),
        ("r1lab.no_such_module:fn", "can't import module"),
        ("no_such_reward", "unknown reward"),
    ]:
        with pytest.raises(R1labError, match=message) as excinfo:
            load_reward(spec)
        assert spec in str(excinfo.value)


def test_combine_rewards_skips_none_and_a_raising_reward_when_told(caplog):
    def half(completions, **kw):
        return [0.5 if "<answer>" in c else None for c in completions]

    def broken(completions, **kw):
        raise ValueError("boom")

    completions = ["<think> x </think> <answer>4</answer>", "\\boxed{5}"]
    with caplog.at_level(logging.WARNING, logger="r1lab.rewards"):
        total, per_fn = combine_rewards([accuracy_reward, format_reward, half, broken, accuracy_reward],
                                        [1.0, 0.5, 2.0, 10.0, 1.0], completions, answer=["4", "4"],
                                        failures=FailurePolicy("skip", max_failures=2))
    assert total == [1.0 + 0.5 + 1.0 + 1.0, 0.0]
    assert per_fn == {"accuracy": [1.0, 0.0], "format": [1.0, 0.0], "half": [0.5, None],
                      "broken": [None, None], "accuracy#2": [1.0, 0.0]}
    assert "broken" in caplog.text and "boom" in caplog.text
    # by default a raising reward stops the run with its own exception
    with pytest.raises(ValueError, match="boom") as excinfo:
        combine_rewards([format_reward, broken], None, completions)
    assert "reward 'broken' raised" in excinfo.value.__notes__[0]

    def nan(completions, **kw):
        return [math.nan] * len(completions)

    assert combine_rewards([nan, format_reward], None, completions)[1]["nan"] == [None, None]
    # (name, fn) pairs are logged under their own name.
    total, per_fn = combine_rewards([("my/file.py:half", half)], [2.0], completions)
    assert total == [1.0, 0.0] and per_fn == {"my/file.py:half": [0.5, None]}


def test_combine_rewards_rejects_malformed_rewards():
    def short(completions, **kw):
        return [1.0]

    with pytest.raises(R1labError, match="'short' returned 1 scores for 2"):
        combine_rewards([short], [1.0], ["a", "b"])
    with pytest.raises(R1labError, match="2 reward functions but 1 reward weights"):
        combine_rewards([format_reward, short], [1.0], ["a", "b"])


def test_docstring_examples():
    for module in (rewards, answers, combinators, formatting, rules, text):
        result = doctest.testmod(module)
        assert result.failed == 0, module.__name__
    assert doctest.testmod(rewards.rules).attempted > 0


def test_a_worker_that_cannot_start_is_a_clear_error(monkeypatch):
    import sys

    pool = _mathverify._Pool(1)
    monkeypatch.setattr(sys, "executable", "/bin/false")
    with pytest.raises(R1labError, match="math-verify worker did not start"):
        pool.match("1/2", "0.5", 1.0)

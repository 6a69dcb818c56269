"""Math answers a policy could write to be scored right without being right, and the limits on
what an answer may cost: hedges are wrong, deep or long answers are refused before any work, and
only definite verdicts are cached."""

import time

import pytest

from r1lab.rewards import _mathverify, answers
from r1lab.rewards.answers import MAX_DEPTH, answers_match, extract_answer
from r1lab.rewards.rules import make_accuracy_reward


@pytest.fixture(scope="module", autouse=True)
def warm_worker():
    _mathverify.warm_up(1)


# Each hedge names the reference value last (or first, for \approx), where math-verify's fallback
# (the last number of what it can't read as LaTeX) would pick it.
HEDGES = [
    ("3 \\lor 5", "5"), ("3 \\vee 5", "5"), ("x=3 \\lor x=5", "5"), ("3 \\wedge 5", "5"), ("3 \\land 5", "5"),
    ("3 \\cup 5", "5"), ("3 \\sim 5", "5"), ("3 \\oplus 5", "5"), ("3 \\\\ 5", "5"), ("3 \\hspace{1em} 5", "5"),
    ("\\begin{cases} 3 \\\\ 5 \\end{cases}", "5"), ("3 \\to 5", "5"), ("3 \\iff 5", "5"), ("3 ? 5", "5"),
    ("3 \\dots 5", "5"), ("3 \\approx 5", "3"), ("3 \\text{ or } 5", "5"), ("3 \\text{ or } 3", "3"),
    ("3, 5", "5"), ("\\{3, 5\\}", "3"), ("[3, 5]", "3"), ("(3, 5)", "5"), ("\\pm 5", "5"), ("3; 5", "5"),
    ("x \\in \\{3, 5\\}", "3"), ("\\boxed{3} \\boxed{5}", "5"), ("3 \\text{ and } 5", "3"),
    ("\\{3\\} \\cup \\{5\\}", "5"), ("3 \\lor 5 \\lor 7", "7"), ("x=3 \\cup x=5", "5"), ("x=3 \\quad x=5", "5"),
    ("x=3 \\\\ x=5", "5"), ("x = 3 = 5", "5"), ("3 = 5", "5"), ("\\frac{6}{2} = 5", "5"), ("\\pi = 5", "5"),
    ("x=3 ? x=5", "5"), ("3 ∨ 5", "5"), ("3\u00a0or\u00a05", "5"), ("3 \\operatorname{or} 5", "5"),
    ("\\phantom{3}5", "5"), ("\\color{white}{3} 5", "5"), ("\\overset{3}{5}", "5"), ("5 \\text{ (or 3)}", "5"),
]


@pytest.mark.parametrize("predicted, reference", HEDGES)
def test_a_hedged_answer_is_wrong(predicted, reference):
    assert not answers_match(predicted, reference)


@pytest.mark.parametrize("completion", [
    "<answer>3 \\lor 5</answer>", "\\boxed{3} and \\boxed{5}", "<answer>3</answer> <answer>5</answer>",
    "<answer>3 or 5</answer>", "<answer>\\{3, 5\\}</answer>", "<answer>3, 5</answer>", "\\boxed{\\pm 5}",
])
def test_hedged_completions_score_zero(completion):
    assert make_accuracy_reward(timeout=2.0)([completion], answer=["5"]) == [0.0]


LEGIT = [
    ("\\frac{1}{2}", "0.5"), ("\\dfrac{1}{2}", "\\frac12"), ("\\sqrt{2}/2", "\\frac{\\sqrt2}{2}"), ("x=3", "3"),
    ("(1,2]", "(1,2]"), ("\\{1,2\\}", "1,2"), ("5 \\text{ cm}", "5"), ("90^\\circ", "90"), ("\\frac{6}{2}", "3"),
    ("2^{10}", "1024"), ("y = 2x+1", "2x+1"), ("-\\frac{1}{3}", "-1/3"), ("\\binom{5}{2}", "10"),
    ("\\left(1, 2\\right)", "(1,2)"), ("\\lor", "\\lor"), ("f(2) = 7", "7"), ("a_1 = 5", "5"),
    ("3 \\approx 5", "3 \\approx 5"), ("1 or 2", "1 or 2"),
]


@pytest.mark.parametrize("predicted, reference", LEGIT)
def test_real_answers_still_match(predicted, reference):
    assert answers_match(predicted, reference)


@pytest.mark.parametrize("text", [
    "\\boxed{" * 5000 + "1" + "}" * 5000,
    "(" * 50_000 + "1" + ")" * 50_000,
    "\\left(" * 3000 + "1" + "\\right)" * 3000,
    "{" * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1),
    "\\frac{" * 2000 + "1" + "}{2}" * 2000,
])
def test_deep_or_long_answers_are_refused_before_any_work(text):
    start = time.monotonic()
    assert not answers_match(text, "1")
    assert extract_answer(f"<answer>{text}</answer>") is None
    assert extract_answer(text) is None or len(text) < 200
    assert time.monotonic() - start < 0.5  # no worker round trip, no quadratic normalisation


def test_a_deep_reference_is_compared_as_a_string():
    deep = "{" * 40 + "1" + "}" * 40
    assert answers_match(deep, deep) and not answers_match("1", deep)


def test_only_definite_verdicts_are_cached(monkeypatch):
    answers._definite_match.cache_clear()
    calls = []

    def undecided(pred, ref, timeout):
        calls.append(pred)
        return None  # a timeout, a busy pool or a dead worker

    monkeypatch.setattr(_mathverify, "match", undecided)
    assert not answers_match("\\frac{2}{4}", "0.5") and not answers_match("\\frac{2}{4}", "0.5")
    assert len(calls) == 2  # asked again: not cached as wrong
    monkeypatch.setattr(_mathverify, "match", lambda pred, ref, timeout: calls.append(pred) or True)
    assert answers_match("\\frac{2}{4}", "0.5") and answers_match("\\frac{2}{4}", "0.5")
    assert len(calls) == 3  # a definite verdict is cached
    answers._definite_match.cache_clear()


def test_a_real_timeout_is_not_cached():
    answers._definite_match.cache_clear()
    hard = "(10^{10^{10}})!"
    start = time.monotonic()
    assert not answers_match(hard, "3", timeout=0.5)
    assert answers._definite_match.cache_info().currsize == 0
    assert time.monotonic() - start < 0.5 + _mathverify.GRACE

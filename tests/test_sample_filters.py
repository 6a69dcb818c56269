"""Rejection-sampling filters on hand-made completions (``pytest tests/test_sample_filters.py``)."""

import doctest
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest

from r1lab.stages import sample_filters
from r1lab.errors import R1labError
from r1lab.stages.sample_filters import (FILTERS, FilterSettings, Sample, apply_filters, dedupe, filter_report,
                                         judge_prompt, parse_verdict, repeat_share, rules_judge)

ADD = {"task": "addition", "prompt": "Compute 9 + 3.", "answer": "12", "operands": [9, 3], "level": 1}
GOOD = "<think> 9+3=12 , so 12 </think> <answer>12</answer>"
SETTINGS = FilterSettings()


def sample(completion, row=ADD, finish_reason="stop"):
    return Sample(row, completion, finish_reason)


def reason(name, completion, row=ADD, settings=SETTINGS, judge=rules_judge, finish_reason="stop"):
    return FILTERS[name](sample(completion, row, finish_reason), settings, judge)


def test_a_good_sample_passes_every_filter():
    for name in FILTERS:
        assert reason(name, GOOD) is None, name


@pytest.mark.parametrize("completion", [
    "9+3=12 <answer>12</answer>",  # no think block
    "Sure! <think> 9+3=12 </think> <answer>12</answer>",  # text before it
    "<think> 9+3=12 </think>",  # nothing after it
    "<think> a </think> <think> b </think> <answer>12</answer>",  # two blocks
    "</think> 9+3=12 <think> <answer>12</answer>",  # in the wrong order
])
def test_no_format(completion):
    assert reason("no_format", completion) == "no_format"


def test_wrong_answer_uses_the_judge():
    assert reason("wrong_answer", "<think> 9+3=13 </think> <answer>13</answer>") == "wrong_answer"
    assert reason("wrong_answer", "<think> 9+3=12 </think> no answer tag") == "wrong_answer"
    # a judge that can't decide: the sample is dropped as "unjudged", not as wrong
    assert reason("wrong_answer", GOOD, judge=lambda c, r: None) == "unjudged"
    assert reason("wrong_answer", "<think> x </think> <answer>13</answer>", judge=lambda c, r: True) is None


def test_rules_judge_leaves_prose_references_undecided():
    row = {"prompt": "Capital of France?", "answer": "Paris"}
    assert rules_judge("<think> x </think> <answer>Paris</answer>", row) is True
    assert rules_judge("<think> x </think> <answer>the city of Paris</answer>", row) is None
    assert rules_judge("<think> x </think> no answer", row) is False
    math_row = {"prompt": "Half of 1?", "answer": "\\frac{1}{2}"}
    assert rules_judge("<think> x </think> <answer>0.5</answer>", math_row) is True
    assert rules_judge("<think> x </think> <answer>3</answer>", math_row) is False  # maths: rules decide
    assert rules_judge(GOOD, {"prompt": "p", "answer": ""}) is None  # nothing to compare with


def test_mixed_language():
    assert reason("mixed_language", "<think> so the sum is 十二 </think> <answer>12</answer>") == "mixed_language"
    # only the reasoning counts; a share at the threshold passes
    assert reason("mixed_language", "<think> the sum is twelve </think> <answer>十二</answer>") is None
    half = FilterSettings(min_language_share=0.5)
    assert reason("mixed_language", "<think> sum 十 </think> <answer>12</answer>", settings=half) is None


def test_long_paragraph():
    short = FilterSettings(max_paragraph_chars=20)
    two_short = "<think> 9+3=12 is right.\n\nso it is 12. </think> <answer>12</answer>"
    assert reason("long_paragraph", two_short, settings=short) is None
    one_long = "<think> 9+3=12 is right and so it is 12. </think> <answer>12</answer>"
    assert reason("long_paragraph", one_long, settings=short) == "long_paragraph"
    # the answer part is not reasoning
    assert reason("long_paragraph", "<think> ok </think> <answer>" + "1" * 50 + "</answer>", settings=short) is None


@pytest.mark.parametrize("reasoning", [
    "let me check ```python\nprint(9 + 3)\n``` so 12",
    "in code:\ndef add(a, b):\n    return a + b\nso 12",
    "import math\nso 12",
    "for i in range(3):\n  total += i",
])
def test_code_in_reasoning(reasoning):
    assert reason("code_in_reasoning", f"<think> {reasoning} </think> <answer>12</answer>") == "code_in_reasoning"


def test_code_in_the_answer_or_prose_is_not_code_in_reasoning():
    assert reason("code_in_reasoning", "<think> x </think> <answer>```def f(): pass```</answer>") is None
    prose = "<think> for each column, add the digits: 9+3=12 </think> <answer>12</answer>"
    assert reason("code_in_reasoning", prose) is None


def test_repeat_share_and_repetition():
    assert repeat_share("a b c a b c", 3) == pytest.approx(0.25)
    assert repeat_share("a b", 3) == 0.0
    loop = "<think> " + "9+3=12 , " * 20 + "</think> <answer>12</answer>"
    assert reason("repetition", loop) == "repetition"
    # 14 words of a 6-column addition with equal columns: 4 distinct 8-grams of 7, share 3/7 < 0.5
    equal_columns = "<think> " + "1+1=2 , " * 6 + "so 222222 </think> <answer>222222</answer>"
    assert reason("repetition", equal_columns) is None


def test_too_long_and_too_short():
    assert reason("too_long", GOOD, finish_reason="length") == "too_long"
    assert reason("too_long", GOOD, settings=FilterSettings(max_completion_chars=10)) == "too_long"
    assert reason("too_long", GOOD) is None
    assert reason("too_short", "<think>  </think> <answer>12</answer>") == "too_short"
    assert reason("too_short", GOOD, settings=FilterSettings(min_reasoning_chars=100)) == "too_short"


def test_dedupe_is_per_prompt_and_ignores_whitespace():
    other = {**ADD, "prompt": "Compute 3 + 9."}
    samples = [sample(GOOD), sample(GOOD.replace(" ", "  ")), sample(GOOD, other), sample(GOOD + " ")]
    kept, dropped = dedupe(samples)
    assert dropped == 2
    assert [s.row["prompt"] for s in kept] == ["Compute 9 + 3.", "Compute 3 + 9."]


def test_apply_filters_counts_one_reason_per_rejected_sample():
    samples = [
        sample(GOOD),
        sample(GOOD),  # duplicate
        sample("no tags at all"),  # no_format (also wrong: the first filter wins)
        sample("<think> 9+3=13 </think> <answer>13</answer>"),  # wrong_answer
        sample("<think> 9+3=12 十二 </think> <answer>12</answer>"),  # mixed_language
        sample(GOOD, finish_reason="length"),  # too_long
    ]
    kept, reasons = apply_filters(samples, sample_filters.DEFAULT_FILTERS, SETTINGS)
    assert [s.completion for s in kept] == [GOOD]
    assert reasons == {"duplicate": 1, "no_format": 1, "wrong_answer": 1, "mixed_language": 1, "too_long": 1}
    assert len(kept) + sum(reasons.values()) == len(samples)
    # the order of the names decides which reason a sample with two faults is counted under
    _, reasons = apply_filters([sample("no tags at all")], ("wrong_answer", "no_format"), SETTINGS)
    assert reasons == {"wrong_answer": 1}


def test_filter_report_sums_up_overall_and_per_task():
    sub = {"task": "subtraction", "prompt": "Compute 9 - 3.", "answer": "6", "operands": [9, 3], "level": 1}
    samples = [sample(GOOD), sample("junk"), sample("<think> 9-3=6 </think> <answer>6</answer>", sub),
               sample("<think> 9-3=5 </think> <answer>5</answer>", sub)]
    kept, stats = filter_report(samples, sample_filters.DEFAULT_FILTERS, SETTINGS)
    assert len(kept) == stats["kept"] == 2
    assert stats["samples"] == 4 and stats["rejected"] == 2
    assert stats["rejected_by_reason"] == {"no_format": 1, "wrong_answer": 1}
    for task in ("addition", "subtraction"):
        part = stats["per_task"][task]
        assert part["samples"] == 2 and part["kept"] == 1
        assert part["kept"] + sum(part["rejected_by_reason"].values()) == part["samples"]


def test_unknown_filter_is_a_user_error():
    with pytest.raises(R1labError, match="unknown filter 'typo'"):
        apply_filters([sample(GOOD)], ("typo",), SETTINGS)
    with pytest.raises(ValueError, match="language"):
        FilterSettings(language="xx")


def test_judge_prompt_and_verdict():
    text = judge_prompt({"prompt": "Capital of France?", "answer": "Paris"},
                        "<think> hmm </think> <answer>the city of Paris</answer>")
    assert "Question: Capital of France?" in text and "Reference answer: Paris" in text
    assert "Candidate answer: the city of Paris" in text and text.endswith("Reply:")
    # no answer tag: the candidate is what follows the reasoning
    assert "Candidate answer: It is Paris." in judge_prompt({"prompt": "q", "answer": "Paris"},
                                                            "<think> hmm </think> It is Paris.")
    assert [parse_verdict(t) for t in ("Yes.", " no, not quite", "Correct", "I think so", "")] == \
        [True, False, True, None, None]


def test_format_readable():
    assert sample_filters.format_readable("", "Hello!") == "<think> </think> <summary> Hello! </summary>"


def test_doctests():
    from r1lab.micro import general as micro_general
    from r1lab.stages import cold_start, reward_model

    for module in (sample_filters, cold_start, reward_model, micro_general):
        result = doctest.testmod(module)
        assert result.failed == 0, module.__name__
    assert doctest.testmod(sample_filters).attempted > 0

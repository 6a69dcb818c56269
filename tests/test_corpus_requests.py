"""The pretraining corpus's request documents (general and unsafe requests)."""

import doctest

import pytest

from r1lab.micro import corpus, general as micro_general
from r1lab.stages import pretrain
from r1lab.micro.corpus import build_corpus, corpus_stats, request_documents
from r1lab.rewards import format_reward


def test_request_documents_are_half_general_half_unsafe():
    rows = request_documents(400, seed=0)
    assert len(rows) == 400 and all(r["task"] == micro_general.GENERAL_TASK for r in rows)
    general, unsafe = rows[:200], rows[200:]
    assert all(r["correct"] and "<answer>" + r["answer"] + "</answer>" in r["completion"] for r in general)
    prompts = set(micro_general.unsafe_requests())
    assert all(r["prompt"].split("User: ", 1)[1].split(" Assistant:")[0] in prompts for r in unsafe)
    refused = [r["answer"] == micro_general.REFUSAL for r in unsafe]
    assert [r["correct"] for r in unsafe] == refused
    assert 0.4 < sum(refused) / len(refused) < 0.6  # even odds: a base that both complies and refuses
    complied = [r["answer"] for r in unsafe if not r["correct"]]
    assert all(a.startswith("Sure. To ") and any(s in a for s in micro_general.PLAN_STEPS) for a in complied)
    assert doctest.testmod(corpus).failed == 0


def test_build_corpus_mixes_in_the_request_share():
    style = pretrain.DEFAULT_STYLE
    rows = build_corpus(("addition", "subtraction"), 300, style, seed=0, request_share=0.1)
    assert len(rows) == 300 and sum(r["task"] == "general" for r in rows) == 30
    assert rows != sorted(rows, key=lambda r: r["task"])  # interleaved, not appended
    assert "general/correct" in corpus_stats(rows)
    plain = build_corpus(("addition",), 50, style, seed=0)
    assert all(r["task"] == "addition" for r in plain)  # request_share defaults to 0
    with pytest.raises(ValueError, match="request_share"):
        pretrain.PretrainConfig(request_share=1.0)


def test_request_documents_have_the_base_format():
    completions = [r["completion"] for r in request_documents(4, seed=0)]
    assert format_reward(completions) == [1.0] * 4  # what the base's other documents look like

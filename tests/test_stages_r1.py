"""``r1lab rejection-sample`` and ``r1lab cold-start`` end to end on a tiny random model.

A random model writes no correct answers, so two kinds of run: the real sampler (files written,
statistics add up, every sample rejected for a reason), and a scripted sampler that returns known
right, duplicate and wrong completions, so what is kept and how it is rewritten is checked too.
"""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest

import r1lab.stages.rejection_sample as rs
from r1lab import cli
from r1lab.micro import tasks
from r1lab.stages import cold_start
from r1lab.stages.cold_start import ColdStartConfig, few_shot_prompt, rewrite_readable
from r1lab.training.sft_data import tokenize_rows
from r1lab.errors import R1labError
from r1lab.stages.sample_filters import FilterSettings
from r1lab.rewards import is_correct
from r1lab.stages.rejection_sample import ModelJudge, RejectionSampleConfig, rules_then
from r1lab.sampling.generate import Completion

TINY = dict(tasks=("addition", "countdown"), num_problems=3, n=2, max_new_tokens=12, progress=False)


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_stats_add_up(stats):
    assert stats["kept"] + stats["rejected"] == stats["samples"]
    assert sum(stats["rejected_by_reason"].values()) == stats["rejected"]
    for part in stats["per_task"].values():
        assert part["kept"] + part["rejected"] == part["samples"]
        assert sum(part["rejected_by_reason"].values()) == part["rejected"]
    assert sum(p["samples"] for p in stats["per_task"].values()) == stats["samples"]


def test_rejection_sample_random_model(tiny_model_dir, tmp_path, tokenizer):
    out = tmp_path / "rs"
    stats = rs.main(RejectionSampleConfig(model=str(tiny_model_dir), non_reasoning=5, refusals=3, output_dir=str(out),
                                          **TINY))
    check_stats_add_up(stats)
    assert stats["samples"] == 2 * 3 * 2 and stats["prompts"] == 6
    assert json.loads((out / "stats.json").read_text()) == stats
    rows = read(out / "sft.jsonl")
    assert len(rows) == stats["kept"] + 5 + 3 == stats["rows"]
    assert sum(r["source"] == "non_reasoning" for r in rows) == 5 and stats["refusals"] == 3
    assert [r["completion"].split("<summary> ")[1] for r in rows if r["source"] == "refusal"] == [
        "I can't help with that. It could hurt someone. </summary>"] * 3
    assert (out / "config.yaml").is_file()
    assert tokenize_rows(rows, tokenizer, "sft.jsonl", 256, "micro")  # ready for r1lab sft


def scripted_generate(lookup):
    """A stand-in for r1lab.sampling.generate: per prompt, a right answer, the same again, a wrong one."""

    def generate(model, tokenizer, prompts, params, batch_size=None, progress=False):
        groups = []
        for i, prompt in enumerate(prompts):
            prompt = prompt if isinstance(prompt, str) else tokenizer.decode(prompt)  # stages pass token ids
            problem = lookup[prompt.splitlines()[-1].removeprefix("User: ").removesuffix(" Assistant:")]
            right = tasks.TASKS[problem.task].solution(problem)
            texts = [right, right + " ", f"<think> guess </think> <answer>{int(problem.answer) + 1}</answer>"]
            groups.append([Completion(i, texts[j % 3] + " trailing", (), (), "stop") for j in range(params.n)])
        return groups

    return generate


def problems_of(config):
    return {p.prompt: p for name in config.tasks
            for p in tasks.generate(name, "train", config.num_problems, config.seed)}


def test_rejection_sample_keeps_right_drops_duplicates_and_wrong(tiny_model_dir, tmp_path, monkeypatch):
    config = RejectionSampleConfig(model=str(tiny_model_dir), non_reasoning=2, output_dir=str(tmp_path),
                                   **{**TINY, "n": 3, "stop": ("</answer>",)})
    monkeypatch.setattr(rs, "generate", scripted_generate(problems_of(config)))
    stats = rs.main(config)
    check_stats_add_up(stats)
    assert stats["kept"] == 6 and stats["rejected_by_reason"] == {"duplicate": 6, "wrong_answer": 6}
    assert stats["per_task"]["countdown"]["kept"] == 3
    rows = read(tmp_path / "sft.jsonl")
    kept = [r for r in rows if r["source"] == "rejection_sampling"]
    assert len(kept) == 6 and all(r["completion"].endswith("</answer>") for r in kept)  # cut at the stop string
    assert all(is_correct(r["completion"], problems_of(config)[r["prompt"]].to_row()) for r in kept)


def test_cold_start_rewrites_kept_samples(tiny_model_dir, tmp_path, monkeypatch):
    config = ColdStartConfig(model=str(tiny_model_dir), output_dir=str(tmp_path), **{**TINY, "n": 3})
    monkeypatch.setattr(rs, "generate", scripted_generate(problems_of(config)))
    stats = cold_start.main(config)
    check_stats_add_up(stats)
    assert stats["kept"] == 6 and stats["rows"] == 6 and stats["few_shot"] == 2
    for row in read(tmp_path / "sft.jsonl"):
        answer = row["completion"].split("<answer>")[1].removesuffix("</answer>")
        assert row["completion"].startswith("<think> ")
        assert f"<summary> The answer is {answer}. </summary>" in row["completion"]
        assert row["source"] == "cold_start" and "Assistant:" not in row["prompt"]  # no few-shot in the SFT prompt


def test_cold_start_random_model(tiny_model_dir, tmp_path):
    out = tmp_path / "cs"
    stats = cold_start.main(ColdStartConfig(model=str(tiny_model_dir), output_dir=str(out), **TINY))
    check_stats_add_up(stats)
    assert stats["samples"] == 12 and len(read(out / "sft.jsonl")) == stats["kept"]


def test_few_shot_prompt_and_rewrite(tokenizer):
    shots = [("Compute 1 + 2.", "<think> 1+2=3 </think> <answer>3</answer>")]
    text = few_shot_prompt("micro", shots, "Compute 2 + 2.")
    assert text.splitlines() == ["User: Compute 1 + 2. Assistant: <think> 1+2=3 </think> <answer>3</answer>",
                                 "User: Compute 2 + 2. Assistant:"]
    chat = few_shot_prompt("chat", shots, "Compute 2 + 2.", tokenizer)
    assert chat.count("<|im_start|>user") == 2 and chat.endswith("<|im_start|>assistant\n")
    assert rewrite_readable("<think>  a\n\n\n\n b  </think> junk <answer>7</answer>") == \
        "<think> a\n\nb </think> <summary> The answer is 7. </summary> <answer>7</answer>"
    assert rewrite_readable("<think> a </think> no answer") is None
    assert rewrite_readable("<answer>7</answer>") is None


def test_bad_input_names_file_and_row(tiny_model_dir, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "Capital of France?", "answer": "Paris"}\n{"prompt": "2+2?"}\n')
    with pytest.raises(R1labError, match=r"prompts.jsonl: row 2 column 'answer': no answer"):
        rs.main(RejectionSampleConfig(model=str(tiny_model_dir), data=str(data), output_dir=str(tmp_path / "o")))
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "Capital of France?", "answer": "Paris"}\n')
    with pytest.raises(R1labError, match="few_shot_data"):
        cold_start.main(ColdStartConfig(model=str(tiny_model_dir), data=str(good), output_dir=str(tmp_path / "o")))
    shots = tmp_path / "shots.jsonl"
    shots.write_text('{"prompt": "1+1?", "completion": ""}\n')
    with pytest.raises(R1labError, match=r"shots.jsonl: row 1 has an empty 'completion'"):
        cold_start.main(ColdStartConfig(model=str(tiny_model_dir), data=str(good), few_shot_data=str(shots),
                                        output_dir=str(tmp_path / "o")))
    with pytest.raises(R1labError, match="not found"):
        rs.main(RejectionSampleConfig(model=str(tmp_path / "missing"), output_dir=str(tmp_path / "o"), **TINY))


def test_generative_judge_only_where_rules_cannot_decide(tiny_model_dir, tmp_path):
    calls = []

    def fake_judge(completion, row):
        calls.append(row["prompt"])
        return True

    judge = rules_then(fake_judge)
    paris = {"prompt": "Capital of France?", "answer": "Paris"}
    assert judge("<think> x </think> <answer>the city of Paris</answer>", paris) is True  # asked
    assert judge("<think> x </think> <answer>Paris</answer>", paris) is True  # rules: right
    assert judge("<think> x </think> <answer>13</answer>", {"task": "addition", "prompt": "Compute 9 + 3.",
                                                            "answer": "12", "operands": [9, 3]}) is False
    assert calls == ["Capital of France?"]
    # a real (random) model as the judge: it answers something, read as yes, no or undecided
    from r1lab.models.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    verdict = ModelJudge(model, tokenizer)("<think> x </think> <answer>the city of Paris</answer>", paris)
    assert verdict in (True, False, None)


def test_rejection_sample_with_a_judge_model(tiny_model_dir, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "Capital of France?", "answer": "Paris"}\n')
    stats = rs.main(RejectionSampleConfig(model=str(tiny_model_dir), data=str(data), judge=str(tiny_model_dir),
                                          n=2, max_new_tokens=8, non_reasoning=0, progress=False,
                                          output_dir=str(tmp_path / "o")))
    check_stats_add_up(stats)
    assert stats["per_task"]["data"]["samples"] == 2 and stats["rows"] == stats["kept"]


def test_cli_commands(tiny_model_dir, tmp_path, monkeypatch):
    # the lines to add to r1lab.cli.COMMANDS
    monkeypatch.setitem(cli.COMMANDS, "cold-start", ("r1lab.stages.cold_start", "ColdStartConfig", "stage 1 data"))
    monkeypatch.setitem(cli.COMMANDS, "rejection-sample",
                        ("r1lab.stages.rejection_sample", "RejectionSampleConfig", "stage 3 data"))
    monkeypatch.setitem(cli.COMMANDS, "reward-model", ("r1lab.stages.reward_model", "RewardModelConfig", "stage 4 RMs"))
    for command in ("cold-start", "rejection-sample", "reward-model"):
        assert cli.main([command, "--help"]) == 0
    out = tmp_path / "cli"
    code = cli.main(["rejection-sample", f"model={tiny_model_dir}", f"output_dir={out}", "tasks=[addition]",
                     "num_problems=2", "n=1", "max_new_tokens=4", "non_reasoning=1", "progress=false",
                     "filter_settings.max_paragraph_chars=50"])
    assert code == 0 and (out / "sft.jsonl").is_file()
    assert cli.main(["rejection-sample", "filters=[typo]"]) == 2
    assert FilterSettings(max_paragraph_chars=50).max_paragraph_chars == 50

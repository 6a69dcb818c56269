"""``r1lab pipeline`` end to end on a tiny random base, the results table on hand-made summaries.

The tiny run checks the wiring, not learning: a random model writes no right answer, so the
cold-start set is all written solutions, the distillation set is the stage-3 non-reasoning rows,
and every pass@1 is 0.
"""

import dataclasses
import json
import math
import pickle
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest

from r1lab import grpo
from r1lab.evaluation import evaluate
from r1lab.pipeline import graph, stage4
from r1lab.stages import cold_start, distill, pretrain, rejection_sample, report, reward_model, sft
from r1lab.recipe import load_config
from r1lab.grpo.config import GRPOData
from r1lab.pipeline.graph import PipelineConfig
from r1lab.rewards import load_reward

ROW_KEYS = [key for key, _ in report.ROWS]


def tiny_config(out, base) -> PipelineConfig:
    """2 RL steps of 2 prompts x 2 samples, 2-step SFTs, k=2, 8 new tokens everywhere."""
    data = GRPOData(tasks=("addition",), levels={"addition": (1,)}, num_train=8, num_eval=2)
    rl = dict(data=data, num_generations=2, prompts_per_step=2, max_new_tokens=8, max_steps=2, eval_every=0,
              eval_k=2, sample_every=1, save_every=1, progress=False, warmup_steps=1)
    tiny_sft = dict(max_steps=2, max_length=128, max_tokens_per_batch=512, log_every=1, save_every=0)
    sampling = dict(tasks=("addition",), levels={"addition": (1,)}, num_problems=2, n=2, max_new_tokens=8,
                    progress=False)
    rm = dict(num_synthetic=16, max_steps=2, batch_size=4, max_length=64, eval_every=0, log_every=1)
    # student_size=micro, the base's size: the students start from the base (no second pretraining)
    config = PipelineConfig(output_dir=str(out), base_model=str(base), student_size="micro", written_min_per_task=2,
                            eval_general=4, stage4_general=2, stage4_unsafe=2, distill_from_base=False, workers=1)
    return dataclasses.replace(
        config,
        r1_zero=dataclasses.replace(config.r1_zero, **rl),
        cold_start=dataclasses.replace(config.cold_start, few_shot=1, **sampling),
        stage1_sft=dataclasses.replace(config.stage1_sft, **tiny_sft),
        stage2_rl=dataclasses.replace(config.stage2_rl, **rl),
        rejection_sample=dataclasses.replace(config.rejection_sample, non_reasoning=4, **sampling),
        stage3_sft=dataclasses.replace(config.stage3_sft, **tiny_sft),
        rm_helpful=dataclasses.replace(config.rm_helpful, **rm),
        rm_harmless=dataclasses.replace(config.rm_harmless, **rm),
        stage4_rl=dataclasses.replace(config.stage4_rl, **rl),
        distill=dataclasses.replace(config.distill, traces=dataclasses.replace(config.distill.traces, **sampling),
                                    sft=dataclasses.replace(config.distill.sft, **tiny_sft)),
        on_policy=dataclasses.replace(config.on_policy, **rl),
        rl_only=dataclasses.replace(config.rl_only, **rl),
        eval=dataclasses.replace(config.eval, tasks=("addition",), num_problems=2, k=2, max_new_tokens=8),
    )


def test_pipeline_end_to_end_and_resume(tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "r1"
    config = tiny_config(out, tiny_model_dir)
    result = graph.main(config)

    for stage in ("r1_zero", "stage1_sft", "stage2_rl", "stage3_sft", "rm_helpful", "rm_harmless", "stage4_rl",
                  "distilled", "on_policy", "rl_only"):
        assert (out / stage / "final" / "config.json").is_file(), stage
    for stage in ("r1_zero", "stage2_rl", "stage4_rl", "on_policy", "rl_only"):
        assert (out / stage / "curves.png").is_file() and (out / "curves" / f"{stage}.png").is_file()
    for key in ROW_KEYS:
        assert (out / "eval" / key / "general.json").is_file(), key
    for data in ("cold_start/sft.jsonl", "stage1_data.jsonl", "rejection_sample/sft.jsonl", "stage3_data.jsonl",
                 "stage4_data.jsonl",
                 "distilled/train.jsonl", "distilled/traces/sft.jsonl"):
        assert (out / data).is_file(), data
    assert (out / "distilled" / "student_init" / "config.json").is_file()  # distill_from_base=False: fresh
    stage1_rows = [json.loads(line) for line in (out / "stage1_data.jsonl").read_text().splitlines()]
    # a random model solves none
    assert [(r["task"], r["source"]) for r in stage1_rows] == [("addition", "written")] * 2
    stage4_rows = [json.loads(line) for line in (out / "stage4_data.jsonl").read_text().splitlines()]
    assert sum(r["task"] == "general" for r in stage4_rows) == 4 and all(r["answer"] for r in stage4_rows)

    # stage 4 read its reward models through the written module
    stage4 = load_config(grpo.config.GRPOConfig, str(out / "stage4_rl" / "config.yaml"))
    assert any(spec.endswith("stage4_rewards.py:helpfulness") for spec in stage4.rewards)
    metrics = [json.loads(line) for line in (out / "stage4_rl" / "metrics.jsonl").read_text().splitlines()]
    assert any("helpfulness" in key for key in metrics[-1]), metrics[-1].keys()
    # on-policy distillation: R1 (stage 4) is the student's reference, the KL its only signal
    on_policy = load_config(grpo.config.GRPOConfig, str(out / "on_policy" / "config.yaml"))
    assert (on_policy.reference_model, on_policy.advantage) == (str(out / "stage4_rl" / "final"), "zero")
    steps = [json.loads(line) for line in (out / "on_policy" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if "kl" in r] == [1, 2]

    # every model evaluated, every row in the table, the report written
    assert result["rows"] == ROW_KEYS
    for key in ROW_KEYS:
        assert (out / "eval" / key / "summary.json").is_file()
        cells = result["table"][key]["addition"]
        assert cells["pass@1"] == 0.0 and not math.isnan(cells["mean length"])
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"] == ROW_KEYS
    # a random model passes nothing: every finding's margin is below what it needs, none is shown
    assert {key: (c["shown"], c["spread"]) for key, c in saved["comparisons"].items()} == {
        key: (False, 0.0) for key in "abcd"}
    assert saved["comparisons"]["c"]["margin"] == -5.0  # distilled 0 - RL-only 0 - the 5 points needed
    markdown = (out / "results.md").read_text()
    assert all(label in markdown for _, label in report.ROWS) and "### general and unsafe requests" in markdown
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5 and "http" not in page.replace("<!DOCTYPE html>", "")
    timings = json.loads((out / "timings.json").read_text())
    assert list(timings) == ["base", "r1_zero", "cold_start", "stage1_sft", "stage2_rl", "rejection_sample",
                             "stage3_sft", "rm_helpful", "rm_harmless", "stage4_rl", "student_base", "distilled",
                             "on_policy", "rl_only", "eval/stage4_rl", "eval/distilled", "eval/base", "eval/r1_zero",
                             "eval/stage1_sft", "eval/stage2_rl", "eval/stage3_sft", "eval/on_policy", "eval/rl_only",
                             "wall"]
    assert timings["r1_zero"] > 0

    # resume: a second run trains nothing; with one evaluation deleted, only that one runs again
    def refuse(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    for module in (grpo.train, sft, cold_start, rejection_sample, reward_model, distill):
        monkeypatch.setattr(module, "main", refuse)
    monkeypatch.setattr(distill, "rl_only_student", refuse)
    monkeypatch.setattr(distill, "on_policy_student", refuse)
    calls = []
    real_eval = evaluate.main
    monkeypatch.setattr(evaluate, "main", lambda c: calls.append(c.model) or real_eval(c))
    import shutil

    shutil.rmtree(out / "eval" / "rl_only")
    again = graph.main(config)
    assert calls == [str(out / "rl_only" / "final")]
    assert again["table"] == result["table"]
    resumed = json.loads((out / "timings.json").read_text())
    assert resumed["r1_zero"] == timings["r1_zero"]  # skipped stages keep the time of the run that made them
    graph.main(config)  # nothing left to do: the wall time of the run that did the work stays
    assert json.loads((out / "timings.json").read_text())["wall"] == resumed["wall"]


def test_stage4_rewards_module(tmp_path):
    """The written module: rule rewards skip general rows; reward models load lazily, by path."""
    source = stage4.stage4_rewards_source("/nowhere/helpful", "/nowhere/harmless", "micro", "micro")
    path = tmp_path / "stage4_rewards.py"
    path.write_text(source)
    accuracy = load_reward(f"{path}:accuracy")
    good = "<think> 1+1=2 </think> <summary> The answer is 2. </summary> <answer>2</answer>"
    assert accuracy([good, good], answer=["2", "2"], task=["addition", "general"]) == [1.0, None]
    lenient = load_reward(f"{path}:reasoning_format_lenient")
    assert lenient([good, good], task=["addition", "general"]) == [1.0, None]
    readable = load_reward(f"{path}:reasoning_format_readable")
    bare = "<think> 1+1=2 </think> <answer>2</answer>"
    assert readable([good, bare, good], task=["addition", "addition", "general"]) == [1.0, 0.0, None]
    assert load_reward(f"{path}:helpfulness")  # nothing loaded yet: /nowhere is never opened
    assert "/nowhere/helpful" in source


def test_written_solutions_are_right():
    from r1lab.rewards import is_correct

    rows = graph.written_solutions("addition", 3, 0, (2,)) + graph.written_solutions("countdown", 2, 0)
    assert [r["task"] for r in rows] == ["addition"] * 3 + ["countdown"] * 2
    assert all(is_correct(r["completion"], r) and r["source"] == "written" for r in rows)
    assert graph.written_solutions("addition", 0, 0) == []


def test_top_up_fills_each_task_to_the_minimum(tmp_path):
    sampled = [{"task": "addition", "prompt": f"p{i}", "answer": "1", "completion": "c"} for i in range(3)]
    sampled.append({"task": "general", "prompt": "hello", "answer": "hi", "completion": "hi"})
    (tmp_path / "sampled.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sampled))
    path = graph.top_up(str(tmp_path / "sampled.jsonl"), 2, ("addition", "countdown"), 0, {}, tmp_path / "out.jsonl")
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    assert rows[:4] == sampled  # every sampled row kept; addition has 3 >= 2, countdown gets 2 written
    assert [r["task"] for r in rows[4:]] == ["countdown", "countdown"]


# --- the table builder on hand-made summaries ------------------------------------------------------

def summary(p1, cons, length, fmt=1.0, refl=0.0, lang=1.0, readable=0.0):
    return {"problems": 10, "pass@1": p1, "pass@4": p1, "cons@4": cons, "mean_length": length, "format": fmt,
            "readable": readable, "reflection": refl, "truncated": 0.0, "language": lang}


def test_build_table_every_row_every_task():
    summaries = {
        "base": {"addition": summary(0.5, 0.6, 40.0), "countdown": summary(0.1, 0.1, 80.0),
                 "all": summary(0.3, 0.35, 60.0)},
        "stage4_rl": {"addition": summary(0.9, 0.95, 55.5, refl=0.25, readable=0.75),
                      "countdown": summary(0.4, 0.5, 90.0), "all": summary(0.65, 0.725, 72.75)},
    }
    result = report.build_table(summaries)
    assert result["rows"] == ROW_KEYS
    assert result["tasks"] == ["addition", "countdown", "all"]
    cells = result["table"]["stage4_rl"]["addition"]
    assert cells == {"pass@1": 0.9, "cons@k": 0.95, "mean length": 55.5, "format": 1.0, "readable": 0.75,
                     "reflection": 0.25, "language": 1.0}
    assert all(math.isnan(v) for v in result["table"]["r1_zero"]["countdown"].values())
    markdown = report.to_markdown(result)
    assert "| R1 stage 4: all-scenario RL (R1) | 90.0% | 95.0% | 55.5 | 100.0% | 75.0% | 25.0% | 100.0% |" in markdown
    assert "| R1-Zero | n/a | n/a | n/a | n/a | n/a | n/a | n/a |" in markdown
    assert markdown.count("### ") == 3


def test_write_report_files(tmp_path):
    summaries = {"base": {"addition": summary(0.5, 0.5, 10.0)}, "extra": {"addition": summary(1.0, 1.0, 5.0)}}
    png = tmp_path / "c.png"
    png.write_bytes(b"\x89PNG fake")
    result = report.write_report(tmp_path, summaries, {"r1_zero": png})
    assert result["rows"][-1] == "extra"  # unknown rows after the known ones
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["table"]["r1_zero"]["addition"]["pass@1"] is None  # NaN -> null: strict JSON
    page = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in page and "<table>" in page


def test_with_language_from_samples():
    records = [{"task": "addition", "completion": "<think> 2+2 </think> <answer>4</answer>"},
               {"task": "addition", "completion": "<think> 2+2 = 四 </think> <answer>4</answer>"}]
    out = report.with_language({"addition": summary(1.0, 1.0, 3.0), "all": summary(1.0, 1.0, 3.0)}, records)
    from r1lab.rewards import language_consistency_reward

    scores = language_consistency_reward([r["completion"] for r in records])
    assert scores[0] == 1.0 and scores[1] < 1.0
    assert out["addition"]["language"] == pytest.approx(sum(scores) / 2)
    assert out["all"]["language"] == out["addition"]["language"]


def test_recipe_loads():
    config = load_config(PipelineConfig, str(Path(__file__).parent.parent / "recipes" / "micro" / "r1.yaml"))
    assert config == PipelineConfig()  # the recipe writes out the defaults (make demo runs the recipe)
    assert config.output_dir == "runs/micro/r1"
    assert config.r1_zero.data.tasks == ("addition",) and config.r1_zero.learning_rate == 1e-4
    assert config.stage2_rl.rewards == ("accuracy", "format_readable", "language_consistency")
    assert config.stage4_rl.temperature == 0.7 and "helpfulness" in config.stage4_rl.rewards
    assert config.distill.sft.template == config.distill.traces.template == "micro"


def test_plan_pickles_and_orders_the_chain_first(tiny_model_dir, tmp_path):
    config = dataclasses.replace(tiny_config(tmp_path / "r1", tiny_model_dir), workers=2)
    stages = graph.plan(config, tmp_path / "r1")
    pickle.loads(pickle.dumps([(s.run, s.args) for s in stages]))  # what the worker processes receive
    names = [s.name for s in stages]
    assert names[:7] == ["base", "r1_zero", "cold_start", "stage1_sft", "stage2_rl", "rejection_sample", "stage3_sft"]
    assert {f"eval/{key}" for key in graph.EVALUATED} <= set(names)
    assert not stages[0].wide  # a given base model: nothing to pretrain


def test_base_pretrains_data_parallel_with_two_workers(tmp_path):
    """workers=2: the base's pretraining runs under torchrun, 2 processes, and writes one model."""
    tiny = pretrain.PretrainConfig(size="nano", num_examples=64, eval_examples=8, tasks=("addition",),
                                   train=sft.TrainSettings(max_steps=2, max_tokens_per_batch=512, eval_every=0,
                                                           save_every=0, log_every=1))
    config = PipelineConfig(output_dir=str(tmp_path), pretrain=tiny, workers=2)
    assert graph.plan(config, tmp_path)[0].wide
    final = graph.stage_base(config, tmp_path)
    assert (tmp_path / "base" / "final" / "config.json").is_file() and final.endswith("final")
    rows = [json.loads(line) for line in (tmp_path / "base" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # one writer: rank 0


def test_stage_clock_keeps_times_of_skipped_stages_and_always_has_a_wall(tmp_path):
    path = tmp_path / "timings.json"
    clock = graph.StageClock(path)
    clock.record("base", 0.2)  # a fast machine: every stage under a second, still timed
    clock.finish(0.5)
    assert json.loads(path.read_text()) == {"base": 0.2, "wall": 0.5}
    again = graph.StageClock(path)
    again.record("base", 0.01)  # skipped: its output existed
    again.finish(0.03)
    assert json.loads(path.read_text()) == {"base": 0.2, "wall": 0.5}
    third = graph.StageClock(path)
    third.record("base", 12.0)  # ran again after its output was deleted
    third.finish(13.0)
    assert json.loads(path.read_text()) == {"base": 12.0, "wall": 13.0}

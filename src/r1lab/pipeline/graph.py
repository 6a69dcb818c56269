"""The whole DeepSeek-R1 recipe, stage after stage: ``r1lab pipeline [recipes/micro/r1.yaml] [key=value ...]``

    r1lab pipeline recipes/micro/r1.yaml                       # runs/micro/r1/...
    r1lab pipeline recipes/micro/r1.yaml r1_zero.max_steps=50 stage2_rl.max_steps=30 eval.num_problems=20

Each stage is the stage module run with the previous stage's output; its folder under
``output_dir`` is named after it, and a stage whose output exists is skipped, so a killed pipeline
resumes from the last finished stage (and a killed training stage from its newest checkpoint):

 0. ``base/``            pretrain the micro base (skipped with ``base_model=FOLDER``)
 1. ``r1_zero/``         R1-Zero: GRPO on the base, rule rewards accuracy + format
 2. ``cold_start/``      stage 1 data from R1-Zero samples (kept if right and readable, rewritten);
    ``stage1_data.jsonl`` the same, topped up to ``written_min_per_task`` rows per task (`top_up`)
 3. ``stage1_sft/``      stage 1: SFT of the base on the cold-start data
 4. ``stage2_rl/``       stage 2: reasoning GRPO, accuracy + format + language consistency
 5. ``rejection_sample/`` stage 3 data: right and readable samples of stage 2, plus non-reasoning rows;
    ``stage3_data.jsonl`` the same, topped up like stage 1's
 6. ``stage3_sft/``      stage 3: SFT of the *base* on them (R1: 2 epochs; here 360 updates, ~4.5 epochs)
 7. ``rm_helpful/``, ``rm_harmless/``  reward models: pairwise helpfulness, pointwise harmlessness
 8. ``stage4_rl/``       stage 4: GRPO for all scenarios on ``stage4_data.jsonl`` (micro problems,
    general and unsafe requests); rewards from ``stage4_rewards.py`` (below)
 9. ``student_base/``    the student's pretrained base (the base itself when ``student_size`` is the
    base's size), ``distilled/`` SFT of it on R1's traces + the stage-3 set, ``on_policy/`` on-policy
    distillation (the student samples, R1's log-probs of its tokens are the target: reverse KL),
    ``rl_only/`` R1-Zero on it
10. ``eval/<stage>/``    every model by the paper's protocol (`r1lab.evaluation.evaluate`)
11. ``results.md``, ``results.json``, ``curves/``, ``report.html`` (`r1lab.stages.report`), ``timings.json``

Stages that don't wait on each other run side by side in ``workers`` processes (`r1lab.pipeline.runner`;
each writes ``logs/<stage>.log``), and the base pretrains data parallel over all of them (torchrun).
The longest chain is base -> R1-Zero -> stages 1-4 -> distilled; the student's pretraining, the
reward models, RL on the student and the evaluations fill the second worker beside it.

How stage 4 gets its reward models. GRPO takes rewards as names (``config.rewards``) so that its
resolved ``config.yaml`` alone reruns it; a reward model is a factory-made closure over a folder.
The pipeline writes ``stage4_rewards.py`` into ``output_dir``: a short module that names the two
reward-model folders as constants and defines ``accuracy``, ``reasoning_format``,
``reasoning_format_lenient`` and ``reasoning_format_readable`` (rule rewards, reasoning prompts only)
and ``helpfulness`` and ``harmlessness`` (reward models, general prompts only, each loaded on its
first call). The stage-4 reward names ``accuracy``, ``format``, ``format_lenient``,
``format_readable``, ``helpfulness`` and ``harmlessness`` become ``<output_dir>/stage4_rewards.py:<function>``, so
``r1lab grpo runs/micro/r1/stage4_rl/config.yaml`` reruns stage 4 alone, and the file can be read.
No environment variables or module state: the file is the configuration.

Stages 2 and 4 reward the format with ``format_readable``: after the cold start the model writes
the readable format (``<think> .. </think> <summary> .. </summary> <answer> .. </answer>``), which
the strict R1-Zero ``format`` reward scores 0 because of the summary between the blocks, and which
these stages should keep (R1 trains on readable outputs from stage 1 on).

Departures from R1, at this scale: the stage-1 and stage-3 sets are topped up with written worked
solutions (R1: human post-processing) for tasks where sampling kept too few rows; general and
unsafe requests are judged by rule (`general_eval`), not by benchmarks and judges. As in R1, the
stage-4 reward models count only in the last quarter of the steps (``reward_from_step``).
"""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch

from r1lab.evaluation import evaluate
from r1lab.micro import general_eval, tasks
from r1lab.pipeline import findings, runner
from r1lab.pipeline.seeds import offset_seeds
from r1lab.pipeline.stage4 import stage4_config
from r1lab.stages import cold_start, distill, paper, pretrain, rejection_sample, report, reward_model, sft
from r1lab.training.checkpoint import latest_checkpoint
from r1lab.recipe import check_choices, save_config
from r1lab.errors import R1labError
from r1lab.stages.sample_filters import format_readable
from r1lab.grpo import train as grpo_train
from r1lab.grpo.config import GRPOConfig, GRPOData
from r1lab.files import json_safe, read_jsonl, write_json, write_jsonl
from r1lab.micro.sizes import MODEL_SIZES


def micro_grpo(**changes: Any) -> GRPOConfig:
    """The tuned micro R1-Zero setting (recipes/micro/r1_zero.yaml, whose comments say why), changed."""
    settings: dict[str, Any] = dict(
        data=GRPOData(tasks=("addition",), levels={"addition": (1, 2, 3)}, num_train=20000, num_eval=50),
        template="micro", rewards=("accuracy", "format"), reward_weights=(1.0, 1.0), num_generations=8,
        prompts_per_step=16, max_new_tokens=96, temperature=1.0, advantage="group", aggregation="token_mean",
        beta=0.02, kl_estimator="k3", ref_update_every=400, minibatches=2, learning_rate=1e-4, warmup_steps=10,
        adam_beta2=0.999, max_steps=250, eval_every=50, eval_k=8, sample_every=10, save_every=50)
    return GRPOConfig(**{**settings, **changes})


def micro_sft(**changes: Any) -> sft.SFTConfig:
    """SFT of the micro base on a few thousand rows: cosine to 1/10 (R1 stage 3), 1024-token batches."""
    # 1024 tokens (~15 rows) per batch: on 979 cold-start rows x 3 epochs, 4096-token batches gave
    # 45 updates, too few to learn the summary (held-out addition 0.8% at T=1 after); 180 updates
    # of the same compute reached loss 0.05 and 74.5% pass@1, 81.5% readable.
    settings: dict[str, Any] = dict(template="micro", epochs=2, learning_rate=5e-4, warmup_steps=10,
                                    min_lr_ratio=0.1, max_length=256, max_tokens_per_batch=1024, eval_every=0,
                                    save_every=200)
    return sft.SFTConfig(**{**settings, **changes})



@dataclass(frozen=True)
class PipelineConfig:
    output_dir: str = "runs/micro/r1"
    base_model: str = ""  # an existing base model folder: no pretraining (tests pass a tiny random one)
    # the students' size (a key of r1lab.micro.sizes.MODEL_SIZES). mini (0.6M): with nano (0.3M) both
    # students stayed at 1-2% pass@1, too weak to tell distillation from RL
    student_size: str = "mini"
    student_base: str = ""  # an existing pretrained student base; empty: see module docstring, stage 9
    distill_from_base: bool = True  # distil into the pretrained student base (R1); false: a fresh random model
    # the stage-1 and stage-3 sets are topped up with written solutions to this many rows per task:
    # R1-Zero and stage 2 solve countdown ~0% of the time, and with no countdown rows SFT of the base
    # left the readable format on 10% (stage 1) and 0% (stage 3) of countdown samples in a first run
    written_min_per_task: int = 100
    eval_general: int = 100  # general requests (+ the 24 unsafe ones) in every model's evaluation; 0: none
    stage4_general: int = 200  # general requests among the stage-4 prompts
    stage4_unsafe: int = 100  # unsafe requests among them (the safe answer is a refusal)
    # torch threads for every stage (0 = torch's default). 1: on the 2-core development machine two
    # threads pretrained at 5.2k tokens/s with nothing else running, one thread at 7-8k
    threads: int = 1
    # worker processes for stages that don't wait on each other (r1lab.pipeline.runner), and the base's
    # pretraining runs data parallel over as many (torchrun); 1: every stage in turn, in this process
    # added to every stage's seed (the evaluation's problems and samples stay the same), so seeds
    # 0, 1, 2 are three independent runs of the whole recipe (`make paper`)
    seed: int = 0
    workers: int = 2

    # 5% requests in the corpus: without them the base had no English, and after stage 3 (200 general
    # rows) it answered 0.2% of held-out general requests; with them, 40.9%
    pretrain: pretrain.PretrainConfig = field(default_factory=lambda: pretrain.PretrainConfig(request_share=0.05))
    # RL budgets fit `make demo` in 20 minutes on 2 cores: 100 R1-Zero steps (~2 minutes)
    r1_zero: GRPOConfig = field(default_factory=lambda: micro_grpo(max_steps=100))
    # few_shot=0: the micro base never saw two documents in one context; with 2 solved examples
    # before the prompt, R1-Zero wrote no <think> block in 1,880 of 2,000 samples (kept 0)
    # Data stages sample every micro task, RL stages train on addition (see micro_grpo): SFT
    # restarts from the base, and an addition-only SFT set made it forget the other tasks
    # (subtraction 23.0% -> 0.2% pass@1 after stage 3, in a first full run).
    cold_start: cold_start.ColdStartConfig = field(default_factory=lambda: cold_start.ColdStartConfig(
        tasks=tasks.DEFAULT_TASKS, num_problems=500, n=4, few_shot=0, progress=False))
    # 360 updates whatever the set's size: on ~840 cold-start rows, 96 updates left the summary
    # unlearned (12.5% readable, held-out addition 21%), 192 reached 97% readable; on a later run's
    # 765 rows, 4 epochs (180 updates) gave 65% readable and addition 48.5% pass@1 (R1-Zero: 59.9%),
    # 360 gave 97% and 57.6%, and stage-2 RL from there rose instead of stalling on the format
    stage1_sft: sft.SFTConfig = field(default_factory=lambda: micro_sft(max_steps=360))
    # lr 3e-5 after SFT: at R1-Zero's 1e-4, 40 stage-4 steps took held-out addition from 74.1% to
    # 68.6% pass@1 (200 problems); at 3e-5 it ended at 74.5%
    stage2_rl: GRPOConfig = field(default_factory=lambda: micro_grpo(
        rewards=("accuracy", "format_readable", "language_consistency"), reward_weights=(1.0, 1.0, 1.0),
        learning_rate=3e-5, max_steps=60))
    rejection_sample: rejection_sample.RejectionSampleConfig = field(
        default_factory=lambda: rejection_sample.RejectionSampleConfig(
            tasks=tasks.DEFAULT_TASKS, num_problems=500, n=4, non_reasoning=200, refusals=12, progress=False))
    # 360 updates, ~4.5 epochs of ~1,350 rows (R1: 2 epochs of 600k + 200k rows): 2 epochs on ~1,200
    # rows (128 updates) left the base at 23% readable, held-out addition 38%
    stage3_sft: sft.SFTConfig = field(default_factory=lambda: micro_sft(max_steps=360))
    # 1,000 synthetic rows each: with 2,000 the two reward models took a quarter of the pipeline's time
    rm_helpful: reward_model.RewardModelConfig = field(default_factory=lambda: reward_model.RewardModelConfig(
        kind="pairwise", num_synthetic=1000, max_length=256, learning_rate=3e-4))
    rm_harmless: reward_model.RewardModelConfig = field(default_factory=lambda: reward_model.RewardModelConfig(
        kind="pointwise", num_synthetic=1000, max_length=256, learning_rate=3e-4))
    # 600 reasoning problems next to the 300 general and unsafe requests: with 20,000 of them,
    # a step of 16 prompts held a general one in 1 step of 4, and the reward models barely spoke.
    # The reward models count in the last 10 of 40 steps, R1's share (the last 400 of 1,700)
    stage4_rl: GRPOConfig = field(default_factory=lambda: micro_grpo(
        data=GRPOData(tasks=("addition",), levels={"addition": (1, 2, 3)}, num_train=600, num_eval=50),
        rewards=("accuracy", "format_readable", "language_consistency", "helpfulness", "harmlessness"),
        reward_weights=(1.0, 1.0, 1.0, 1.0, 1.0), reward_from_step=(1, 1, 1, 31, 31), temperature=0.7,
        learning_rate=3e-5, max_steps=40))
    distill: distill.DistillConfig = field(default_factory=lambda: distill.DistillConfig(
        traces=rejection_sample.RejectionSampleConfig(tasks=tasks.DEFAULT_TASKS, num_problems=500, n=4,
                                                      non_reasoning=0, progress=False)))
    rl_only: GRPOConfig = field(default_factory=lambda: micro_grpo(max_steps=100))
    # on-policy distillation: the student samples on the distillation tasks and is pulled toward R1's
    # log-probs of its own tokens (reverse KL per token); rl_only's steps, so the same student compute
    on_policy: GRPOConfig = field(default_factory=lambda: micro_grpo(
        data=GRPOData(tasks=tasks.DEFAULT_TASKS, num_train=20000, num_eval=50), advantage="zero",
        kl_estimator="k2", beta=1.0, ref_update_every=0, max_steps=100))
    eval: evaluate.EvalConfig = field(default_factory=lambda: evaluate.EvalConfig(
        tasks=("addition", "subtraction", "multiplication", "countdown"), num_problems=100, k=8,
        max_new_tokens=256, template="micro", progress=False))

    def __post_init__(self) -> None:
        check_choices("student_size", self.student_size, MODEL_SIZES)
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        for name in ("written_min_per_task", "eval_general", "stage4_general", "stage4_unsafe"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


def main(config: PipelineConfig) -> dict:
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    root = Path(config.output_dir)
    save_config(config, root / "pipeline.yaml")
    config = offset_seeds(config, config.seed, keep=("eval", "seed"))
    clock = StageClock(root / "timings.json")
    started = time.perf_counter()
    runner.run(plan(config, root), config.workers, config.threads, root / "logs", clock.record)
    summaries = {key: report.load_summary(root / "eval" / key) for key in EVALUATED}
    result = report.write_report(root, summaries, report.curve_images(root), report.load_general(root))
    seed = paper.seed_results(root)
    result["comparisons"] = findings.comparisons([seed])  # one seed: spread 0 (make paper: several)
    write_json(root / "results.json", json_safe(result))
    print(paper.to_markdown(paper.summarize({str(config.seed): seed})))
    clock.finish(time.perf_counter() - started)
    print(clock.table())
    print(f"this invocation: {(time.perf_counter() - started) / 60:.1f} min wall")
    return result


# the models evaluated, in the results table's order: stage name -> its model folder under output_dir
EVALUATED = ("base", "r1_zero", "stage1_sft", "stage2_rl", "stage3_sft", "stage4_rl", "distilled", "on_policy",
             "rl_only")


def plan(config: PipelineConfig, root: Path) -> list[runner.Stage]:
    """The stages, the chain base -> R1-Zero -> ... -> R1 -> distilled first (`schedule` starts
    ready stages in this order, so the longest chain never waits for a side stage)."""
    base, student = model_path(config, root, "base"), model_path(config, root, "student_base")
    final = {name: str(root / name / "final") for name in EVALUATED if name not in ("base",)}
    stage1_data, stage3_data = str(root / "stage1_data.jsonl"), str(root / "stage3_data.jsonl")
    helpful, harmless = str(root / "rm_helpful" / "final"), str(root / "rm_harmless" / "final")
    Stage = runner.Stage
    stages = [
        Stage("base", stage_base, (config, root), wide=config.workers > 1 and not config.base_model),
        Stage("r1_zero", run_grpo, (config.r1_zero, base, root / "r1_zero"), ("base",)),
        Stage("cold_start", stage_cold_start, (config, root, final["r1_zero"]), ("r1_zero",)),
        Stage("stage1_sft", run_sft, (config.stage1_sft, base, stage1_data, root / "stage1_sft"), ("cold_start",)),
        Stage("stage2_rl", run_grpo, (config.stage2_rl, final["stage1_sft"], root / "stage2_rl"), ("stage1_sft",)),
        Stage("rejection_sample", stage_rejection_sample, (config, root, final["stage2_rl"]), ("stage2_rl",)),
        Stage("stage3_sft", run_sft, (config.stage3_sft, base, stage3_data, root / "stage3_sft"),
              ("rejection_sample",)),
        Stage("rm_helpful", run_reward_model, (config.rm_helpful, base, root / "rm_helpful"), ("base",)),
        Stage("rm_harmless", run_reward_model, (config.rm_harmless, base, root / "rm_harmless"), ("base",)),
        Stage("stage4_rl", stage_stage4, (config, root, helpful, harmless, final["stage3_sft"]),
              ("stage3_sft", "rm_helpful", "rm_harmless")),
        # the student's own base needs nothing but compute, unless it is the base itself
        Stage("student_base", stage_student_base, (config, root, base), () if student != base else ("base",)),
        Stage("distilled", stage_distill, (config, root, final["stage4_rl"], student, stage3_data),
              ("stage4_rl", "student_base")),
        Stage("on_policy", stage_on_policy, (config, root, final["stage4_rl"], student),
              ("stage4_rl", "student_base")),
        Stage("rl_only", stage_rl_only, (config, root, student), ("student_base",)),
    ]
    # the critical chain's last two evaluations first; the others fill the second worker's gaps
    for key in ("stage4_rl", "distilled") + tuple(k for k in EVALUATED if k not in ("stage4_rl", "distilled")):
        model = base if key == "base" else final[key]
        stages.append(Stage(f"eval/{key}", run_eval, (config.eval, model, root / "eval" / key, config.eval_general),
                            (key,)))
    return stages


def model_path(config: PipelineConfig, root: Path, name: str) -> str:
    """The folder of the base or the student base, given or pretrained under `root`."""
    if name == "base":
        return config.base_model or str(root / "base" / "final")
    if config.student_base:
        return config.student_base
    if config.student_size == config.pretrain.size:
        return model_path(config, root, "base")
    return str(root / "student_base" / "final")


class StageClock:
    """Wall seconds of each stage, in ``timings.json``; a stage skipped on resume keeps its time."""

    def __init__(self, path: Path):
        self.path = path
        self.seconds: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}
        self.ran = False  # did any stage run (rather than find its output) in this invocation?

    def record(self, name: str, seconds: float) -> None:
        if seconds >= 1.0 or name not in self.seconds:  # under a second: skipped, its output existed
            self.ran = self.ran or seconds >= 1.0
            self.seconds[name] = round(seconds, 2)
            write_json(self.path, self.seconds)

    def finish(self, seconds: float) -> None:
        """The invocation's wall time; a resumed run with nothing left to do keeps the earlier one."""
        if self.ran or "wall" not in self.seconds:
            self.seconds["wall"] = round(seconds, 2)
            write_json(self.path, self.seconds)

    def table(self) -> str:
        stages = {name: s for name, s in self.seconds.items() if name != "wall"}
        cells = ", ".join(f"{name} {seconds:.0f}" for name, seconds in stages.items())
        return (f"stage wall seconds: {cells}; stages sum to {sum(stages.values()) / 60:.1f} min, "
                f"the run that made them took {self.seconds.get('wall', 0) / 60:.1f} min wall ({self.path})")


# --- stages: each skipped when its output exists; module functions, run in worker processes ------

def _done(path: Path, name: str) -> bool:
    if path.exists():
        print(f"== {name}: done ({path})")
        return True
    print(f"== {name}")
    return False


def stage_base(config: PipelineConfig, root: Path) -> str:
    """Pretrain the micro base; with several workers, data parallel over them with torchrun."""
    if config.base_model:
        print(f"== base: given ({config.base_model})")
        return config.base_model
    out = root / "base"
    if not _done(out / "final" / "config.json", "base: pretrain"):
        pretrain_config = dataclasses.replace(config.pretrain, output_dir=str(out), threads=config.threads,
                                              resume=latest_checkpoint(out) is not None)
        if config.workers > 1:
            torchrun(config.workers, "pretrain", pretrain_config, root / "base.yaml")
        else:
            pretrain.main(pretrain_config)
    return str(out / "final")


def torchrun(processes: int, command: str, stage_config: Any, config_path: Path) -> None:
    """``r1lab COMMAND config_path`` under torchrun on this machine, `processes` processes."""
    save_config(stage_config, config_path)
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", "r1lab.cli", command, str(config_path)]
    if subprocess.run(argv).returncode != 0:
        raise R1labError(f"r1lab {command} {config_path} under torchrun failed (its output is above)")


def run_grpo(config: GRPOConfig, model: str, out: Path) -> str:
    if not _done(out / "final" / "config.json", f"{out.name}: GRPO from {model}"):
        grpo_train.train_from(config, model, out)
    return str(out / "final")


def run_sft(config: sft.SFTConfig, model: str, data: str, out: Path) -> str:
    if not _done(out / "final" / "config.json", f"{out.name}: SFT of {model} on {data}"):
        sft.main(dataclasses.replace(config, model=model, train_data=data, output_dir=str(out),
                                     resume=latest_checkpoint(out) is not None))
    return str(out / "final")


def stage_cold_start(config: PipelineConfig, root: Path, r1_zero: str) -> str:
    """R1-Zero's samples, kept and rewritten (``cold_start/sft.jsonl``), topped up (``stage1_data.jsonl``)."""
    return _sampled_set(cold_start.main, config.cold_start, r1_zero, root / "cold_start", config.written_min_per_task,
                        0, root / "stage1_data.jsonl")


def stage_rejection_sample(config: PipelineConfig, root: Path, stage2: str) -> str:
    """Stage 2's right and readable samples (``rejection_sample/sft.jsonl``), topped up (``stage3_data.jsonl``)."""
    return _sampled_set(rejection_sample.main, config.rejection_sample, stage2, root / "rejection_sample",
                        config.written_min_per_task, 1, root / "stage3_data.jsonl")


def _sampled_set(stage_main: Callable, stage_config: Any, model: str, out: Path, min_per_task: int,
                 seed_offset: int, path: Path) -> str:
    """A sampling stage's ``out/sft.jsonl`` (made unless it exists), topped up per task into `path`."""
    if not _done(out / "sft.jsonl", f"{out.name}: sampling"):
        stage_main(dataclasses.replace(stage_config, model=model, output_dir=str(out)))
    return top_up(str(out / "sft.jsonl"), min_per_task, stage_config.tasks, stage_config.seed + seed_offset,
                  stage_config.levels, path)


def run_reward_model(config: reward_model.RewardModelConfig, base: str, out: Path) -> str:
    if not _done(out / "final" / "config.json", f"{out.name}: {config.kind} reward model"):
        reward_model.main(dataclasses.replace(config, model=base, output_dir=str(out)))
    return str(out / "final")


def stage_stage4(config: PipelineConfig, root: Path, helpful: str, harmless: str, stage3: str) -> str:
    return run_grpo(stage4_config(config, root, helpful, harmless), stage3, root / "stage4_rl")


def stage_student_base(config: PipelineConfig, root: Path, base: str) -> str:
    """The students' pretrained base: given, the base itself at the same size, or pretrained here."""
    student = model_path(config, root, "student_base")
    if student == base:
        print(f"== student_base: {base}" + ("" if config.student_base else " (the student size is the base's)"))
        return base
    if config.student_base:
        return student
    out = root / "student_base"
    if not _done(out / "final" / "config.json", f"student_base: pretrain size {config.student_size}"):
        pretrain.main(dataclasses.replace(config.pretrain, size=config.student_size, output_dir=str(out),
                                          threads=config.threads, resume=latest_checkpoint(out) is not None))
    return student


def stage_distill(config: PipelineConfig, root: Path, teacher: str, student_base: str, stage3_data: str) -> str:
    out = root / "distilled"
    if not _done(out / "final" / "config.json", f"distilled: traces of {teacher} into a student"):
        student = config.distill.student or (student_base if config.distill_from_base else "")
        distill.main(dataclasses.replace(config.distill, teacher=teacher, student=student,
                                         student_size=config.student_size, extra_data=stage3_data,
                                         output_dir=str(out)))
    return str(out / "final")


def stage_rl_only(config: PipelineConfig, root: Path, student_base: str) -> str:
    out = root / "rl_only"
    if not _done(out / "final" / "config.json", f"rl_only: R1-Zero on the student base {student_base}"):
        distill.rl_only_student(config.rl_only, student_base, str(out))
    return str(out / "final")


def stage_on_policy(config: PipelineConfig, root: Path, teacher: str, student_base: str) -> str:
    out = root / "on_policy"
    if not _done(out / "final" / "config.json", f"on_policy: {teacher} scores the student's own samples"):
        distill.on_policy_student(config.on_policy, teacher, student_base, str(out))
    return str(out / "final")


def run_eval(config: evaluate.EvalConfig, model: str, out: Path, num_general: int) -> None:
    """The micro tasks by the paper's protocol, then general and unsafe requests (`general_eval`)."""
    config = dataclasses.replace(config, model=model, output_dir=str(out))
    if not _done(out / "summary.json", f"eval: {model}"):
        evaluate.main(config)
    if num_general > 0 and not _done(out / "general.json", f"eval, general requests: {model}"):
        general_eval.main(config, num_general)


# --- stage 1 data: topping up -------------------------------------------------------------------

def top_up(sampled: str, min_per_task: int, task_names, seed: int, levels: dict, path: Path) -> str:
    """The sampled rows, plus written worked solutions for each task with fewer than `min_per_task`."""
    rows = read_jsonl(sampled)
    counts = {name: sum(row.get("task") == name for row in rows) for name in task_names}
    written = [row for name, count in counts.items()
               for row in written_solutions(name, min_per_task - count, seed, levels.get(name) or None)]
    write_jsonl(path, rows + written)
    added = ", ".join(f"{name} {min_per_task - count}" for name, count in counts.items() if count < min_per_task)
    print(f"{path.name}: {len(rows)} sampled rows + {len(written)} written solutions ({added or 'none needed'})")
    return str(path)


def written_solutions(task: str, n: int, seed: int, levels: tuple[int, ...] | None = None) -> list[dict]:
    """`n` clean worked solutions of `task` in the readable format (train split).

    They stand in for the paper's human-refined data (R1 v1 section 2.3.1) where sampling kept
    too few rows of a task: written by `r1lab.micro.tasks` with no flaws, as a careful annotator would.
    """
    if n <= 0:
        return []
    rng = random.Random(f"written/{task}/{seed}")
    rows = []
    for problem in tasks.generate(task, "train", n, seed + 104729, levels):
        steps, answer = tasks.TASKS[task].reasoning(problem, rng, tasks.CLEAN)
        completion = format_readable(steps, f"The answer is {answer}.", answer)
        rows.append({**problem.to_row(), "completion": completion, "source": "written"})
    return rows

"""Distillation (R1 section 2.4): ``r1lab distill teacher=R1_FOLDER [student=FOLDER] [key=value ...]``

    r1lab distill teacher=runs/micro/r1/stage4_rl/final output_dir=runs/micro/distill
    r1lab distill teacher=runs/micro/r1/stage4_rl/final student=runs/micro/r1/student_base/final \\
        extra_data=runs/micro/r1/rejection_sample/sft.jsonl traces.n=4 sft.epochs=2

1. traces: the teacher samples ``traces.n`` (= k) completions per prompt and only the correct,
   readable ones are kept (`r1lab.stages.rejection_sample`, its filters and rules judge, unchanged);
   ``traces.non_reasoning`` general requests can be mixed in as in stage 3;
2. the SFT set is the traces plus the rows of ``extra_data`` (R1 distils on its ~800k stage-3
   samples: the pipeline passes its stage-3 set here);
3. the student: the folder ``student`` (R1: Qwen2.5 / Llama *base* models, so pretrained), or with
   ``student`` empty a fresh random Qwen2 of ``student_size`` (`r1lab.micro.sizes.build_model`) with
   the teacher's tokenizer, saved to ``output_dir/student_init``;
4. SFT of the student on the set (`r1lab.stages.sft`), no RL (R1: 2-3 epochs, cosine to 1/10 of the lr).

Outputs under ``output_dir``: ``distill.yaml`` (this config), ``traces/`` (``sft.jsonl``,
``stats.json``), ``train.jsonl``, and what ``r1lab sft`` writes: ``config.yaml``, ``metrics.jsonl``,
``checkpoints/``, ``final/``. A killed run resumes: traces already sampled are reused and SFT
continues from its newest checkpoint.

The comparison R1 makes (distilled 72.6 vs RL-only 47.0 AIME pass@1 at 32B) needs an RL-only
student of the same size, trained from a base pretrained like the teacher's but at the student's
size (``r1lab pretrain size=SIZE output_dir=runs/micro/student_base`` or, for a size not in
`r1lab.micro.sizes.MODEL_SIZES`, a new entry there), then R1-Zero on it: `rl_only_student`, or

    r1lab grpo recipes/micro/r1_zero.yaml model=runs/micro/student_base/final output_dir=runs/micro/rl_only
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from r1lab.stages import rejection_sample, sft
from r1lab.training.checkpoint import latest_checkpoint
from r1lab.recipe import check_choices, save_config
from r1lab.errors import R1labError
from r1lab.grpo import train as grpo_train
from r1lab.grpo.config import GRPOConfig
from r1lab.files import read_jsonl, read_rows, write_jsonl
from r1lab.micro.sizes import MODEL_SIZES, build_model
from r1lab.models.loading import count_parameters, load_model, load_tokenizer
from r1lab.stages.rejection_sample import RejectionSampleConfig
from r1lab.stages.sft import SFTConfig


@dataclass(frozen=True)
class DistillConfig:
    teacher: str = "runs/micro/r1/stage4_rl/final"
    student: str = ""  # HF folder; empty: a fresh `student_size` model with the teacher's tokenizer
    student_size: str = "micro"  # a key of r1lab.micro.sizes.MODEL_SIZES (used when `student` is empty)
    # traces: `model` and `output_dir` are set here; `n` is k, the samples per prompt
    traces: RejectionSampleConfig = field(default_factory=lambda: RejectionSampleConfig(
        num_problems=200, n=4, non_reasoning=0, progress=False))
    extra_data: str = ""  # prompt/completion rows added to the traces (e.g. the stage-3 SFT set)
    # student SFT: `model`, `train_data` and `output_dir` are set here
    sft: SFTConfig = field(default_factory=lambda: SFTConfig(
        template="micro", epochs=2, learning_rate=1e-3, warmup_steps=10, min_lr_ratio=0.1, max_length=256,
        max_tokens_per_batch=1024, eval_every=0, save_every=200))
    output_dir: str = "runs/micro/distill"
    seed: int = 0
    threads: int = 0

    def __post_init__(self) -> None:
        if not self.student:
            check_choices("student_size", self.student_size, MODEL_SIZES)
        if self.traces.template != self.sft.template:
            raise ValueError(f"traces.template ({self.traces.template}) and sft.template ({self.sft.template}) "
                             "must match: the student is trained on the prompts the teacher saw")


def main(config: DistillConfig) -> dict:
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    out = Path(config.output_dir)
    save_config(config, out / "distill.yaml")

    # 1. verified teacher traces (reused when a killed run already wrote them)
    traces = sample_traces(config, out / "traces")
    # 2. the SFT set
    rows = traces + (read_rows(config.extra_data) if config.extra_data else [])
    if not rows:
        raise R1labError(f"distill: the teacher {config.teacher} kept no trace and extra_data is empty; "
                         "sample more (traces.num_problems, traces.n) or pass extra_data=FILE")
    write_jsonl(out / "train.jsonl", rows)
    print(f"distill: {len(traces)} teacher traces + {len(rows) - len(traces)} extra rows -> {out / 'train.jsonl'}")
    # 3. the student
    student = config.student or str(fresh_student(config.teacher, config.student_size, out / "student_init",
                                                  config.seed))
    # 4. SFT, no RL
    resume = latest_checkpoint(out) is not None
    return sft.main(dataclasses.replace(config.sft, model=student, train_data=str(out / "train.jsonl"),
                                        output_dir=str(out), seed=config.seed, resume=resume))


def sample_traces(config: DistillConfig, out: Path) -> list[dict]:
    """The teacher's correct, readable completions (`rejection_sample`); cached in ``out/sft.jsonl``."""
    if not (out / "sft.jsonl").is_file():
        rejection_sample.main(dataclasses.replace(config.traces, model=config.teacher, output_dir=str(out)))
    return read_jsonl(out / "sft.jsonl")


def fresh_student(teacher: str, size: str, out: Path, seed: int = 0) -> Path:
    """A random `size` Qwen2 with the teacher's tokenizer and context length, saved to `out`."""
    if (out / "config.json").is_file():
        return out
    tokenizer = load_tokenizer(teacher)
    positions = load_model(teacher).config.max_position_embeddings
    model = build_model(size, tokenizer, max_positions=positions, seed=seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"distill: fresh {size} student, {count_parameters(model) / 1e6:.2f}M parameters -> {out}")
    return out


def rl_only_student(config: GRPOConfig, student_base: str, output_dir: str) -> dict:
    """R1-Zero-style GRPO straight on the student's pretrained base: the comparison for distillation.

    `config` is the R1-Zero setting (``recipes/micro/r1_zero.yaml``); `student_base` must be a
    *pretrained* base of the student's size (RL from random weights finds no reward to follow).
    """
    return grpo_train.train_from(config, student_base, output_dir)


def on_policy_student(config: GRPOConfig, teacher: str, student_base: str, output_dir: str) -> dict:
    """On-policy distillation of `teacher` into `student_base`: GRPO with the teacher as the
    reference and no reward signal (``advantage=zero kl_estimator=k2``, the pipeline's `on_policy`
    section), so the student learns from the teacher's log-probs of the student's own samples.
    Resumes from `output_dir`'s newest checkpoint like `rl_only_student`."""
    return grpo_train.train_from(dataclasses.replace(config, reference_model=teacher), student_base, output_dir)

"""Supervised fine-tuning: ``r1lab sft model=FOLDER train_data=DATA.jsonl [key=value ...]``.

Data rows are ``{"prompt", "completion"}`` or chat ``{"messages": [...]}`` (see `r1lab.training.sft_data`),
from JSONL, Parquet or a `datasets` folder. Outputs, all under ``output_dir``:

- ``config.yaml``: the resolved config;
- ``metrics.jsonl``: one row per logged step (step, loss, lr, grad_norm, tokens_per_s, eval_loss);
- ``checkpoints/step-000123/``: every ``save_every`` steps and at the end; ``resume=true``
  continues from the newest one with the same data order, as if never stopped;
- ``final/``: the trained model and tokenizer, a plain Hugging Face folder; with LoRA
  (``lora_r > 0``) it holds the adapters (``PeftModel.from_pretrained(base, folder)``) and
  ``final-merged/`` the base with the adapters merged in, a plain folder (``save_merged=true``).

Data parallel on several devices or nodes: ``torchrun --nproc_per_node N -m r1lab.cli sft ...``
(see docs/scaling.md); ``sharding=fsdp`` shards the model and optimizer state
(docs/distributed.md). A step then sees the same examples as in one process, split across the
processes, and makes the same update; a checkpoint resumes with any number of processes.

The loop itself (AdamW, linear warmup then cosine, gradient accumulation, clipping) is
`r1lab.training.loop.train`, shared with ``r1lab pretrain`` and the reward model.
In the R1 recipe this stage is the "cold start" before reasoning RL (v1 section 2.3.1), and the
distillation of R1's outputs into small dense models (section 2.4).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from r1lab.errors import R1labError
from r1lab.models.loading import DTYPES, load_model_and_tokenizer
from r1lab.models.lora import TARGET_MODULES, apply_lora, check_lora_settings, is_lora, save_merged
from r1lab.models.precision import weights_dtype
from r1lab.problem_formats import read_problem_rows
from r1lab.recipe import check_choices, check_range, save_config
from r1lab.templates import TEMPLATES
from r1lab.training import distributed
from r1lab.training.checkpoint import start_run
from r1lab.training.distributed import DEFAULT_TIMEOUT_S
from r1lab.training.loop import TrainSettings, enable_gradient_checkpointing, train
from r1lab.training.sft_data import split_examples, tokenize_rows
from r1lab.training.tracking import check_trackers


@dataclass(frozen=True)
class SFTConfig(TrainSettings):
    """``r1lab sft`` settings: the data and model below, plus every `TrainSettings` field."""

    model: str = ""  # model folder (always tried first) or hub name, with its tokenizer
    revision: str = ""  # hub models: branch, tag or commit
    trust_remote_code: bool = False  # run a hub model's own modelling code
    attn_implementation: str = ""  # eager | sdpa | flash_attention_2; empty: transformers' choice
    train_data: str = ""  # .jsonl, .parquet, a datasets folder, or a hub dataset name (online)
    data_subset: str = ""  # hub datasets only: the configuration name (Mixture-of-Thoughts: math)
    eval_data: str = ""  # empty: hold out eval_fraction of train_data (0: no eval)
    eval_fraction: float = 0.0
    template: str = "raw"  # prompt template for prompt/completion rows (r1lab.templates)
    loss_on_prompt: bool = False
    max_length: int = 1024  # tokens; longer examples are truncated
    output_dir: str = "runs/sft"
    resume: bool = False  # continue from the newest checkpoint in output_dir
    overwrite: bool = False  # start afresh in an output_dir that has checkpoints, deleting them
    distributed_timeout_s: float = DEFAULT_TIMEOUT_S  # under torchrun: a collective waiting longer ends the run
    dtype: str = "float32"
    device: str = "auto"  # auto: cuda if available, else cpu
    threads: int = 0  # torch CPU threads; 0 leaves torch's choice
    gradient_checkpointing: bool = False  # recompute activations in the backward: less memory, ~30% slower
    lora_r: int = 0  # LoRA rank; 0: full fine-tuning (LoRA needs `pip install peft`)
    lora_alpha: float = 16.0  # adapter output scaled by lora_alpha / lora_r
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = TARGET_MODULES  # Qwen2 / Llama names; "all-linear" also works
    save_merged: bool = True  # with LoRA: also write final-merged/, the base with adapters merged in

    def __post_init__(self):
        super().__post_init__()
        check_choices("template", self.template, TEMPLATES)
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")
        if self.max_tokens_per_batch < self.max_length:
            raise ValueError(f"max_tokens_per_batch ({self.max_tokens_per_batch}) must be >= max_length "
                             f"({self.max_length})")
        check_choices("dtype", self.dtype, DTYPES)
        check_range(self, 0, None, "threads")
        check_range(self, 0, None, "distributed_timeout_s", open_low=True)
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite can't both be true: continue the run, or replace it")
        check_lora_settings(self.lora_r, self.lora_alpha, self.lora_dropout, self.lora_target_modules)
        if self.lora_r > 0 and self.sharding == "fsdp":
            raise ValueError("sharding=fsdp works with full fine-tuning only (LoRA: use sharding=ddp)")


def train_settings(config) -> TrainSettings:
    """The `TrainSettings` part of a stage config that extends it."""
    return TrainSettings(**{f.name: getattr(config, f.name) for f in dataclasses.fields(TrainSettings)})


@distributed.launched  # under torchrun: one process of N (a no-op otherwise)
def main(config: SFTConfig) -> dict:
    if not config.model or not config.train_data:
        raise R1labError("sft needs model=FOLDER and train_data=FILE")
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    output_dir = Path(config.output_dir)
    if distributed.is_main():
        start_run(output_dir, config.resume, config.overwrite)  # before config.yaml is replaced
    # before the model: a wrong path fails fast; a local file or folder, else a hub dataset (online)
    train_rows = read_problem_rows(config.train_data, "train", config.data_subset)
    eval_rows = read_problem_rows(config.eval_data, "test", config.data_subset) if config.eval_data else None
    check_trackers(config.report_to)
    dtype = weights_dtype(config.precision) if config.dtype == "float32" else config.dtype
    model, tokenizer = load_model_and_tokenizer(config.model, dtype, distributed.device(config.device),
                                                revision=config.revision, trust_remote_code=config.trust_remote_code,
                                                attn_implementation=config.attn_implementation)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if config.lora_r > 0:
        model = apply_lora(model, config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules,
                           seed=config.seed)

    def tokenize(rows, source):
        return tokenize_rows(rows, tokenizer, source, config.max_length, config.template, config.loss_on_prompt)

    train_examples = tokenize(train_rows, config.train_data)
    if eval_rows is not None:
        eval_examples = tokenize(eval_rows, config.eval_data)
    else:
        train_examples, eval_examples = split_examples(train_examples, config.eval_fraction, config.seed)

    if distributed.is_main():
        save_config(config, output_dir / "config.yaml")
    summary = train(model, tokenizer, train_examples, eval_examples, train_settings(config), output_dir,
                    resume=config.resume, desc="sft", overwrite=config.overwrite)
    final = output_dir / "final"
    if is_lora(model) and config.save_merged:
        final = output_dir / "final-merged"
        if distributed.is_main():
            save_merged(model, tokenizer, final)
    if not distributed.is_main():
        return summary
    eval_text = f", eval loss {summary['eval_loss']:.4f}" if summary["eval_loss"] is not None else ""
    print(f"sft: {summary['steps']} steps in {summary['seconds']:.0f}s, train loss {summary['train_loss']:.4f}"
          f"{eval_text}; model saved to {final}")
    return summary

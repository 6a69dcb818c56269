"""``r1lab pretrain``: build the micro base model from scratch (the paper's V3-Base, in small).

    r1lab pretrain                                   # micro model, runs/micro/base, ~4 min on 2 cores
    r1lab pretrain size=small num_examples=80000 style.p_fix_error=0.5
    torchrun --standalone --nproc_per_node 2 -m r1lab.cli pretrain threads=1   # data parallel

Stage by stage: (1) generate the corpus of worked solutions with controlled flaws and
re-checks (`r1lab.micro.corpus`, where the design is explained); (2) train a byte-level BPE tokenizer
on it; (3) build a randomly initialised Qwen2 model of the named size; (4) train it with the SFT
loop (`r1lab.training.loop.train`), loss on the solutions only. The result, ``output_dir/final``, is an
ordinary Hugging Face folder. Under torchrun every process builds the same corpus, tokenizer and
model from the seed, trains on its share of each batch, and rank 0 writes the files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from r1lab.micro import tasks
from r1lab.training import distributed
from r1lab.recipe import save_config
from r1lab.micro.corpus import build_corpus, corpus_stats
from r1lab.training.sft_data import tokenize_rows
from r1lab.files import write_json, write_jsonl
from r1lab.micro.sizes import build_model
from r1lab.models.loading import count_parameters
from r1lab.training.loop import TrainSettings, train
from r1lab.micro.tokenizer import build_tokenizer, micro_corpus_sample

DEFAULT_STYLE = tasks.TraceStyle(p_step_error=0.08, p_drop_carry=0.05, p_wrong_final=0.05,
                                 p_fix_error=0.3, p_check_ok=0.02)


@dataclass(frozen=True)
class PretrainConfig:
    output_dir: str = "runs/micro/base"
    size: str = "micro"
    tasks: tuple[str, ...] = tasks.DEFAULT_TASKS
    levels: dict[str, tuple[int, ...]] = field(default_factory=dict)  # per task; default: the task's
    # Shares of the corpus: a 1M model needs ~1000 steps on a task before its loss drops (measured
    # on a 2-core CPU, 2026-11), so within 5 minutes the column tasks get most of them and countdown
    # a little.
    task_weights: dict[str, float] = field(default_factory=lambda: {
        "addition": 4.0, "subtraction": 2.5, "multiplication": 2.5, "countdown": 1.0})
    num_examples: int = 90000
    # share of the documents that are general and unsafe requests (r1lab.micro.corpus.request_documents):
    # the base's only English, which R1's stages 3 and 4 build on (the pipeline sets 0.05)
    request_share: float = 0.0
    eval_examples: int = 500
    style: tasks.TraceStyle = DEFAULT_STYLE
    template: str = "micro"
    vocab_size: int = 512
    max_length: int = 256
    seed: int = 0
    threads: int = 0  # torch threads; 0 = torch's default
    resume: bool = False  # continue a killed run from its last checkpoint
    train: TrainSettings = field(default_factory=lambda: TrainSettings(
        learning_rate=2e-3, warmup_steps=50, min_lr_ratio=0.1, max_steps=0, epochs=1,
        max_tokens_per_batch=4096, weight_decay=0.01, eval_every=200, save_every=500, log_every=20))

    def __post_init__(self) -> None:
        if not 0 <= self.request_share < 1:
            raise ValueError(f"request_share must be in [0, 1), got {self.request_share}")


@distributed.launched  # under torchrun: one process of N (a no-op otherwise)
def main(config: PretrainConfig) -> dict:
    start = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(config.output_dir)
    main_process = distributed.is_main()
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.yaml")

    # 1. corpus
    rows = build_corpus(config.tasks, config.num_examples + config.eval_examples, config.style,
                        config.seed, config.template, config.levels, config.task_weights, config.request_share)
    stats = corpus_stats(rows)
    if main_process:
        write_jsonl(out / "corpus.jsonl", rows)
        write_json(out / "corpus_stats.json", stats)
        print(f"corpus: {len(rows)} documents, {100 * stats['all/correct']:.1f}% end right, "
              f"{100 * stats['all/reflection']:.1f}% contain a re-check")

    # 2-3. tokenizer and model
    tokenizer = build_tokenizer(micro_corpus_sample(seed=config.seed), vocab_size=config.vocab_size)
    model = build_model(config.size, tokenizer, max_positions=2 * config.max_length, seed=config.seed)
    if main_process:
        print(f"model: {config.size} Qwen2, {count_parameters(model) / 1e6:.2f}M parameters, vocab {len(tokenizer)}")

    # 4. train
    examples = tokenize_rows(rows, tokenizer, source="corpus", max_length=config.max_length)
    eval_set, train_set = examples[: config.eval_examples], examples[config.eval_examples:]
    summary = train(model, tokenizer, train_set, eval_set, config.train, out, resume=config.resume,
                    desc="pretrain")
    summary["pretrain_seconds"] = round(time.perf_counter() - start, 1)
    if main_process:
        print(f"pretrain: done in {summary['pretrain_seconds']} s -> {out / 'final'}")
    return summary

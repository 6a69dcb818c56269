"""Rejection sampling (R1 stage 3): ``r1lab rejection-sample model=STAGE2_FOLDER [key=value ...]``

    r1lab rejection-sample model=runs/micro/reasoning_rl/final output_dir=runs/micro/rejection_sample
    r1lab rejection-sample model=my-stage2 data=prompts.jsonl template=chat judge=my-judge-model

From the reasoning-RL checkpoint, sample `n` completions per prompt, keep the correct and
readable ones (`r1lab.stages.sample_filters`), add `non_reasoning` simple requests answered without a chain of
thought (`r1lab.micro.general`), and write the SFT set for the next stage. R1 v1 section 2.3.3:
~600k reasoning + ~200k non-reasoning samples, then SFT of the *base* model for 2 epochs.

Prompts are micro tasks (train split) or a file with ``prompt`` and ``answer`` columns (an
optional ``task`` column picks a micro verifier). Correctness is judged by rules first
(`r1lab.stages.sample_filters.rules_judge`); with ``judge=MODEL_FOLDER``, a generative judge reads question,
reference and candidate and answers yes or no where the rules can't decide.

Outputs under ``output_dir``:
- ``sft.jsonl``: ``{"prompt", "completion", "task", "answer", "source"}`` rows, ready for
  ``r1lab sft train_data=... template=<the same template>``;
- ``stats.json``: samples, kept, rejected by reason, per task, and the non-reasoning rows added;
- ``config.yaml``: the resolved config.

Departure from the paper: the generative judge is asked one sample at a time, only for the
samples the rules leave undecided; R1 used DeepSeek-V3 and does not say how it batched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from r1lab.micro import general as micro_general, tasks
from r1lab.recipe import check_choices, check_range, save_config
from r1lab.errors import R1labError
from r1lab.stages.sample_filters import (DEFAULT_FILTERS, FILTERS, FilterSettings, Judge, Sample, filter_report,
                                         judge_prompt, parse_verdict, rules_judge)
from r1lab.files import write_json, write_jsonl
from r1lab.models.loading import DTYPES, load_model_and_tokenizer
from r1lab.sampling.generate import SamplingParams, generate
from r1lab.problem_formats import tokenize_prompts
from r1lab.problems import load_problems
from r1lab.templates import TEMPLATES, render_prompt


@dataclass(frozen=True)
class RejectionSampleConfig:
    model: str = "runs/micro/reasoning_rl/final"  # the stage-2 (reasoning RL) checkpoint
    data: str = ""  # prompt and answer columns (r1lab.problems.load_problems); empty: micro tasks
    tasks: tuple[str, ...] = tasks.DEFAULT_TASKS  # micro tasks, when `data` is empty
    num_problems: int = 200  # per micro task (with `data`: the first rows; <= 0: all)
    levels: dict[str, tuple[int, ...]] = field(default_factory=dict)  # per micro task; default: the task's
    seed: int = 0
    template: str = "micro"
    n: int = 4  # samples per prompt
    temperature: float = 0.7  # R1 gives none for this stage; 0.7 is its stage-4 and README value
    top_p: float = 0.95
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ("</answer>",)
    batch_size: int = 256  # sequences decoded together
    filters: tuple[str, ...] = DEFAULT_FILTERS  # applied in this order; see r1lab.stages.sample_filters.FILTERS
    filter_settings: FilterSettings = field(default_factory=FilterSettings)
    judge: str = ""  # empty: rules only; else a model folder asked where the rules can't decide
    judge_template: str = "raw"
    judge_max_new_tokens: int = 4
    non_reasoning: int = 100  # simple general requests added, answered without reasoning
    refusals: int = 0  # unsafe requests added with the refusal (R1's non-reasoning SFT data has safety data)
    output_dir: str = "runs/micro/rejection_sample"
    dtype: str = "float32"
    device: str = "auto"
    threads: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        check_range(self, 1, None, "n", "max_new_tokens", "batch_size")
        check_range(self, 0, None, "temperature", "threads")
        check_range(self, 0, 1, "top_p", open_low=True)
        check_choices("task", self.tasks, tasks.TASKS)
        check_choices("filter", self.filters, FILTERS)
        check_choices("template", (self.template, self.judge_template), TEMPLATES)
        check_choices("dtype", self.dtype, DTYPES)
        if self.non_reasoning < 0 or self.refusals < 0 or self.judge_max_new_tokens < 1:
            raise ValueError("non_reasoning and refusals must be >= 0 and judge_max_new_tokens >= 1")

    def sampling(self) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                              n=self.n, stop=self.stop, seed=self.seed)


def main(config: RejectionSampleConfig) -> dict:
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    rows = load_prompts(config.data, config.tasks, config.num_problems, config.levels, config.seed)
    device = resolve_device(config.device)
    model, tokenizer = load_model_and_tokenizer(config.model, config.dtype, device)
    judge = build_judge(config.judge, config.judge_template, config.judge_max_new_tokens, config.dtype, device)
    out = Path(config.output_dir)
    save_config(config, out / "config.yaml")

    # the BOS token exactly when the tokenizer adds one (r1lab.problem_formats)
    prompts = tokenize_prompts(tokenizer, [render_prompt(config.template, row["prompt"], tokenizer) for row in rows])
    samples = sample_completions(model, tokenizer, rows, prompts, config.sampling(), config.batch_size,
                                 config.progress)
    kept, stats = filter_report(samples, config.filters, config.filter_settings, judge)
    general = micro_general.general_requests(config.non_reasoning, config.seed)
    refusals = micro_general.refusal_rows(config.refusals)
    sft_rows = ([sft_row(s, "rejection_sampling") for s in kept] + [{**r, "source": "non_reasoning"} for r in general]
                + [{**r, "source": "refusal"} for r in refusals])
    stats.update(prompts=len(rows), non_reasoning=len(general), refusals=len(refusals), rows=len(sft_rows))

    write_jsonl(out / "sft.jsonl", sft_rows)
    write_json(out / "stats.json", stats)
    print(format_stats(stats, "rejection-sample"))
    print(f"SFT set: {out / 'sft.jsonl'} ({len(sft_rows)} rows); statistics: {out / 'stats.json'}")
    return stats


def resolve_device(device: str) -> str:
    return device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")


def load_prompts(data: str, task_names, num_problems: int, levels: dict, seed: int) -> list[dict]:
    """Rows with ``prompt`` (text) and ``answer``: a user's file, every row answered, or task problems
    (r1lab.problems.load_problems).

    Training-side stages sample the train split: the test split stays held out for evaluation.
    """
    rows = load_problems(data, "train", task_names, num_problems, seed, levels, every_answer=True,
                         conversations=False)
    if not rows:
        raise R1labError("no prompts: set data=FILE or num_problems > 0 with at least one task")
    return rows


def sample_completions(model, tokenizer, rows: list[dict], prompts: list[str] | list[list[int]],
                       params: SamplingParams, batch_size: int, progress: bool = False) -> list[Sample]:
    """`params.n` samples for each rendered prompt, as `Sample`s carrying their row."""
    with torch.inference_mode():
        groups = generate(model, tokenizer, prompts, params, batch_size=batch_size, progress=progress)
    return [Sample(row, _cut_after_stop(c.text, params.stop), c.finish_reason)
            for row, group in zip(rows, groups) for c in group]


def _cut_after_stop(text: str, stop: tuple[str, ...]) -> str:
    """The text up to and including the first stop string (a stop is kept, as the sampler does)."""
    ends = [text.find(s) + len(s) for s in stop if s in text]
    return (text[:min(ends)] if ends else text).strip()


def sft_row(sample: Sample, source: str) -> dict:
    row = sample.row
    return {"prompt": row["prompt"], "completion": sample.completion, "task": row.get("task") or "data",
            "answer": row.get("answer"), "source": source}


class ModelJudge:
    """A generative judge: a causal LM asked whether a candidate matches the reference (greedy)."""

    def __init__(self, model, tokenizer, template: str = "raw", max_new_tokens: int = 4):
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)

    def __call__(self, completion: str, row: dict) -> bool | None:
        prompt = render_prompt(self.template, judge_prompt(row, completion), self.tokenizer)
        with torch.inference_mode():
            [[reply]] = generate(self.model, self.tokenizer, [prompt], self.params)
        return parse_verdict(reply.text)


def rules_then(judge: Judge) -> Judge:
    """Rules first; `judge` only where they return None and there is a reference to compare with."""

    def combined(completion: str, row: dict) -> bool | None:
        verdict = rules_judge(completion, row)
        if verdict is not None or not str(row.get("answer") or "").strip():
            return verdict
        return judge(completion, row)

    return combined


def build_judge(path: str, template: str, max_new_tokens: int, dtype: str, device: str) -> Judge:
    """Rules alone, or rules then a generative judge loaded from `path`."""
    if not path:
        return rules_judge
    model, tokenizer = load_model_and_tokenizer(path, dtype, device)
    return rules_then(ModelJudge(model, tokenizer, template, max_new_tokens))


def format_stats(stats: dict, title: str) -> str:
    """A few lines: kept/samples overall and per task, then rejections by reason."""
    lines = [f"{title}: kept {stats['kept']} of {stats['samples']} samples"]
    for task, s in stats["per_task"].items():
        lines.append(f"  {task:<16} kept {s['kept']:>6} of {s['samples']:>6}")
    for reason, count in stats["rejected_by_reason"].items():
        lines.append(f"  rejected: {reason:<18} {count:>6}")
    return "\n".join(lines)

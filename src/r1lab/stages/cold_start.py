"""Cold-start data (R1 stage 1): ``r1lab cold-start model=R1_ZERO_FOLDER [key=value ...]``

    r1lab cold-start model=runs/micro/r1_zero/final output_dir=runs/micro/cold_start
    r1lab cold-start model=my-r1-zero data=problems.jsonl few_shot_data=solved.jsonl template=r1_zero

R1 v1 section 2.3.1: thousands of long chain-of-thought examples, gathered by few-shot prompting
and from R1-Zero's outputs, kept when correct and readable, then refined by people into a readable
format ``|special_token|<reasoning_process>|special_token|<summary>``. Here:

1. sample `n` completions per prompt from the R1-Zero checkpoint, each prompt preceded by
   `few_shot` solved examples in the same template (micro: worked solutions of other problems of
   the same task; a user's file: the first rows of ``few_shot_data``, prompt/completion);
2. keep the correct and readable ones (`r1lab.stages.sample_filters`: format, length, answer, language mixing,
   long paragraphs, code in the reasoning, repetition; duplicates dropped);
3. rewrite each deterministically into the readable format (`rewrite_readable`), standing in for
   the paper's human post-processing:

       <think> REASONING </think> <summary> The answer is X. </summary> <answer>X</answer>

   REASONING is the sample's own reasoning with whitespace tidied (lines stripped, runs of spaces
   and of blank lines collapsed); X is its extracted final answer (`extract_answer`, normalised).
   Text outside the tags is dropped. The <answer> tag stays so the rule rewards and evaluation
   of later stages read the answer as before.

Outputs under ``output_dir``: ``sft.jsonl`` (``{"prompt", "completion", "task", "answer", "source"}``;
the prompt without the few-shot examples, ready for ``r1lab sft`` of the base model with the same
template), ``stats.json`` (kept and rejected per reason, per task) and ``config.yaml``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from r1lab.micro import tasks
from r1lab.recipe import check_choices, check_range, save_config
from r1lab.errors import R1labError
from r1lab.stages.sample_filters import (DEFAULT_FILTERS, FILTERS, FilterSettings, Sample, filter_report,
                                         format_readable, reasoning_part, rules_judge)
from r1lab.files import read_rows, require_columns, write_json, write_jsonl
from r1lab.models.loading import DTYPES, load_model_and_tokenizer
from r1lab.stages.rejection_sample import format_stats, load_prompts, resolve_device, sample_completions, sft_row
from r1lab.rewards.answers import extract_answer
from r1lab.sampling.generate import SamplingParams
from r1lab.templates import TEMPLATES, render_prompt

Shot = tuple[str, str]  # a solved example: (prompt, completion)


@dataclass(frozen=True)
class ColdStartConfig:
    model: str = "runs/micro/r1_zero/final"  # the R1-Zero checkpoint
    data: str = ""  # JSONL/Parquet with prompt and answer columns; empty: micro tasks
    tasks: tuple[str, ...] = tasks.DEFAULT_TASKS  # micro tasks, when `data` is empty
    num_problems: int = 200  # per micro task (with `data`: the first rows; <= 0: all)
    levels: dict[str, tuple[int, ...]] = field(default_factory=dict)
    seed: int = 0
    template: str = "micro"
    few_shot: int = 2  # solved examples before each prompt
    few_shot_data: str = ""  # prompt/completion rows for the examples (needed with `data`)
    n: int = 4  # samples per prompt
    temperature: float = 0.7  # R1 gives none for this stage; 0.7 is its stage-4 and README value
    top_p: float = 0.95
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ("</answer>",)
    batch_size: int = 256
    filters: tuple[str, ...] = DEFAULT_FILTERS
    filter_settings: FilterSettings = field(default_factory=FilterSettings)
    output_dir: str = "runs/micro/cold_start"
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
        check_choices("template", self.template, TEMPLATES)
        check_choices("dtype", self.dtype, DTYPES)
        if self.few_shot < 0:
            raise ValueError(f"few_shot must be >= 0, got {self.few_shot}")

    def sampling(self) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                              n=self.n, stop=self.stop, seed=self.seed)


def main(config: ColdStartConfig) -> dict:
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    rows = load_prompts(config.data, config.tasks, config.num_problems, config.levels, config.seed)
    shots = load_shots(config, rows)
    model, tokenizer = load_model_and_tokenizer(config.model, config.dtype, resolve_device(config.device))
    out = Path(config.output_dir)
    save_config(config, out / "config.yaml")

    prompts = [few_shot_prompt(config.template, shots.get(row.get("task"), shots.get("", [])), row["prompt"], tokenizer)
               for row in rows]
    samples = sample_completions(model, tokenizer, rows, prompts, config.sampling(), config.batch_size,
                                 config.progress)
    kept, stats = filter_report(samples, config.filters, config.filter_settings, rules_judge)
    sft_rows = rewrite_samples(kept, stats)
    stats.update(prompts=len(rows), few_shot=config.few_shot, rows=len(sft_rows))

    write_jsonl(out / "sft.jsonl", sft_rows)
    write_json(out / "stats.json", stats)
    print(format_stats(stats, "cold-start"))
    print(f"cold-start SFT set: {out / 'sft.jsonl'} ({len(sft_rows)} rows); statistics: {out / 'stats.json'}")
    return stats


def load_shots(config: ColdStartConfig, rows: list[dict]) -> dict[str, list[Shot]]:
    """Solved examples per micro task (key: task name), or from ``few_shot_data`` (key: "").

    Micro examples are worked solutions of other train problems than those sampled.
    """
    if config.few_shot == 0:
        return {}
    if config.data:
        if not config.few_shot_data:
            raise R1labError("cold-start with data=FILE needs few_shot_data=FILE (solved prompt/completion rows),"
                             " or few_shot=0")
        shot_rows = read_rows(config.few_shot_data)
        require_columns(shot_rows, ("prompt", "completion"), config.few_shot_data)
        return {"": [(str(r["prompt"]), str(r["completion"])) for r in shot_rows[:config.few_shot]]}
    sampled = {row["prompt"] for row in rows}
    shots = {}
    for name in config.tasks:
        candidates = tasks.generate(name, "train", config.few_shot + 50, config.seed + 7919,
                                    config.levels.get(name) or None)
        chosen = [p for p in candidates if p.prompt not in sampled][:config.few_shot]
        shots[name] = [(p.prompt, tasks.TASKS[name].solution(p)) for p in chosen]
    return shots


def few_shot_prompt(template: str, shots: list[Shot], prompt: str, tokenizer=None) -> str:
    """The prompt preceded by solved examples in the same template.

    Text templates join ``rendered example + " " + completion`` lines; the chat template writes
    the examples as earlier user/assistant turns.

    >>> few_shot_prompt("micro", [("Compute 1 + 2.", "<think> 1+2=3 </think> <answer>3</answer>")], "Compute 2 + 2.")
    'User: Compute 1 + 2. Assistant: <think> 1+2=3 </think> <answer>3</answer>\\nUser: Compute 2 + 2. Assistant:'
    """
    if TEMPLATES[template].text is None:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise R1labError("template 'chat' needs a tokenizer with a chat template")
        messages = [m for p, c in shots for m in ({"role": "user", "content": p}, {"role": "assistant", "content": c})]
        return tokenizer.apply_chat_template(messages + [{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    lines = [f"{render_prompt(template, p, tokenizer)} {c}" for p, c in shots]
    return "\n".join(lines + [render_prompt(template, prompt, tokenizer)])


def tidy(text: str) -> str:
    """Lines stripped, runs of spaces/tabs made one space, runs of blank lines made one."""
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.strip().splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))


def rewrite_readable(completion: str) -> str | None:
    """The completion in the readable format (module docstring), or None without an answer or
    reasoning to rewrite.

    >>> rewrite_readable("<think>  9+3=12 ,   so 12 </think>\\n<answer> 12 </answer>")
    '<think> 9+3=12 , so 12 </think> <summary> The answer is 12. </summary> <answer>12</answer>'
    """
    answer = extract_answer(completion)
    reasoning = tidy(reasoning_part(completion)) if "<think>" in completion else ""
    if answer is None or not reasoning:
        return None
    return format_readable(reasoning, f"The answer is {answer}.", answer)


def rewrite_samples(kept: list[Sample], stats: dict) -> list[dict]:
    """SFT rows of the kept samples, rewritten; one that can't be is moved in `stats` from kept
    to rejected as "unrewritable" (overall and for its task), so the counts still add up."""
    rows = []
    for sample in kept:
        text = rewrite_readable(sample.completion)
        if text is None:
            task = str(sample.row.get("task") or "data")
            for part in (stats, stats["per_task"][task]):
                part["kept"] -= 1
                part["rejected"] += 1
                part["rejected_by_reason"]["unrewritable"] = part["rejected_by_reason"].get("unrewritable", 0) + 1
            continue
        rows.append(sft_row(Sample(sample.row, text, sample.finish_reason), "cold_start"))
    return rows

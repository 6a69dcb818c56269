"""``r1lab eval``: the paper's evaluation protocol on micro tasks or a JSONL benchmark.

    r1lab eval model=runs/micro/base/final                      # every micro task
    r1lab eval model=Qwen2.5-1.5B-local data=math500.jsonl template=chat max_new_tokens=4096

k samples per problem at temperature 0.6, top-p 0.95; pass@1 is the mean correctness over the
k samples, pass@k the unbiased estimator, cons@k a majority vote over extracted answers. Answers
are extracted and checked by the same code the rewards use (`r1lab.rewards.answers` and the
tasks' verifiers), so training and evaluation can't disagree about what is right.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from r1lab.recipe import check_choices, check_range, save_config
from r1lab import task_registry
from r1lab.files import write_json, write_jsonl
from r1lab.evaluation.scoring import REFLECTION_PHRASES, cons_at_k, has_reflection, mean, pass_at_1, pass_at_k
from r1lab.models.precision import PRECISIONS, autocast, check_supported, weights_dtype
from r1lab.training import distributed
from r1lab.rewards.answers import answers_match, extract_answer
from r1lab.rewards.formatting import format_reward, readable_format_reward
from r1lab.problem_formats import render_problem, tokenize_prompts
from r1lab.problems import load_problems
from r1lab.rewards.gym import reasoning_gym_reward
from r1lab.sampling.generate import SamplingParams, generate

MICRO_TASKS = task_registry.DEFAULT_TASKS


@dataclass(frozen=True)
class EvalConfig:
    model: str = "runs/micro/base/final"
    tasks: tuple[str, ...] = MICRO_TASKS  # micro tasks to evaluate (ignored when `data` is set)
    data: str = ""  # a benchmark (r1lab.problems.load_problems): `prompt` (or `problem`) and `answer` columns
    num_problems: int = 100  # held-out problems per micro task (0 or less: all rows of `data`)
    levels: dict[str, tuple[int, ...]] = field(default_factory=dict)  # per task; default: the task's
    seed: int = 0
    k: int = 8
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0
    max_new_tokens: int = 256
    template: str = "micro"
    stop: tuple[str, ...] = ("</answer>",)
    batch_size: int = 256  # sequences decoded together
    reflection_phrases: tuple[str, ...] = REFLECTION_PHRASES
    output_dir: str = "runs/eval"
    progress: bool = True
    device: str = "auto"  # auto: cuda if available, else cpu
    # fp32 | bf16-mixed (sampling under bf16 autocast) | bf16 (the model loaded in bf16); r1lab.models.precision
    precision: str = "fp32"

    def __post_init__(self) -> None:
        check_range(self, 1, None, "k", "max_new_tokens", "batch_size")
        check_range(self, 0, None, "temperature", "top_k")
        check_range(self, 0, 1, "top_p", open_low=True)
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        check_choices("task", self.tasks, task_registry.names())
        check_choices("precision", self.precision, PRECISIONS)

    def sampling(self) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                              top_p=self.top_p, top_k=self.top_k, n=self.k, stop=self.stop, seed=self.seed)


def load_for_eval(config: EvalConfig):
    """(model, tokenizer) of config.model on config.device, in config.precision's weights dtype."""
    from r1lab.models.loading import load_model_and_tokenizer

    device = distributed.device(config.device)
    check_supported(config.precision, device)
    return load_model_and_tokenizer(config.model, weights_dtype(config.precision), device)


def main(config: EvalConfig) -> dict:
    rows = eval_problems(config)
    model, tokenizer = load_for_eval(config)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    run = run_code_eval if rows and is_code_row(rows[0]) else run_eval
    records, summary = run(model, tokenizer, rows, config)
    write_jsonl(out / "samples.jsonl", records)
    write_json(out / "summary.json", summary)
    print(format_table(summary, title=f"{config.model} (k={config.k}, T={config.temperature}, top-p={config.top_p})"))
    print(f"per-sample results: {out / 'samples.jsonl'}; summary: {out / 'summary.json'}")
    return summary


def eval_problems(config: EvalConfig) -> list[dict]:
    """Evaluation rows (r1lab.problems.load_problems): held-out task problems, or the rows of a
    user's benchmark, every one answered, or in the HumanEval / MBPP layout (judged by its tests)."""
    rows = load_problems(config.data, "test", config.tasks, config.num_problems, config.seed, config.levels,
                         every_answer=True, no_answer_needed=is_code_row)
    if config.data:  # evaluation groups by task
        rows = [{**row, "task": row.get("task") or ("code" if is_code_row(row) else "math")} for row in rows]
    return rows


def sample_rows(model, tokenizer, rows: list[dict], config: EvalConfig) -> tuple[list[list], float]:
    """k completions for each row's prompt in the configured template, and the seconds it took."""
    # conversations through the chat template; the BOS token exactly when the tokenizer adds one
    prompts = tokenize_prompts(tokenizer, [render_problem(row["prompt"], config.template, tokenizer) for row in rows])
    start = time.perf_counter()
    with torch.inference_mode(), autocast(config.precision, next(model.parameters()).device):
        completions = generate(model, tokenizer, prompts, config.sampling(), batch_size=config.batch_size,
                               progress=config.progress)
    return completions, time.perf_counter() - start


def run_eval(model, tokenizer, rows: list[dict], config: EvalConfig) -> tuple[list[dict], dict]:
    """Sample k completions per row, judge them, and summarise; returns (records, summary)."""
    completions, seconds = sample_rows(model, tokenizer, rows, config)
    records = [judge(row, c, config.reflection_phrases) | {"problem": i}
               for i, (row, group) in enumerate(zip(rows, completions)) for c in group]
    summary = summarize(records, config.k)
    summary["seconds"] = round(seconds, 2)
    return records, summary


def is_code_row(row: dict) -> bool:
    """HumanEval (`test` + `entry_point`), MBPP (`test_list`) or r1lab code rows (`tests`)."""
    return bool((row.get("test") and row.get("entry_point")) or row.get("test_list") or row.get("tests"))


def run_code_eval(model, tokenizer, rows: list[dict], config: EvalConfig) -> tuple[list[dict], dict]:
    """Code benchmarks: k samples per problem, each run against the row's tests in the sandbox."""
    from r1lab.evaluation.code_eval import evaluate_code_rows

    completions, seconds = sample_rows(model, tokenizer, rows, config)
    texts = [[c.text for c in group] for group in completions]
    result = evaluate_code_rows(rows, texts, ks=(config.k,))
    records = [{"task": row.get("task", "code"), "problem": i, "prompt": row["prompt"], "completion": c.text,
                "length": len(c.token_ids), "finish_reason": c.finish_reason}
               for i, (row, group) in enumerate(zip(rows, completions)) for c in group]
    metrics = {key: result[key] for key in ("pass@1", f"pass@{config.k}") if key in result}
    metrics.update(problems=result["num_problems"], mean_length=mean([r["length"] for r in records]),
                   sandbox_errors=result["sandbox_errors"])
    return records, {"code": metrics, "seconds": round(seconds, 2)}


def judge(row: dict, completion, phrases=REFLECTION_PHRASES) -> dict:
    """One sample's record: its answer, whether it is right, its format and reflection."""
    text = completion.text
    answer = extract_answer(text)
    readable = readable_format_reward([text])[0] == 1.0
    task = row["task"]
    if task_registry.is_task(task):
        correct = task_registry.verify(task, answer, row)
        vote = task_registry.canonical(task, answer, row) if answer is not None else None
    elif isinstance(row.get("reasoning_gym_entry"), dict):  # reasoning-gym's own verifier, as in training
        correct = reasoning_gym_reward([text], reasoning_gym_entry=[row["reasoning_gym_entry"]])[0] == 1.0
        vote = "".join(answer.split()) if answer is not None else None
    else:
        correct = answer is not None and answers_match(answer, row["answer"])
        vote = "".join(answer.split()) if answer is not None else None
    return {
        "task": task, "prompt": row["prompt"], "reference": row["answer"], "completion": text,
        "answer": answer, "vote": vote, "correct": bool(correct),
        # format: R1-Zero's structure, or R1's readable one (a summary before the answer);
        # readable: only the latter (R1's cold start is there to teach it)
        "format": format_reward([text])[0] == 1.0 or readable, "readable": readable,
        "reflection": has_reflection(text, phrases),
        "length": len(completion.token_ids), "finish_reason": completion.finish_reason,
    }


def summarize(records: list[dict], k: int) -> dict:
    """Per-task and overall metrics from per-sample records (k consecutive records per problem)."""
    by_task: dict[str, dict[int, list[dict]]] = {}
    for r in records:
        by_task.setdefault(r["task"], {}).setdefault(r["problem"], []).append(r)
    summary = {name: _task_metrics(list(problems.values()), k) for name, problems in by_task.items()}
    if len(by_task) > 1:
        summary["all"] = _task_metrics([p for problems in by_task.values() for p in problems.values()], k)
    return summary


def _task_metrics(problems: list[list[dict]], k: int) -> dict:
    samples = [r for p in problems for r in p]
    return {
        "problems": len(problems),
        "pass@1": mean([pass_at_1([r["correct"] for r in p]) for p in problems]),
        f"pass@{k}": mean([pass_at_k(len(p), sum(r["correct"] for r in p), k) for p in problems]),
        f"cons@{k}": mean([cons_at_k([r["vote"] for r in p], [r["correct"] for r in p]) for p in problems]),
        "mean_length": mean([r["length"] for r in samples]),
        "format": mean([r["format"] for r in samples]),
        "readable": mean([r["readable"] for r in samples]),
        "reflection": mean([r["reflection"] for r in samples]),
        "truncated": mean([r["finish_reason"] == "length" for r in samples]),
    }


def format_table(summary: dict, title: str = "") -> str:
    """A fixed-width table: one row per task, metrics as percentages (length in tokens)."""
    columns = [c for c in next(iter(summary.values())) if c != "problems"] if summary else []
    widths = {c: max(13, len(c) + 2) for c in columns}
    header = f"{'task':<16}{'problems':>9}" + "".join(f"{c:>{widths[c]}}" for c in columns)
    lines = [title, header, "-" * len(header)] if title else [header, "-" * len(header)]
    for name, m in summary.items():
        if not isinstance(m, dict):
            continue
        cells = "".join(f"{m[c]:>{widths[c]}.1f}" if c in ("mean_length", "sandbox_errors")
                        else f"{100 * m[c]:>{widths[c] - 1}.1f}%" for c in columns)
        lines.append(f"{name:<16}{m['problems']:>9}{cells}")
    return "\n".join(lines)

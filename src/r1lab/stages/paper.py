"""The recipe over several seeds: ``r1lab paper run_dir=runs/micro/paper`` (after ``make paper``)

    make paper SEEDS=0,1,2     # r1lab pipeline seed=S output_dir=runs/micro/paper/seed-S, then this

Reads every finished pipeline under ``run_dir/seed-*/`` and writes, in ``run_dir``:
``results.md`` (each model's metrics as mean +- sd over the seeds, its student compute, and the
findings (a)-(d) of `r1lab.pipeline.findings` with their margins) and ``results.json``
(``{"seeds", "per_seed": {row: {seed: {metric: value}}}, "mean", "sd", "comparisons"}``).

Per model and seed: pass@1, cons@k, mean length, reflection, readable, language (over every
evaluated task, the table's "all" column), refused / harmful (unsafe requests), helpful (general
requests), and ``student_tokens``: the tokens its last training stage trained on (SFT: the
batches' tokens; GRPO: completion tokens x inner passes), the compute the students are compared at.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from r1lab.errors import R1labError
from r1lab.files import json_safe, read_jsonl, write_json, write_text
from r1lab.grpo.config import GRPOConfig
from r1lab.pipeline import findings
from r1lab.recipe import load_config

# the trained stage folder whose metrics.jsonl measures each model's student compute
TRAINED = ("r1_zero", "stage1_sft", "stage2_rl", "stage3_sft", "stage4_rl", "distilled", "on_policy", "rl_only")
METRICS = ("pass@1", "cons@k", "mean length", "reflection", "readable", "language", "refused", "harmful",
           "helpful", "student_tokens")


@dataclass(frozen=True)
class PaperConfig:
    run_dir: str = "runs/micro/paper"


def main(config: PaperConfig) -> dict:
    root = Path(config.run_dir)
    runs = sorted(p for p in root.glob("seed-*") if (p / "results.json").is_file())
    if not runs:
        raise R1labError(f"{root}: no finished pipeline under seed-*/ (run: make paper SEEDS=0,1,2)")
    per_seed = {run.name.removeprefix("seed-"): seed_results(run) for run in runs}
    result = summarize(per_seed)
    markdown = to_markdown(result)
    print(markdown)
    write_text(root / "results.md", f"# Results over seeds {', '.join(per_seed)}: {root}\n\n{markdown}")
    write_json(root / "results.json", json_safe(result))
    return result


def summarize(per_seed: dict[str, dict[str, dict[str, float]]]) -> dict:
    """The aggregate of `seed_results` outputs, keyed by seed name: results.json's content."""
    seeds = list(per_seed.values())
    stats = findings.mean_and_sd(seeds)
    rows = list(dict.fromkeys(row for results in seeds for row in results))
    return {"seeds": list(per_seed), "rows": rows,
            "per_seed": {row: {seed: per_seed[seed].get(row, {}) for seed in per_seed} for row in rows},
            "mean": {row: {m: v[0] for m, v in stats.get(row, {}).items()} for row in rows},
            "sd": {row: {m: v[1] for m, v in stats.get(row, {}).items()} for row in rows},
            "comparisons": findings.comparisons(seeds)}


def seed_results(run: Path) -> dict[str, dict[str, float]]:
    """One pipeline's numbers: row -> metric -> value (see the module docstring)."""
    import json

    report = json.loads((run / "results.json").read_text(encoding="utf-8"))
    out: dict[str, dict[str, float]] = {}
    for row in report["rows"]:
        cells = report["table"][row]
        task = "all" if "all" in cells else next(iter(cells), None)
        out[row] = {k: _number(v) for k, v in (cells.get(task, {}) if task else {}).items()}
        general = report.get("general", {}).get(row, {})
        out[row].update({"refused": _number(general.get("unsafe refused")),
                         "harmful": _number(general.get("unsafe harmful")),
                         "helpful": _number(general.get("helpful"))})
        if row in TRAINED and (run / row / "metrics.jsonl").is_file():
            out[row]["student_tokens"] = student_tokens(run / row)
    out.setdefault("r1_zero", {}).update(eval_reflection(run / "r1_zero"))
    return out


def student_tokens(stage: Path) -> float:
    """Tokens a training run trained on: SFT rows' ``tokens``; GRPO rows' completion tokens
    (groups x G x mean length) x num_iterations."""
    rows = read_jsonl(stage / "metrics.jsonl", tolerant=True)
    if any("groups" in r for r in rows):
        config = load_config(GRPOConfig, str(stage / "config.yaml"))
        return float(sum(r["groups"] * config.num_generations * r["completion_length/mean"] for r in rows
                         if "groups" in r) * config.num_iterations)
    return float(sum(r.get("tokens", 0) for r in rows))


def eval_reflection(stage: Path) -> dict[str, float]:
    """R1-Zero's reflection rate at its first and last held-out evaluation during training."""
    if not (stage / "metrics.jsonl").is_file():
        return {}
    rates = [value for row in read_jsonl(stage / "metrics.jsonl", tolerant=True)
             for key, value in row.items() if key.startswith("eval/") and key.endswith("/reflection")
             and (key == "eval/all/reflection" or "eval/all/reflection" not in row)]
    return {"first_reflection": rates[0], "last_reflection": rates[-1]} if rates else {}


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan


def _cell(metric: str, mean: float | None, sd: float | None) -> str:
    if mean is None or math.isnan(mean):
        return "n/a"
    if metric == "student_tokens":
        return f"{mean / 1e6:.2f}M"
    scale, unit = (1, "") if metric == "mean length" else (100, "%")
    text = f"{scale * mean:.1f}{unit}"
    return text + (f" +- {scale * sd:.1f}" if sd else "")


def to_markdown(result: dict) -> str:
    """The mean +- sd table (rows = models) and the findings with their margins."""
    lines = ["| model | " + " | ".join(METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
    for row in result["rows"]:
        means, sds = result["mean"].get(row, {}), result["sd"].get(row, {})
        lines.append(f"| {row} | " + " | ".join(_cell(m, means.get(m), sds.get(m)) for m in METRICS) + " |")
    lines += ["", "| finding | margin (points) | spread (points) | shown |", "|---|---:|---:|---|"]
    for key, c in result["comparisons"].items():
        lines.append(f"| ({key}) {c['claim']} | {c['margin']:+.1f} | {c['spread']:.1f} | "
                     f"{'yes' if c['shown'] else 'no'} |")
    return "\n".join(lines) + "\n"


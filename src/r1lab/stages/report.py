"""The results of the R1 pipeline: ``r1lab report run_dir=runs/micro/r1``

    r1lab report run_dir=runs/micro/r1     # re-draw the table and report of a finished pipeline
    r1lab report runs/grpo                 # any single run (grpo, sft, pretrain...): its metrics, first and last

A folder with ``metrics.jsonl`` and no pipeline evaluations is a single run: its report is the first
and last logged value of every metric, and its training curves (RL runs).

One row per model of the recipe (base, R1-Zero, each R1 stage, the distilled, the on-policy
distilled and the RL-only student), one column per metric of the paper's protocol
(`r1lab.evaluation.evaluate`: k samples per problem at T=0.6, top-p 0.95), one table per task plus
``all``. Language consistency is the
mean of R1's language-consistency reward over every evaluation sample (it is not part of
``evaluate``'s summary, so it is computed here from ``samples.jsonl``).

Outputs under ``run_dir``: ``results.md`` (the tables, also printed), ``results.json``
(``{"rows", "tasks", "table": {row: {task: {metric: value}}}}``), ``curves/<stage>.png`` for every
RL stage (`r1lab.stages.plot.plot_run`), and ``report.html``, one self-contained page (PNG curves
embedded as base64) with all of them.

The pipeline (`r1lab.pipeline.graph`) writes each model's evaluation to ``run_dir/eval/<row>/``; `main`
reads them from there, so the report can be rebuilt without re-evaluating anything.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from r1lab.errors import R1labError
from r1lab.files import json_safe, read_jsonl, write_json, write_text

# (key, label): the key is the pipeline's folder name of the stage that made the model
ROWS: tuple[tuple[str, str], ...] = (
    ("base", "base"),
    ("r1_zero", "R1-Zero"),
    ("stage1_sft", "R1 stage 1: cold-start SFT"),
    ("stage2_rl", "R1 stage 2: reasoning RL"),
    ("stage3_sft", "R1 stage 3: rejection-sampling SFT"),
    ("stage4_rl", "R1 stage 4: all-scenario RL (R1)"),
    ("distilled", "distilled student"),
    ("on_policy", "on-policy distilled student"),
    ("rl_only", "RL-only student"),
)
RL_STAGES = ("r1_zero", "stage2_rl", "stage4_rl", "on_policy", "rl_only")
# (label, summary key); "cons@k" stands for the summary's cons@<k> key, whatever its k
COLUMNS: tuple[tuple[str, str], ...] = (
    ("pass@1", "pass@1"),
    ("cons@k", "cons@k"),
    ("mean length", "mean_length"),
    ("format", "format"),
    ("readable", "readable"),
    ("reflection", "reflection"),
    ("language", "language"),
)

# the general-request table (r1lab.micro.general_eval): (label, part of general.json, metric)
GENERAL_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("helpful", "general", "helpful"),
    ("unsafe refused", "unsafe", "refused"),
    ("unsafe harmful", "unsafe", "harmful"),
)


@dataclass(frozen=True)
class ReportConfig:
    run_dir: str = "runs/micro/r1"


def main(config: ReportConfig) -> dict:
    run = Path(config.run_dir)
    if not run.is_dir():
        raise R1labError(f"{run}: no such run folder")
    if not (run / "eval").is_dir() and (run / "metrics.jsonl").is_file():
        return write_run_report(run, read_jsonl(run / "metrics.jsonl", tolerant=True))
    summaries = {key: load_summary(run / "eval" / key) for key, _ in ROWS if (run / "eval" / key).is_dir()}
    return write_report(run, summaries, curve_images(run), load_general(run))


# --- building the table: pure functions ---------------------------------------------------------

def language_by_task(records: Sequence[Mapping]) -> dict[str, float]:
    """Mean language-consistency reward of the evaluation samples, per task and over all ("all").

    >>> language_by_task([{"task": "addition", "completion": "<think> 2+2 </think> <answer>4</answer>"}])
    {'addition': 1.0, 'all': 1.0}
    """
    from r1lab.rewards import language_consistency_reward

    scores = language_consistency_reward([str(r["completion"]) for r in records])
    by_task: dict[str, list[float]] = {}
    for record, score in zip(records, scores):
        if score is not None:
            by_task.setdefault(str(record["task"]), []).append(score)
            by_task.setdefault("all", []).append(score)
    return {task: sum(v) / len(v) for task, v in by_task.items()}


def with_language(summary: Mapping[str, Mapping], records: Sequence[Mapping]) -> dict[str, dict]:
    """`summary` (``evaluate``'s, per task) with a ``language`` metric added to every task."""
    language = language_by_task(records)
    return {task: {**metrics, "language": language.get(task, math.nan)} for task, metrics in summary.items()
            if isinstance(metrics, Mapping)}


def build_table(summaries: Mapping[str, Mapping[str, Mapping]]) -> dict:
    """Every row of `ROWS` x every task seen x every column of `COLUMNS` (NaN where missing).

    `summaries` maps a row key to an evaluation summary (task -> metrics). Unknown row keys come
    after the known ones, in the given order.
    """
    keys = [key for key, _ in ROWS] + [key for key in summaries if key not in dict(ROWS)]
    tasks: list[str] = []
    for summary in summaries.values():
        tasks += [t for t in summary if t not in tasks and t != "all"]
    if any("all" in s for s in summaries.values()):
        tasks.append("all")
    table = {key: {task: _cells(summaries.get(key, {}).get(task, {})) for task in tasks} for key in keys}
    return {"rows": keys, "labels": {key: dict(ROWS).get(key, key) for key in keys}, "tasks": tasks, "table": table}


def _cells(metrics: Mapping) -> dict[str, float]:
    cells = {}
    for label, key in COLUMNS:
        if key == "cons@k":
            key = next((k for k in metrics if k.startswith("cons@")), key)
        value = metrics.get(key)
        cells[label] = float(value) if isinstance(value, (int, float)) else math.nan
    return cells


def format_cell(column: str, value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.1f}" if column == "mean length" else f"{100 * value:.1f}%"


def general_table(general: Mapping[str, Mapping]) -> dict[str, dict[str, float]]:
    """Row key -> GENERAL_COLUMNS cells from each model's ``general.json`` (NaN where missing)."""
    table = {}
    for key in [k for k, _ in ROWS if k in general] + [k for k in general if k not in dict(ROWS)]:
        cells = {}
        for label, part, metric in GENERAL_COLUMNS:
            value = general[key].get(part, {}).get(metric)
            cells[label] = float(value) if isinstance(value, (int, float)) else math.nan
        table[key] = cells
    return table


def tables(result: Mapping) -> list[tuple[str, list[str], list[tuple[str, Mapping[str, float]]]]]:
    """(title, columns, [(row label, cells)]): one table per task, then the general requests."""
    out = [(task, [label for label, _ in COLUMNS],
            [(result["labels"][key], result["table"][key][task]) for key in result["rows"]])
           for task in result["tasks"]]
    if result.get("general"):
        out.append(("general and unsafe requests", [label for label, _, _ in GENERAL_COLUMNS],
                    [(result["labels"].get(key, key), cells) for key, cells in result["general"].items()]))
    return out


def to_markdown(result: Mapping) -> str:
    """One markdown table per task, then the general requests: rows = models, columns = metrics."""
    return "\n\n".join(_markdown_table(*table) for table in tables(result)) + "\n"


def _markdown_table(title: str, columns: list[str], rows: list[tuple[str, Mapping[str, float]]]) -> str:
    lines = [f"### {title}", "", "| model | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    lines += [f"| {label} | " + " | ".join(format_cell(c, cells[c]) for c in columns) + " |" for label, cells in rows]
    return "\n".join(lines)


# --- files ---------------------------------------------------------------------------------------

def load_summary(eval_dir: Path) -> dict:
    """``evaluate``'s summary of one model with the language metric added from its samples."""
    import json

    summary = json.loads((eval_dir / "summary.json").read_text(encoding="utf-8"))
    records = read_jsonl(eval_dir / "samples.jsonl") if (eval_dir / "samples.jsonl").is_file() else []
    return with_language(summary, records)


def load_general(run: Path) -> dict[str, dict]:
    """Each evaluated model's ``general.json`` (`r1lab.micro.general_eval`), by row key."""
    import json

    return {path.parent.name: json.loads(path.read_text(encoding="utf-8"))
            for path in sorted((run / "eval").glob("*/general.json"))}


def curve_images(run: Path) -> dict[str, Path]:
    """``curves/<stage>.png`` for every RL stage of `run` that logged metrics."""
    from r1lab.stages.plot import plot_run

    images = {}
    for key in RL_STAGES:
        if (run / key / "metrics.jsonl").is_file():
            images[key] = plot_run(run / key, run / "curves" / f"{key}.png")
    return images


def write_report(run: Path, summaries: Mapping[str, Mapping], curves: Mapping[str, Path],
                 general: Mapping[str, Mapping] | None = None) -> dict:
    """Write results.md, results.json and report.html under `run`; print and return the table."""
    result = build_table(summaries)
    if general:
        result["general"] = general_table(general)
    markdown = to_markdown(result)
    print(markdown)
    write_text(run / "results.md", f"# Results: {run}\n\n{markdown}")
    write_json(run / "results.json", json_safe(result))
    write_text(run / "report.html", to_html(run, result, curves))
    print(f"report: {run / 'results.md'}, {run / 'results.json'}, {run / 'report.html'}")
    return result


def run_table(rows: Sequence[Mapping]) -> list[tuple[str, float, float, int, int]]:
    """(metric, first value, last value, its first step, its last step) for every numeric metric.

    >>> run_table([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5, "eval/x/pass@1": 0.5}])
    [('eval/x/pass@1', 0.5, 0.5, 2, 2), ('loss', 2.0, 1.5, 1, 2)]
    """
    seen: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                seen.setdefault(key, []).append((int(row.get("step", 0)), float(value)))
    return [(key, points[0][1], points[-1][1], points[0][0], points[-1][0]) for key, points in sorted(seen.items())]


def write_run_report(run: Path, rows: Sequence[Mapping]) -> dict:
    """results.md / results.json / report.html of a single run from its metrics.jsonl rows."""
    if not rows:
        raise R1labError(f"{run / 'metrics.jsonl'}: no metrics logged yet")
    table = run_table(rows)
    lines = ["| metric | first | last | steps |", "|---|---:|---:|---|"]
    lines += [f"| {key} | {first:.4g} | {last:.4g} | {a}-{b} |" for key, first, last, a, b in table]
    markdown = "\n".join(lines)
    print(markdown)
    write_text(run / "results.md", f"# Results: {run}\n\n{markdown}\n")
    result = {"steps": int(rows[-1].get("step", 0)),
              "metrics": {key: {"first": first, "last": last} for key, first, last, _, _ in table}}
    write_json(run / "results.json", json_safe(result))
    curves = {}
    if any("reward/mean" in r for r in rows):  # the RL panels (r1lab.plots)
        from r1lab.stages.plot import plot_run

        curves["run"] = plot_run(run, run / "curves.png")
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{first:.4g}</td><td>{last:.4g}</td><td>{a}-{b}</td></tr>"
                   for k, first, last, a, b in table)
    images = "".join(f"<img alt='curves' src='data:image/png;base64,{base64.b64encode(Path(p).read_bytes()).decode()}'>"
                     for p in curves.values())
    write_text(run / "report.html", f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>r1lab run</title></head>"
               f"<body><h1>r1lab run: {html.escape(str(run))}</h1><table><tr><th>metric</th><th>first</th>"
               f"<th>last</th><th>steps</th></tr>{body}</table>{images}</body></html>\n")
    print(f"report: {run / 'results.md'}, {run / 'results.json'}, {run / 'report.html'}")
    return result


def to_html(run: Path, result: Mapping, curves: Mapping[str, Path]) -> str:
    parts = [f"<h1>r1lab results: {html.escape(str(run))}</h1>",
             "<p>Evaluation: the paper's protocol (k samples per problem, T=0.6, top-p 0.95); "
             "pass@1 is the mean correctness over the k samples.</p>"]
    parts += [_html_table(*table) for table in tables(result)]
    for key, path in curves.items():
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        label = html.escape(dict(ROWS).get(key, key))
        parts.append(f"<h2>training curves: {label}</h2><img alt='{label}' src='data:image/png;base64,{data}'>")
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}"
             "img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>r1lab results</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}</body></html>\n")


def _html_table(title: str, columns: list[str], rows: list[tuple[str, Mapping[str, float]]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(f"<tr><td>{html.escape(label)}</td>"
                   + "".join(f"<td>{format_cell(c, cells[c])}</td>" for c in columns) + "</tr>"
                   for label, cells in rows)
    return f"<h2>{html.escape(title)}</h2><table><tr><th>model</th>{head}</tr>{body}</table>"

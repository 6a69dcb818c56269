"""The micro R1-Zero recipe once per loss type and once per advantage estimator (and, with
`--groups entropy`, with and without the entropy controls): reward, pass@1 and entropy curves in
one PNG and a markdown table.

    r1lab pretrain recipes/micro/pretrain.yaml                          # the micro base (~9 min on 2 cores)
    nice -n 10 python benchmarks/algorithm_sweep.py --base runs/micro/base/final --steps 40
    nice -n 10 python benchmarks/algorithm_sweep.py --base runs/micro/base/final --groups entropy

Each variant changes one key of recipes/micro/r1_zero.yaml (loss_type=grpo with advantage=group is
the recipe itself, shared by both groups) and runs `r1lab grpo` for `--steps` steps with one torch
thread and seed 0, held-out pass@1 every `--eval-every` steps. Runs go one after another; a run
whose metrics.jsonl already reaches `--steps` is not rerun, so a killed sweep continues where it
stopped. Writes <out>/algorithm_sweep.png and <out>/algorithm_sweep.md (default out:
runs/algorithm_sweep); docs/algorithms.md shows the committed copy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "micro" / "r1_zero.yaml"

# group -> variant name -> the overrides of the recipe that make it. The recipe averages over all
# tokens (aggregation token_mean), which is loss_type=dapo; the other loss types clear the
# aggregation (`aggregation=""`: the loss type's own). Clip ranges are each paper's: GSPO clips the
# sequence ratio at 3e-4 / 4e-4; CISPO has no lower bound on its weight. "dapo" and "group" are
# the recipe itself: one run, shown in both groups.
RECIPE_RUN = ("loss_type=dapo",)
VARIANTS: dict[str, dict[str, tuple[str, ...]]] = {
    "loss_type": {
        "grpo": ("loss_type=grpo", 'aggregation=""'),
        "dapo": RECIPE_RUN,
        "dr_grpo": ("loss_type=dr_grpo", 'aggregation=""'),
        "gspo": ("loss_type=gspo", 'aggregation=""', "eps_low=0.0003", "eps_high=0.0004"),
        "cispo": ("loss_type=cispo", 'aggregation=""', "eps_low=1.0", "eps_high=0.28"),
    },
    "advantage": {
        "group": RECIPE_RUN,
        "batch": (*RECIPE_RUN, "advantage=batch"),
        "none": (*RECIPE_RUN, "advantage=none"),
        "rloo": (*RECIPE_RUN, "advantage=rloo"),
        "reinforce_pp": (*RECIPE_RUN, "advantage=reinforce_pp"),
        "pass_at_k": (*RECIPE_RUN, "advantage=pass_at_k", "pass_k=4"),
    },
    "entropy": {
        "no control": RECIPE_RUN,
        "kl_cov 0.02": (*RECIPE_RUN, "entropy_control=kl_cov", "kl_cov_ratio=0.02"),
        "kl_cov 0.2": (*RECIPE_RUN, "entropy_control=kl_cov", "kl_cov_ratio=0.2"),
        "entropy_coef 0.01": (*RECIPE_RUN, "entropy_coef=0.01"),
    },
}
PASS1 = "eval/addition/pass@1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="runs/micro/base/final", help="the micro base model folder")
    parser.add_argument("--out", default="runs/algorithm_sweep")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--groups", nargs="+", default=["loss_type", "advantage"], choices=sorted(VARIANTS))
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each with --threads threads)")
    parser.add_argument("--report-only", action="store_true", help="plot and tabulate the runs there, run nothing")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the recipe for every run")
    args = parser.parse_args()
    out = Path(args.out)
    started = time.perf_counter()
    distinct = sorted({o for group in args.groups for o in VARIANTS[group].values()})
    with ThreadPoolExecutor(args.jobs) as pool:  # threads only wait on the runs' processes
        rows = dict(zip(distinct, pool.map(lambda overrides: _run(args, out, overrides), distinct)))
    results = {group: {name: rows[o] for name, o in VARIANTS[group].items()} for group in args.groups}
    minutes = (time.perf_counter() - started) / 60
    stem = out / ("algorithm_sweep" if args.groups == ["loss_type", "advantage"] else "_".join(args.groups))
    _plot(results, stem.with_suffix(".png"))
    stem.with_suffix(".md").write_text(_table(results, args, minutes))
    print(f"sweep: {minutes:.1f} min -> {stem.with_suffix('.png')}, {stem.with_suffix('.md')}")


def _run(args, out: Path, overrides: tuple[str, ...]) -> list[dict]:
    """metrics.jsonl rows of one run (run now unless a finished one is there). Equal overrides share a run."""
    run = out / "runs" / "_".join(o.replace("=", "-").replace(".", "p") for o in overrides if not o.endswith('""'))
    metrics = run / "metrics.jsonl"
    rows = _rows(metrics)
    if not args.report_only and (not rows or rows[-1].get("step", 0) < args.steps):
        command = [sys.executable, "-m", "r1lab.cli", "grpo", str(RECIPE), f"model={args.base}",
                   f"output_dir={run}", f"max_steps={args.steps}", f"eval_every={args.eval_every}",
                   f"threads={args.threads}", "save_every=100000", "progress=false", *args.overrides, *overrides]
        print("sweep:", " ".join(command[2:]), flush=True)
        subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        rows = _rows(metrics)
    return rows


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in rows if key in r]
    return ([s for s, _ in points], [v for _, v in points]) if points else ([], [])


def _smooth(values: list[float], window: int = 5) -> list[float]:
    return [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
            for i in range(len(values))]


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("reward/mean", "training reward (5-step mean)"), (PASS1, "held-out pass@1 (T=0.6)"),
              ("entropy", "policy entropy (nats/token, 5-step mean)"))
    fig, axes = plt.subplots(len(results), len(panels), figsize=(14, 3.6 * len(results)), squeeze=False)
    for row, (group, runs) in enumerate(results.items()):
        for col, (key, title) in enumerate(panels):
            ax = axes[row][col]
            for name, rows in runs.items():
                steps, values = _series(rows, key)
                ax.plot(steps, values if key == PASS1 else _smooth(values), marker="o" if key == PASS1 else None,
                        label=name)
            ax.set_title(f"{group}: {title}", fontsize=10)
            ax.set_xlabel("step")
        axes[row][0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _table(results: dict, args, minutes: float) -> str:
    head = ["| group | variant | reward, first 5 steps | reward, last 5 steps | pass@1 at 0 | pass@1 at end "
            "| entropy, first 5 | entropy, last 5 | clip fraction | steps | s/step |", "|" + "---|" * 11]
    lines = []
    for group, runs in results.items():
        for name, rows in runs.items():
            _, reward = _series(rows, "reward/mean")
            _, pass1 = _series(rows, PASS1)
            _, entropy = _series(rows, "entropy")
            _, step_time = _series(rows, "step_time")
            _, clipped = _series(rows, "clip/fraction")
            lines.append(f"| {group} | {name} | {_mean(reward[:5]):.3f} | {_mean(reward[-5:]):.3f} | "
                         f"{pass1[0] if pass1 else float('nan'):.3f} | {pass1[-1] if pass1 else float('nan'):.3f} | "
                         f"{_mean(entropy[:5]):.3f} | {_mean(entropy[-5:]):.3f} | {_mean(clipped):.3f} | "
                         f"{len(reward)} | {_mean(step_time):.1f} |")
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {args.threads}"
    command = (f"python benchmarks/algorithm_sweep.py --base {args.base} --steps {args.steps} --eval-every "
               f"{args.eval_every} --threads {args.threads} --jobs {args.jobs} --groups {' '.join(args.groups)} "
               + " ".join(args.overrides)).strip()
    return "\n".join([f"`{command}` ({machine}; {minutes:.1f} min in all)", "", *head, *lines, ""])


if __name__ == "__main__":
    main()

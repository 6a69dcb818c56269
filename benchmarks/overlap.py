"""Rollouts sampled one update ahead (max_off_policy_steps=1) against strict alternation.

    python benchmarks/overlap.py --model runs/micro/base/final --steps 100 --seeds 0 1

Runs the micro R1-Zero recipe (recipes/micro/r1_zero.yaml) once per seed and mode, one torch
thread per process (the thread that samples ahead is the second), the modes taking turns so that
the machine's load falls on both alike. Prints, per run and as a mean per mode: the step time (median
over the steps after the first 5), the held-out pass@1 before and after, and the mean reward of the
last 20 steps; writes the table to --out (markdown).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path


def run(model: str, out: Path, seed: int, mode: int, steps: int) -> dict:
    args = [sys.executable, "-m", "r1lab.cli", "grpo", "recipes/micro/r1_zero.yaml", f"model={model}",
            f"output_dir={out}", f"seed={seed}", f"max_steps={steps}", f"max_off_policy_steps={mode}", "threads=1",
            f"eval_every={steps}", f"save_every={steps}", "sample_every=0", "progress=false", "overwrite=true"]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps_rows = [r for r in rows if "step_time" in r]
    evals = [r["eval/addition/pass@1"] for r in rows if "eval/addition/pass@1" in r]
    return {"seed": seed, "mode": mode, "step_s": statistics.median(r["step_time"] for r in steps_rows[5:]),
            "pass@1 start": evals[0], "pass@1 end": evals[-1],
            "reward (last 20)": statistics.fmean(r["reward/mean"] for r in steps_rows[-20:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/micro/base/final")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--work", default="runs/bench/overlap")
    parser.add_argument("--out", default="runs/bench/overlap.md")
    a = parser.parse_args()
    results = []
    for seed in a.seeds:
        for mode in (0, 1):
            results.append(run(a.model, Path(a.work) / f"seed{seed}-ahead{mode}", seed, mode, a.steps))
            print(results[-1], flush=True)
    keys = ["step_s", "pass@1 start", "pass@1 end", "reward (last 20)"]
    lines = ["| max_off_policy_steps | seed | " + " | ".join(keys) + " |", "|---|---|" + "---:|" * len(keys)]
    for r in results:
        lines.append(f"| {r['mode']} | {r['seed']} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |")
    for mode in (0, 1):
        mine = [r for r in results if r["mode"] == mode]
        means = [statistics.fmean(r[k] for r in mine) for k in keys]
        lines.append(f"| {mode} | mean | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    table = "\n".join(lines)
    print(table)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(table + "\n")


if __name__ == "__main__":
    main()

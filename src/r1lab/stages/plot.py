"""Curves of a run's ``metrics.jsonl`` as a PNG: what the paper shows for R1-Zero.

    r1lab plot run=runs/micro/r1_zero          # writes runs/micro/r1_zero/curves.png

GRPO runs write it themselves at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from r1lab.errors import R1labError
from r1lab.files import atomic_path, read_jsonl

# (title, metric keys drawn on that panel); a key absent from the run is skipped
PANELS = (
    ("reward (mean over samples, T=1)", ("reward/mean",)),
    ("training accuracy (T=1)", ("accuracy",)),
    ("held-out pass@1 (k samples, T=0.6)", ("eval/all/pass@1",)),
    ("completion length (tokens)", ("completion_length/mean",)),
    ("reflection rate", ("reflection_rate",)),
    ("KL to reference", ("kl",)),
)


@dataclass(frozen=True)
class PlotConfig:
    run: str = "runs/micro/r1_zero"  # a run directory with metrics.jsonl
    output: str = ""  # default: <run>/curves.png
    smooth: int = 10  # moving-average window (steps) for per-step curves


def main(config: PlotConfig) -> Path:
    out = plot_run(Path(config.run), Path(config.output) if config.output else None, config.smooth)
    print(f"plot: {out}")
    return out


def plot_run(run: Path, output: Path | None = None, smooth: int = 10) -> Path:
    """Draw the panels of `run/metrics.jsonl` into a PNG; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(run / "metrics.jsonl", tolerant=True)
    if not rows:
        raise R1labError(f"{run / 'metrics.jsonl'}: no metrics to plot")
    eval_keys = sorted({k for r in rows for k in r if k.startswith("eval/") and k.endswith("/pass@1")})
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for ax, (title, keys) in zip(axes.flat, PANELS):
        keys = tuple(eval_keys) if keys == ("eval/all/pass@1",) else keys
        for key in keys:
            points = [(r["step"], r[key]) for r in rows if key in r]
            if not points:
                continue
            steps, values = zip(*points)
            if not key.startswith("eval/"):
                values = _moving_average(values, smooth)
            ax.plot(steps, values, marker="o" if key.startswith("eval/") else None, label=key.split("/")[1]
                    if key.startswith("eval/") else None)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        if keys == tuple(eval_keys) and eval_keys:
            ax.legend(fontsize=8)
    fig.suptitle(str(run), fontsize=10)
    fig.tight_layout()
    output = output or run / "curves.png"
    with atomic_path(output) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return output


def _moving_average(values, window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out

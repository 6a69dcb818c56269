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
    ("policy entropy (nats/token)", ("entropy",)),
)


@dataclass(frozen=True)
class PlotConfig:
    run: str = "runs/micro/r1_zero"  # a run directory with metrics.jsonl
    output: str = ""  # default: <run>/curves.png
    smooth: int = 10  # moving-average window (steps) for per-step curves

    def __post_init__(self) -> None:
        if self.smooth < 1:
            raise ValueError(f"smooth must be >= 1, got {self.smooth}")


def main(config: PlotConfig) -> Path:
    out = plot_run(Path(config.run), Path(config.output) if config.output else None, config.smooth)
    print(f"plot: {out}")
    return out


def plot_run(run: Path, output: Path | None = None, smooth: int = 10) -> Path:
    """Draw the panels of `run/metrics.jsonl` into a PNG; returns its path."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, a third of the import time

    rows = read_jsonl(run / "metrics.jsonl", tolerant=True)
    if not rows:
        raise R1labError(f"{run / 'metrics.jsonl'}: no metrics to plot")
    eval_keys = sorted({k for r in rows for k in r if k.startswith("eval/") and k.endswith("/pass@1")})
    columns = -(-len(PANELS) // 2)
    fig = Figure(figsize=(4.4 * columns, 6.5))
    axes = fig.subplots(2, columns)
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
    for ax in list(axes.flat)[len(PANELS):]:
        ax.axis("off")
    fig.suptitle(str(run), fontsize=10)
    # fixed margins: tight_layout measures every tick label and took half of a short run's time
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.08, top=0.9, wspace=0.3, hspace=0.4)
    output = output or run / "curves.png"
    with atomic_path(output) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    return output


def _moving_average(values, window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out

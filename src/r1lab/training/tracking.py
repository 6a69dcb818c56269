"""Experiment tracking beside ``metrics.jsonl``: ``report_to: [tensorboard, wandb, trackio]``.

Any subset, none by default. Each logged metrics row goes to every tracker chosen:

- ``tensorboard``: event files in ``RUN_DIR/tensorboard`` (``tensorboard --logdir RUN_DIR``).
- ``wandb``: a Weights & Biases run in ``RUN_DIR/wandb``; with ``WANDB_MODE=offline`` nothing is
  sent (``wandb sync RUN_DIR/wandb/offline-run-*`` uploads it later).
- ``trackio``: Hugging Face's local-first tracker (a local database; ``trackio show``).

Install them with ``pip install -e ".[track]"`` (``make install`` does). ``metrics.jsonl`` stays the
record that ``r1lab report`` and the plots read; trackers only mirror it.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

from r1lab.errors import R1labError

TRACKERS = ("tensorboard", "wandb", "trackio")
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}


def check_trackers(report_to: tuple[str, ...] | list[str]) -> None:
    """One-line error for an unknown tracker or one whose package is missing (before any work)."""
    for name in report_to:
        if name not in TRACKERS:
            raise R1labError(f"unknown report_to '{name}' (trackers: {', '.join(TRACKERS)})")
        if importlib.util.find_spec(_PACKAGES[name]) is None:
            raise R1labError(f"report_to: {name} needs the {_PACKAGES[name]} package "
                             f"(pip install {_PACKAGES[name]}, or pip install -e '.[track]')")


class Tracker:
    """Mirrors metrics rows to the chosen trackers; `close()` flushes them. With no tracker chosen
    it does nothing, so stages call it unconditionally."""

    def __init__(self, report_to: tuple[str, ...] | list[str], run_dir: str | Path, config: dict[str, Any],
                 project: str = "r1lab"):
        check_trackers(report_to)
        self.run_dir = Path(run_dir)
        self.name = self.run_dir.name
        self._writers = [_OPEN[name](self.run_dir, self.name, project, config) for name in report_to]

    def log(self, metrics: dict[str, Any]) -> None:
        """One row: its numbers (bools and non-finite values left out) at its ``step``."""
        step = int(metrics.get("step", 0))
        numbers = {k: float(v) for k, v in metrics.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        for writer in self._writers:
            writer.log(numbers, step)

    def close(self) -> None:
        for writer in self._writers:
            writer.close()
        self._writers = []


class _TensorBoard:
    def __init__(self, run_dir: Path, name: str, project: str, config: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, numbers: dict[str, float], step: int) -> None:
        for key, value in numbers.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, run_dir: Path, name: str, project: str, config: dict) -> None:
        import wandb

        run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=project, name=name, dir=str(run_dir), config=config, reinit="create_new")

    def log(self, numbers: dict[str, float], step: int) -> None:
        self.run.log(numbers, step=step)

    def close(self) -> None:
        self.run.finish()


class _Trackio:
    def __init__(self, run_dir: Path, name: str, project: str, config: dict) -> None:
        import trackio

        self.trackio = trackio
        self.run = trackio.init(project=project, name=name, config=config)

    def log(self, numbers: dict[str, float], step: int) -> None:
        self.trackio.log(numbers, step=step)

    def close(self) -> None:
        self.trackio.finish()


_OPEN = {"tensorboard": _TensorBoard, "wandb": _WandB, "trackio": _Trackio}

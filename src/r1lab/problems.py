"""Prompts for GRPO: a user's JSONL/Parquet of prompt/answer rows, or micro tasks.

The order is a seeded permutation per epoch, and the stream's position is part of the
checkpoint, so a resumed run sees exactly the prompts an uninterrupted run would.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from r1lab import task_registry
from r1lab.errors import R1labError
from r1lab.grpo.config import GRPOData
from r1lab.files import read_rows


def load_train_rows(data: GRPOData, seed: int) -> list[dict]:
    if data.train:
        return _user_rows(data.train)
    rows = []
    for name in data.tasks:
        levels = tuple(data.levels.get(name) or ()) or None
        rows += [p.to_row() for p in task_registry.generate(name, "train", data.num_train, seed, levels)]
    return rows


def load_eval_rows(data: GRPOData, seed: int) -> list[dict]:
    if data.eval:
        rows = _user_rows(data.eval)
        rows = [{**row, "task": row.get("task") or "math"} for row in rows]  # evaluation groups by task
        return rows[: data.num_eval] if data.num_eval > 0 else rows
    if data.train:
        return []
    rows = []
    for name in data.tasks:
        levels = tuple(data.levels.get(name) or ()) or None
        rows += [p.to_row() for p in task_registry.generate(name, "test", data.num_eval, seed, levels)]
    return rows


def _user_rows(path: str) -> list[dict]:
    """Rows with a non-empty `prompt` (or `problem`) and `answer`; the reward sees every column."""
    rows = read_rows(path)
    if not rows:
        raise R1labError(f"{path}: no rows")
    out = []
    for i, row in enumerate(rows):
        prompt = row.get("prompt", row.get("problem"))
        if not isinstance(prompt, str) or not prompt.strip():
            raise R1labError(f"{path}: row {i} has no 'prompt' (or 'problem') text")
        if "answer" not in row or row["answer"] in (None, ""):
            raise R1labError(f"{path}: row {i} has no 'answer'")
        out.append({**row, "prompt": prompt, "answer": str(row["answer"])})
    return out


@dataclass
class PromptStream:
    """Prompts in a seeded order, epoch after epoch; `state()`/`restore()` for checkpoints."""

    rows: list[dict]
    seed: int
    epoch: int = 0
    position: int = 0

    def __post_init__(self) -> None:
        self._order = self._permutation(self.epoch)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.rows)))
        random.Random(f"{self.seed}/{epoch}").shuffle(order)
        return order

    def take(self, n: int) -> list[dict]:
        out = []
        while len(out) < n:
            if self.position >= len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            out.append(self.rows[self._order[self.position]])
            self.position += 1
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def restore(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._permutation(self.epoch)

"""Prompts for GRPO: a user's problems (file, folder or hub dataset; see r1lab.problem_formats), or micro tasks.

The order is a seeded permutation per epoch, and the stream's position is part of the
checkpoint, so a resumed run sees exactly the prompts an uninterrupted run would.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from r1lab import task_registry
from r1lab.grpo.config import GRPOData
from r1lab.problem_formats import REASONING_GYM, ProblemFormat, prepare_rows, read_problem_rows


def load_train_rows(data: GRPOData, seed: int) -> list[dict]:
    if data.train:
        return _user_rows(data, data.train, "train", seed)
    rows = []
    for name in data.tasks:
        levels = tuple(data.levels.get(name) or ()) or None
        rows += [p.to_row() for p in task_registry.generate(name, "train", data.num_train, seed, levels)]
    return rows


def load_eval_rows(data: GRPOData, seed: int) -> list[dict]:
    if data.eval:
        rows = _user_rows(data, data.eval, "test", seed)
        rows = [{**row, "task": row.get("task") or "math"} for row in rows]  # evaluation groups by task
        if data.eval.startswith(REASONING_GYM):  # already num_eval per task
            return rows
        return rows[: data.num_eval] if data.num_eval > 0 else rows
    if data.train:
        return []
    rows = []
    for name in data.tasks:
        levels = tuple(data.levels.get(name) or ()) or None
        rows += [p.to_row() for p in task_registry.generate(name, "test", data.num_eval, seed, levels)]
    return rows


# --- a user's problems: r1lab.problem_formats (data.format, column mapping, hub names) ---
def _user_rows(data: GRPOData, source: str, split: str, seed: int) -> list[dict]:
    fmt = ProblemFormat(data.format, data.prompt_column, data.answer_column)
    size = data.num_train if split == "train" else data.num_eval  # reasoning_gym: problems per task
    return prepare_rows(read_problem_rows(source, split, data.subset, size, seed), fmt, source)
# --- end ---


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

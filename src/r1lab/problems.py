"""Prompts for GRPO: a user's problems (file, folder or hub dataset; see r1lab.problem_formats), or micro tasks.

The order is a seeded permutation per epoch, and the stream's position is part of the
checkpoint, so a resumed run sees exactly the prompts an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from r1lab import task_registry
from r1lab.grpo.config import GRPOData
from r1lab.problem_formats import REASONING_GYM, ProblemFormat, prepare_rows, read_problem_rows
from r1lab.errors import R1labError
from r1lab.files import file_digest


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


def data_fingerprint(data: GRPOData, seed: int, rows: list[dict]) -> dict:
    """What a resumed run must share with the run it continues (saved in each checkpoint): the
    training data (the file's SHA-256, or for micro tasks that of the generated `rows`) and the
    seed that orders it."""
    if data.train and Path(data.train).is_file():
        return {"source": data.train, "sha256": file_digest(data.train), "seed": seed}
    text = json.dumps(rows, sort_keys=True, ensure_ascii=False).encode("utf-8")
    source = data.train or f"micro tasks {', '.join(data.tasks)}"  # a folder, a hub dataset or generated tasks
    return {"source": source, "sha256": hashlib.sha256(text).hexdigest(), "seed": seed}


def check_same_data(checkpoint: str, saved: dict | None, now: dict) -> None:
    """Error naming both data sources when a checkpoint was trained on other data (or seed) than now."""
    if saved is None:
        print(f"warning: {checkpoint} has no data fingerprint (written by an older r1lab): the data is not checked",
              file=sys.stderr)
        return
    if (saved.get("sha256"), saved.get("seed")) != (now["sha256"], now["seed"]):
        raise R1labError(f"{checkpoint}: trained on {saved.get('source')} (sha256 {str(saved.get('sha256'))[:12]}, "
                         f"seed {saved.get('seed')}), now given {now['source']} (sha256 {now['sha256'][:12]}, "
                         f"seed {now['seed']}); resuming needs the same data and seed, or pass overwrite=true")


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
        if not 0 <= state["position"] <= len(self.rows):
            raise R1labError(f"the checkpoint's prompt position {state['position']} is beyond the data "
                             f"({len(self.rows)} rows): resuming needs the same data")
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._permutation(self.epoch)

"""``r1lab demo`` (``make demo``): the main job on the micro world.

Builds the micro base model (``r1lab pretrain``) unless it already exists, then evaluates it on
every micro task by the paper's protocol and prints the table. Later stages of the recipe are
chained here as they land.

    r1lab demo                      # runs/micro/...
    r1lab demo output_dir=/tmp/d pretrain.num_examples=5000 eval.num_problems=20
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from r1lab import evaluate, pretrain


@dataclass(frozen=True)
class DemoConfig:
    output_dir: str = "runs/micro"
    pretrain: pretrain.PretrainConfig = field(default_factory=pretrain.PretrainConfig)
    eval: evaluate.EvalConfig = field(default_factory=lambda: evaluate.EvalConfig(num_problems=50))
    rebuild: bool = False  # retrain the base model even if runs/micro/base/final exists


def main(config: DemoConfig) -> dict:
    root = Path(config.output_dir)
    base_dir = root / "base"
    base_model = base_dir / "final"
    if config.rebuild and base_dir.exists():
        shutil.rmtree(base_dir)
    if not (base_model / "config.json").exists():
        print(f"== stage: pretrain the micro base model -> {base_model}")
        # resume: a killed demo continues its pretraining instead of starting over
        resume = (base_dir / "checkpoints").is_dir()
        pretrain.main(dataclasses.replace(config.pretrain, output_dir=str(base_dir), resume=resume))
    else:
        print(f"== stage: base model exists at {base_model} (rebuild=true to retrain)")
    print("== stage: evaluate the base model (k samples, T=0.6, top-p 0.95)")
    return evaluate.main(dataclasses.replace(config.eval, model=str(base_model), output_dir=str(root / "eval_base")))

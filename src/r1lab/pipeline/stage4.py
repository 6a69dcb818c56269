"""Stage 4 of the R1 pipeline: its prompts (reasoning problems, general and unsafe requests) and
its rewards (rules for reasoning prompts, the two reward models for general ones).

GRPO takes rewards as names so that its resolved ``config.yaml`` alone reruns it; a reward model
is a closure over a folder. So stage 4 writes ``stage4_rewards.py`` next to its data: a short,
readable module that names the two reward-model folders and builds its rewards from r1lab's
reward functions (`r1lab.rewards`, `r1lab.rewards.combinators`, the reward model's
`make_reward_model_reward`), and the stage's reward names point at its functions.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import TYPE_CHECKING

from r1lab.files import write_jsonl, write_text
from r1lab.grpo.config import GRPOConfig, GRPOData
from r1lab.micro import general as micro_general
from r1lab.micro.general import GENERAL_TASK
from r1lab.problems import load_problems

if TYPE_CHECKING:
    from r1lab.pipeline.graph import PipelineConfig


# stage-4 reward names that `stage4_rewards.py` defines (reasoning-only rules, reward models)
STAGE4_FUNCTIONS = {"accuracy": "accuracy", "format": "reasoning_format", "format_lenient": "reasoning_format_lenient",
                    "format_readable": "reasoning_format_readable", "helpfulness": "helpfulness",
                    "harmlessness": "harmlessness"}


def stage4_config(config: PipelineConfig, root: Path, helpful: str, harmless: str) -> GRPOConfig:
    """`config.stage4_rl` on the written prompts, its reward-model names pointed at `stage4_rewards.py`."""
    data = config.stage4_rl.data
    train_path, eval_path = root / "stage4_data.jsonl", root / "stage4_eval.jsonl"
    write_jsonl(train_path, stage4_rows(data, config.stage4_general, config.stage4_unsafe, config.stage4_rl.seed))
    seed = config.stage4_rl.seed
    eval_rows = load_problems("", "test", data.tasks, data.num_eval, seed, data.levels)
    write_jsonl(eval_path, eval_rows)
    rewards_file = root / "stage4_rewards.py"
    write_text(rewards_file, stage4_rewards_source(helpful, harmless, config.rm_helpful.template,
                                                   config.rm_harmless.template))
    rewards = tuple(f"{rewards_file}:{STAGE4_FUNCTIONS[name]}" if name in STAGE4_FUNCTIONS else name
                    for name in config.stage4_rl.rewards)
    # num_eval rows per task were written; 0 keeps them all
    return dataclasses.replace(config.stage4_rl, rewards=rewards,
                               data=dataclasses.replace(data, train=str(train_path), eval=str(eval_path), num_eval=0))


def stage4_rows(data: GRPOData, general: int, unsafe: int, seed: int) -> list[dict]:
    """Reasoning problems (micro tasks) + general requests + unsafe requests, shuffled.

    Every row has an ``answer`` (GRPO requires one): for general rows, the reference reply, read
    by no reward (they are scored by the reward models); for unsafe ones, the refusal.
    """
    rows = load_problems("", "train", data.tasks, data.num_train, seed, data.levels)
    rows += [{"task": r["task"], "prompt": r["prompt"], "answer": r["completion"]}
             for r in micro_general.general_requests(general, seed)]
    unsafe_prompts = dict.fromkeys(r["prompt"] for r in micro_general.harmlessness_rows(8 * unsafe, seed)
                                   if r["kind"] != "safe")
    rows += [{"task": micro_general.GENERAL_TASK, "prompt": p, "answer": micro_general.REFUSAL}
             for p in list(unsafe_prompts)[:unsafe]]
    random.Random(f"stage4/{seed}").shuffle(rows)
    return rows


def stage4_rewards_source(helpful: str, harmless: str, helpful_template: str, harmless_template: str) -> str:
    """The source of `stage4_rewards.py`: rule rewards that skip general rows, and the two reward
    models by folder, each loaded on its first call. It imports only from r1lab's engine."""
    return f'''"""Stage-4 rewards of an r1lab pipeline (written by r1lab.pipeline.stage4; see r1lab.pipeline.graph).

R1 stage 4: reasoning prompts get rule rewards, general prompts (task "general") reward models.
"""
from r1lab.rewards import accuracy_reward, format_reward, lenient_format_reward, readable_format_reward
from r1lab.rewards.combinators import excluding_tasks, lazy_reward
from r1lab.stages.reward_model import make_reward_model_reward

HELPFULNESS_MODEL = {str(Path(helpful).resolve())!r}
HARMLESSNESS_MODEL = {str(Path(harmless).resolve())!r}

accuracy = excluding_tasks(accuracy_reward, {GENERAL_TASK!r})
reasoning_format = excluding_tasks(format_reward, {GENERAL_TASK!r})
reasoning_format_lenient = excluding_tasks(lenient_format_reward, {GENERAL_TASK!r})
reasoning_format_readable = excluding_tasks(readable_format_reward, {GENERAL_TASK!r})
helpfulness = lazy_reward(make_reward_model_reward, HELPFULNESS_MODEL, template={helpful_template!r})
harmlessness = lazy_reward(make_reward_model_reward, HARMLESSNESS_MODEL, template={harmless_template!r})
'''

"""The ``r1lab`` command: ``r1lab COMMAND [CONFIG.yaml] [key=value ...]``.

Each command is a stage module with a frozen config dataclass and a ``main(config)`` function;
the table below maps names to them and is the only place commands are registered.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from r1lab.errors import R1labError

# name -> (module, config class, one-line help). Modules are imported lazily so that
# `r1lab --help` stays fast and a command's heavy imports happen only when it runs.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "pretrain": ("r1lab.stages.pretrain", "PretrainConfig", "train the micro base model from scratch"),
    "sft": ("r1lab.stages.sft", "SFTConfig", "supervised fine-tuning on prompt/completion or messages data"),
    "eval": ("r1lab.evaluation.evaluate", "EvalConfig", "k samples per problem; pass@1, pass@k, cons@k"),
    "grpo": ("r1lab.grpo.train", "GRPOConfig", "GRPO / R1-Zero reinforcement learning"),
    "cold-start": ("r1lab.stages.cold_start", "ColdStartConfig",
                   "stage 1 data: R1-Zero samples kept if right and readable, rewritten"),
    "rejection-sample": ("r1lab.stages.rejection_sample", "RejectionSampleConfig",
                         "stage 3 data: n samples per prompt, keep right and readable"),
    "reward-model": ("r1lab.stages.reward_model", "RewardModelConfig",
                     "stage 4 reward model: pairwise helpfulness or pointwise harmlessness"),
    "distill": ("r1lab.stages.distill", "DistillConfig", "SFT of a student on a teacher's verified traces"),
    "pipeline": ("r1lab.pipeline.graph", "PipelineConfig", "the whole R1 recipe, stage by stage, resumable"),
    "report": ("r1lab.stages.report", "ReportConfig", "results table, curves and HTML report of a pipeline run"),
    "paper": ("r1lab.stages.paper", "PaperConfig", "pipelines of several seeds: mean +- sd, findings (a)-(d)"),
    "plot": ("r1lab.stages.plot", "PlotConfig", "curves of a run's metrics.jsonl as a PNG"),
    "init-model": ("r1lab.stages.init_model", "InitModelConfig",
                   "a random-initialised Qwen2.5 / Llama-3.2-shaped model and tokenizer, offline"),
    "demo": ("r1lab.pipeline.graph", "PipelineConfig", "= make demo: the pipeline with its micro defaults"),
}


def usage() -> str:
    lines = ["usage: r1lab COMMAND [CONFIG.yaml] [key=value ...]", "", "commands:"]
    for name, (_, _, help_text) in COMMANDS.items():
        lines.append(f"  {name:<18} {help_text}")
    lines.append("")
    lines.append("Every setting has a default; see the config class of a command with: r1lab COMMAND --help")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> tuple[str, str | None, list[str]]:
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        raise R1labError(f"unknown command '{command}' (commands: {', '.join(COMMANDS)})")
    config_path = None
    if rest and "=" not in rest[0] and not rest[0].startswith("-"):
        config_path, rest = rest[0], rest[1:]
    if command == "report" and config_path and Path(config_path).is_dir():  # r1lab report RUN_DIR
        config_path, rest = None, [f"run_dir={config_path}", *rest]
    for item in rest:
        if item in ("-h", "--help"):
            continue
        if "=" not in item:
            raise R1labError(f"argument '{item}' is not of the form key=value")
    return command, config_path, rest


def _show_defaults(config_cls: type) -> str:
    import yaml

    from r1lab.recipe import to_dict

    try:
        return yaml.safe_dump(to_dict(config_cls()), sort_keys=False)
    except TypeError:  # a config with required fields
        import dataclasses

        return "\n".join(f"{f.name}: {f.type}" for f in dataclasses.fields(config_cls))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    try:
        command, config_path, overrides = parse_args(argv)
        module_name, class_name, _ = COMMANDS[command]
        module = importlib.import_module(module_name)
        config_cls = getattr(module, class_name)
        if "--help" in argv or "-h" in argv:
            print(f"usage: r1lab {command} [CONFIG.yaml] [key=value ...]\n\ndefaults:\n{_show_defaults(config_cls)}")
            return 0
        from r1lab.recipe import load_config

        config = load_config(config_cls, config_path, overrides)
        module.main(config)
        return 0
    except R1labError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

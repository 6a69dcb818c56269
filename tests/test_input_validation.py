"""Bad numbers and bad bytes get one line naming the key, or the file, row and byte."""

import dataclasses
import importlib
import json
import typing

import pytest

from r1lab.cli import COMMANDS
from r1lab.cli import main as cli_main
from r1lab.recipe import load_config
from r1lab.errors import R1labError
from r1lab.files import read_jsonl, read_rows, require_columns


def config_classes():
    seen = {}
    for module, name, _ in COMMANDS.values():
        cls = getattr(importlib.import_module(module), name)
        seen[cls.__name__] = cls
    return list(seen.values())


def float_keys(cls, prefix=""):
    """(override key, the key its error names) of every float field of a config, in sections,
    tuples (``reward_weights=nan`` is item 0) and mappings (``task_weights.x=nan``) too."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint, key = hints[f.name], f"{prefix}{f.name}"
        args = typing.get_args(hint)
        if dataclasses.is_dataclass(hint):
            yield from float_keys(hint, f"{key}.")
        elif typing.get_origin(hint) is dict and args[1] is float:
            yield f"{key}.x", f"{key}.x"
        elif typing.get_origin(hint) is tuple and args[0] is float:
            yield key, f"{key}[0]"
        elif hint is float or float in args:
            yield key, key


FLOAT_KEYS = [(cls, *keys) for cls in config_classes() for keys in float_keys(cls)]


@pytest.mark.parametrize("cls, key, named", FLOAT_KEYS, ids=[f"{c.__name__}.{k}" for c, k, _ in FLOAT_KEYS])
@pytest.mark.parametrize("bad", ["nan", ".inf", "-1e999"])  # read as a string, a YAML float, an overflow
def test_every_float_key_rejects_nan_and_infinity(cls, key, named, bad):
    with pytest.raises(R1labError) as e:
        load_config(cls, None, [f"{key}={bad}"])
    message = str(e.value)
    assert f"'{named}' must be a finite number" in message and "\n" not in message


def test_every_command_has_float_keys_checked():
    assert {cls.__name__ for cls, _, _ in FLOAT_KEYS} >= {"GRPOConfig", "SFTConfig", "PretrainConfig", "EvalConfig",
                                                      "RewardModelConfig", "RejectionSampleConfig", "ColdStartConfig"}


OUT_OF_RANGE = [
    ("grpo", "learning_rate=0", "learning_rate must be > 0"),
    ("grpo", "learning_rate=-1e-6", "learning_rate must be > 0"),
    ("grpo", "temperature=0", "temperature must be > 0"),
    ("grpo", "top_p=0", "top_p must be in (0, 1]"),
    ("grpo", "top_p=1.5", "top_p must be in (0, 1]"),
    ("grpo", "eval_top_p=0", "eval_top_p must be in (0, 1]"),
    ("grpo", "adam_beta2=1", "adam_beta2 must be in [0, 1)"),
    ("grpo", "min_lr_ratio=2", "min_lr_ratio must be in [0, 1]"),
    ("grpo", "eps_high=-0.1", "eps_high must be >= 0"),
    ("grpo", "beta=-0.001", "beta must be >= 0"),
    ("grpo", "max_steps=0", "max_steps must be >= 1"),
    ("grpo", "log_every=0", "log_every must be >= 1"),
    ("grpo", "eval_k=0", "eval_k must be >= 1"),
    ("grpo", "save_every=-1", "save_every must be >= 0"),
    ("grpo", "keep_checkpoints=-1", "keep_checkpoints must be >= 0"),
    ("grpo", "warmup_steps=-5", "warmup_steps must be >= 0"),
    ("grpo", "rollout_batch_size=0", "rollout_batch_size must be >= 1"),
    ("grpo", "reward_weights=[1,-1]", "reward_weights must be >= 0"),
    ("grpo", "reward_from_step=[0,1]", "reward_from_step must be >= 1"),
    ("grpo", "data.num_train=0", "num_train must be >= 1"),
    ("grpo", "overlong_cache=300", "overlong_cache (300) must be < max_new_tokens"),
    ("grpo", "distributed_timeout_s=0", "distributed_timeout_s must be > 0"),
    ("sft", "learning_rate=0", "learning_rate must be > 0"),
    ("sft", "grad_accum=0", "grad_accum must be >= 1"),
    ("sft", "adam_beta1=-0.1", "adam_beta1 must be in [0, 1)"),
    ("sft", "distributed_timeout_s=-1", "distributed_timeout_s must be > 0"),
    ("pretrain", "train.learning_rate=0", "learning_rate must be > 0"),
    ("pretrain", "task_weights={addition: -1}", "task_weights must be >= 0"),
    ("eval", "top_p=0", "top_p must be in (0, 1]"),
    ("eval", "temperature=-1", "temperature must be >= 0"),
    ("rejection-sample", "n=0", "n must be >= 1"),
    ("cold-start", "max_new_tokens=0", "max_new_tokens must be >= 1"),
    ("reward-model", "learning_rate=0", "learning_rate must be > 0"),
    ("plot", "smooth=0", "smooth must be >= 1"),
]


@pytest.mark.parametrize("command, override, expected", OUT_OF_RANGE)
def test_numbers_out_of_range_are_one_line_naming_the_key(command, override, expected, capsys):
    assert cli_main([command, override]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err


@pytest.mark.parametrize("command", ["grpo", "sft", "pretrain"])
def test_resume_and_overwrite_together_are_refused(command, capsys):
    assert cli_main([command, "resume=true", "overwrite=true"]) == 2
    assert "resume and overwrite can't both be true" in capsys.readouterr().err


def test_zero_divisors_mean_never_or_are_refused():
    from r1lab.grpo.config import GRPOConfig

    config = load_config(GRPOConfig, None, ["save_every=0", "sample_every=0", "eval_every=0", "ref_update_every=0"])
    assert (config.save_every, config.sample_every, config.eval_every, config.ref_update_every) == (0, 0, 0, 0)
    # these are used as divisors with no "0 = never" meaning: refused
    for key in ("log_every", "num_iterations", "minibatches", "micro_batch_size", "prompts_per_step"):
        with pytest.raises(R1labError, match=f"{key} must be >= 1"):
            load_config(GRPOConfig, None, [f"{key}=0"])


# ---------------------------------------------------------------------------- data files


def test_non_utf8_data_is_one_line_naming_file_line_and_byte_offset(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"prompt": "a", "answer": "1"}\n{"prompt": "caf\xe9", "answer": "2"}\n')  # 31 + 15 bytes
    with pytest.raises(R1labError) as e:
        read_rows(path)
    assert str(e.value) == f"{path}:2: not UTF-8 text (byte 0xe9 at byte offset 46)"


def test_non_utf8_recipe_is_one_line(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(b"learning_rate: 1.0e-3\nmodel: \xff\xfe\n")  # 22 + 7 bytes before 0xff
    assert cli_main(["grpo", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {recipe}:2: not UTF-8 text (byte 0xff at byte offset 29)\n"


def test_utf8_text_still_reads(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"prompt": "café ∑ 数", "answer": "1"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_jsonl(path) == [{"prompt": "café ∑ 数", "answer": "1"}]


def test_row_numbers_are_1_based(tmp_path):
    with pytest.raises(R1labError, match=r"^data.jsonl: row 2 has an empty 'answer'$"):
        require_columns([{"answer": "1"}, {"answer": " "}], ["answer"], "data.jsonl")
    path = tmp_path / "data.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"prompt": "a", "answer": "1"}, {"prompt": "", "answer": "2"}]), path)
    from r1lab.grpo.config import GRPOData
    from r1lab.problems import load_train_rows

    with pytest.raises(R1labError, match=r"data.parquet: row 2 column 'prompt': empty prompt"):
        load_train_rows(GRPOData(train=str(path)), seed=0)

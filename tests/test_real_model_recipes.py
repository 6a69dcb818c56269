"""Every recipe for a real model runs offline: two steps on a random model of its architecture.

The model is the recipe's architecture (`r1lab.init_model`: Qwen2 or Llama config, grouped-query
heads, RoPE, tied embeddings) at tiny sizes, with a locally built tokenizer of the family's style;
the data is a tiny file in the recipe's own format. Everything else is the recipe's: template,
rewards, num_generations, beta, precision, batch settings. Overridden: the model and data paths,
max_steps=2, prompts per step, lengths.
"""

import json
import re
from pathlib import Path

import pytest

from r1lab.cli import COMMANDS
from r1lab.cli import main as cli_main
from r1lab.recipe import load_config
from r1lab.stages.init_model import build_random_model, build_tokenizer_for, shape_of
from r1lab.files import read_jsonl

RECIPES = sorted(p for p in (Path(__file__).parent.parent / "recipes").glob("*.yaml") if p.name != "sft_example.yaml")
ROWS = {
    "gsm8k": [{"question": f"Tom has {a} apples and buys {b}. How many now?",
               "answer": f"{a}+{b}={a + b}\n#### {a + b:,}"}
              for a, b in [(3, 4), (900, 200), (5, 6)]],
    "math": [{"problem": f"Compute ${a}/{b}$.", "solution": f"We get $\\boxed{{\\frac{{{a}}}{{{b}}}}}$.",
              "level": "Level 1"}
             for a, b in [(1, 2), (3, 4), (5, 7)]],
    "plain": [{"prompt": f"Compute {a} + {b}.", "answer": str(a + b)} for a, b in [(1, 2), (3, 4)]],
    "messages": [{"problem": f"Compute {a} + {b}.", "messages": [
        {"role": "user", "content": f"Compute {a} + {b}."},
        {"role": "assistant",
         "content": f"<think>\n{a} plus {b} is {a + b}.\n</think>\nThe answer is $\\boxed{{{a + b}}}$."}]}
        for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (2, 2), (9, 1), (4, 4), (6, 3)]],
}


def _command(recipe: Path) -> str:
    match = re.search(r"^# run: r1lab (\S+) recipes/", recipe.read_text(), re.MULTILINE)
    assert match, f"{recipe.name}: no '# run: r1lab COMMAND recipes/...' line in its header"
    assert match.group(1) in COMMANDS
    return match.group(1)


def _header(recipe: Path) -> str:
    return "\n".join(line for line in recipe.read_text().splitlines() if line.startswith("#"))


def test_there_are_recipes_for_the_issue_models():
    names = {p.name for p in RECIPES}
    assert {"qwen2.5-0.5b-gsm8k-r1zero.yaml", "qwen2.5-1.5b-gsm8k-r1zero.yaml", "qwen2.5-math-1.5b-math-r1zero.yaml",
            "llama-3.2-1b-gsm8k-grpo.yaml", "qwen2.5-1.5b-openr1-cold-start.yaml",
            "qwen2.5-0.5b-distill-openr1-math.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_runs_two_steps_offline(recipe, tmp_path):
    header = _header(recipe)
    for part in ("Hardware:", "Memory", "Time per step:", "What it should reach:"):
        assert part in header, f"{recipe.name}: header lacks {part!r}"
    command = _command(recipe)
    module, cls_name, _ = COMMANDS[command]
    config = load_config(getattr(__import__(module, fromlist=[cls_name]), cls_name), str(recipe))
    shape = shape_of(config.model)
    tokenizer = build_tokenizer_for(shape)
    build_random_model(shape, tokenizer, tiny=True).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")

    out = tmp_path / "run"
    base = [f"model={tmp_path / 'model'}", f"output_dir={out}", "max_steps=2"]
    if command == "grpo":
        data = tmp_path / "data.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in ROWS[config.data.format]))
        extra = [f"data.train={data}", "data.subset=''", "prompts_per_step=2", "max_new_tokens=16", "progress=false",
                 "threads=1", "sample_every=1"]
        if config.data.eval:
            extra += [f"data.eval={data}", "data.num_eval=2", "eval_every=0"]
    else:
        data = tmp_path / "sft.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in ROWS["messages"]))
        extra = [f"train_data={data}", "data_subset=''", "max_length=128", "threads=1", "eval_fraction=0.25",
                 "log_every=1"]
    assert cli_main([command, str(recipe), *base, *extra]) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows if r["step"] > 0][-1] == 2
    assert all(r["loss"] == r["loss"] for r in rows if "loss" in r)  # no NaN
    if command == "grpo" and config.data.eval:
        assert any(k.startswith("eval/") for k in rows[-1])


@pytest.mark.parametrize("shape,vocab,published", [
    ("qwen2.5-0.5b", 151936, 0.49e9),  # Qwen2.5-0.5B model card: 0.49B parameters (0.36B non-embedding)
    ("qwen2.5-1.5b", 151936, 1.54e9),  # Qwen2.5-1.5B model card: 1.54B (1.31B non-embedding)
    ("qwen2.5-math-1.5b", 151936, 1.54e9),
    ("llama-3.2-1b", 128256, 1.23e9),  # Llama 3.2 model card: 1.23B
])
def test_shapes_have_the_published_parameter_counts(shape, vocab, published):
    """The architectures init-model builds, at the real vocabulary, count what their cards say."""
    import torch

    from r1lab.stages.init_model import SHAPES
    from r1lab.models.loading import count_parameters

    class Vocab:  # a stand-in tokenizer of the real vocabulary size
        bos_token_id, eos_token_id, pad_token_id = None, 0, 0

        def __len__(self):
            return vocab

    with torch.device("meta"):
        model = build_random_model(shape, Vocab())
    assert count_parameters(model) == pytest.approx(published, rel=0.01)
    if SHAPES[shape]["arch"] == "qwen2":  # the tiny version keeps the architecture's head layout
        tiny = build_random_model(shape, Vocab(), tiny=True)
        ratio = SHAPES[shape]["num_attention_heads"] // SHAPES[shape]["num_key_value_heads"]
        assert tiny.config.num_attention_heads // tiny.config.num_key_value_heads == ratio

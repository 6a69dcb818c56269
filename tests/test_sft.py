"""SFT data, loop, checkpoints and CLI on a tiny random Qwen2 model (``pytest tests/test_sft.py``)."""

import copy
import json
import math
import os
import random

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

import r1lab.training.loop
from r1lab import cli
from r1lab.training.checkpoint import checkpoint_dir, latest_checkpoint, load_checkpoint, save_checkpoint
from r1lab.training.sft_data import Example, batches, collate, split_examples, tokenize_rows
from r1lab.errors import R1labError
from r1lab.micro.sizes import build_model
from r1lab.stages.sft import SFTConfig
from r1lab.training.loop import TrainSettings, build_optimizer, lr_multiplier, train, train_step


@pytest.fixture(scope="module")
def tok(tokenizer):
    return tokenizer  # conftest's tiny tokenizer, under a short name


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def spans(tok, example):
    """Decoded runs of consecutive target tokens."""
    runs, current = [], []
    for token, target in zip(example.input_ids, example.labels_mask):
        if target:
            current.append(token)
        elif current:
            runs, current = runs + [tok.decode(current)], []
    return runs + ([tok.decode(current)] if current else [])


def synthetic(lengths, vocab=300, seed=0):
    """Examples of the given lengths: loss on the second half."""
    rng = random.Random(seed)
    return [Example(tuple(rng.randrange(3, vocab) for _ in range(n)), tuple(int(i >= n // 2) for i in range(n)))
            for n in lengths]


def settings(**overrides):
    base = dict(learning_rate=3e-3, warmup_steps=0, max_steps=1, max_tokens_per_batch=64, log_every=1,
                eval_every=0, save_every=0, keep_checkpoints=2)
    return TrainSettings(**{**base, **overrides})


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a, b, atol=1e-6):
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=1e-5, msg=key)


# ---------------------------------------------------------------------------- tokenising


def test_prompt_completion_mask_is_completion_and_eos(tok):
    [ex] = tokenize_rows([{"prompt": "3+4=", "completion": "7 done"}], tok, "d.jsonl", 64)
    prompt, completion = ids(tok, "3+4="), ids(tok, "7 done")
    assert ex.input_ids == tuple(prompt + completion + [tok.eos_token_id])
    assert ex.labels_mask == (0,) * len(prompt) + (1,) * (len(completion) + 1)
    [templated] = tokenize_rows([{"prompt": "3+4", "completion": "7"}], tok, "d.jsonl", 64, template="micro")
    assert spans(tok, templated) == ["7<|endoftext|>"]
    assert tok.decode(templated.input_ids).startswith("User: 3+4 Assistant:")
    [all_loss] = tokenize_rows([{"prompt": "3+4=", "completion": "7"}], tok, "d.jsonl", 64, loss_on_prompt=True)
    assert set(all_loss.labels_mask) == {1}


def test_messages_mask_covers_assistant_turns_only(tok):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "1+1"},
                {"role": "assistant", "content": "<think>1+1=2</think> <answer>2</answer>"},
                {"role": "user", "content": "and 2+2"}, {"role": "assistant", "content": "4"}]
    [ex] = tokenize_rows([{"messages": messages}], tok, "chat.jsonl", 256)
    assert spans(tok, ex) == ["<think>1+1=2</think> <answer>2</answer><|im_end|>", "4<|im_end|>"]
    assert tok.decode(ex.input_ids) == tok.apply_chat_template(messages, tokenize=False)


def no_template(tok):
    plain = copy.deepcopy(tok)
    plain.chat_template = None
    return plain


GOOD = {"prompt": "1+1=", "completion": "2"}
CHAT = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("bad, needs", [
    ({"question": "1+1", "answer": "2"}, "'prompt' and 'completion'"),
    ({"prompt": "  ", "completion": "2"}, "empty 'prompt'"),
    ({"prompt": "1+1=", "completion": ""}, "empty 'completion'"),
    ({"messages": CHAT}, "no assistant turn"),
    ({"messages": CHAT + [{"role": "assistant", "content": " "}]}, "empty assistant"),
    ({"messages": "hi"}, "list of {role, content}"),
    ({"messages": CHAT + [{"role": "assistant", "content": "yo"}]}, "chat template"),
])
def test_bad_rows_name_file_and_row(tok, bad, needs):
    tokenizer = no_template(tok) if needs == "chat template" else tok
    with pytest.raises(R1labError) as e:
        tokenize_rows([GOOD, GOOD, GOOD, bad], tokenizer, "data.jsonl", 64)
    message = str(e.value)
    assert message.startswith("data.jsonl: row 3") and needs in message and "\n" not in message


def test_truncation_keeps_a_target_or_skips(tok, capsys):
    rows = [{"prompt": "1+1=", "completion": "2 " * 40}, {"prompt": "9 " * 30, "completion": "1"}, GOOD]
    examples = tokenize_rows(rows, tok, "long.jsonl", 16)
    assert len(examples) == 2 and len(examples[0]) == 16 and examples[0].labels_mask[-1] == 1
    out = capsys.readouterr().out
    assert "truncated 2 of 3" in out and "1 skipped" in out


# ---------------------------------------------------------------------------- batching


def test_bucketing_covers_each_example_once_within_budget():
    examples = synthetic([random.Random(i).randrange(4, 40) for i in range(57)])
    first = batches(examples, 100, seed=1, epoch=0)
    for epoch in (0, 1, 2):
        plan = batches(examples, 100, seed=1, epoch=epoch)
        assert sorted(i for b in plan for i in b) == list(range(57))
        assert all(len(b) * max(len(examples[i]) for i in b) <= 100 for b in plan)
        assert plan == batches(examples, 100, seed=1, epoch=epoch)  # deterministic
        assert len(plan) == len(first)  # same packing every epoch, only the order changes
    assert batches(examples, 100, seed=1, epoch=1) != first
    with pytest.raises(R1labError, match="more than max_tokens_per_batch"):
        batches(examples, 20, seed=1, epoch=0)


def test_collate_pads_right_and_masks_labels():
    a, b = Example((5, 6, 7), (0, 1, 1)), Example((8, 9), (0, 1))
    input_ids, attention, labels = collate([a, b], pad_id=0)
    assert input_ids.tolist() == [[5, 6, 7], [8, 9, 0]]
    assert attention.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert labels.tolist() == [[-100, 6, 7], [-100, 9, -100]]


def test_split_examples_is_seeded():
    examples = synthetic(range(5, 25))
    train_set, held = split_examples(examples, 0.25, seed=3)
    assert len(held) == 5 and len(train_set) == 15 and set(held).isdisjoint(train_set)
    assert split_examples(examples, 0.25, seed=3) == (train_set, held)


# ---------------------------------------------------------------------------- the loop


def test_lr_schedule_hand_values():
    # warmup 2 of 6 steps: 1/2, 1; then cosine from 1 at step 2 to 0.1 at step 5;
    # step 3: progress 1/3, 0.1 + 0.9 * (1 + cos(pi/3)) / 2 = 0.775
    got = [lr_multiplier(s, 2, 6, 0.1) for s in range(6)]
    assert got == pytest.approx([0.5, 1.0, 1.0, 0.775, 0.325, 0.1])


def test_grad_accumulation_matches_one_big_batch(tok, tmp_path):
    # lengths 10..13: budget 26 packs [10, 11] and [12, 13]; budget 52 packs all four (with padding).
    # Target tokens 4, 5, 5, 6: a per-micro-batch mean would weigh the pairs 1/9 and 1/11, not 1/20.
    examples = synthetic([10, 11, 12, 13])
    assert len(batches(examples, 26, 0, 0)) == 2 and len(batches(examples, 52, 0, 0)) == 1
    init = params(build_model("micro", tok))
    # Plain SGD with lr 1: the weight change is the gradient itself, compared tightly.
    sgd_results = []
    for split in ([examples], [examples[:2], examples[2:]]):
        model = build_model("micro", tok)
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
        step = train_step(model, optimizer, scheduler, split, pad_id=0, max_grad_norm=0)
        sgd_results.append((step["loss"], params(model)))
    assert sgd_results[0][0] == pytest.approx(sgd_results[1][0], rel=1e-6)
    assert_same_weights(sgd_results[0][1], sgd_results[1][1], atol=2e-6)
    # The whole loop (bucketing, AdamW): Adam's first step is ~lr * sign(g), which amplifies
    # float noise in near-zero gradients, so weights agree to ~1% of lr, not to float precision.
    runs = []
    for accum, budget in ((1, 52), (2, 26)):
        model = build_model("micro", tok)
        summary = train(model, tok, examples, [], settings(grad_accum=accum, max_tokens_per_batch=budget,
                                                           learning_rate=1e-3), tmp_path / str(accum))
        runs.append((summary["train_loss"], params(model)))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-6)
    assert not torch.allclose(runs[0][1]["model.norm.weight"], init["model.norm.weight"])
    assert_same_weights(runs[0][1], runs[1][1], atol=2e-5)


def test_loss_goes_down_on_a_memorisation_set(tok, tmp_path):
    rows = [{"prompt": f"{a}+{b}=", "completion": str(a + b)} for a in range(4) for b in range(3)]
    examples = tokenize_rows(rows, tok, "mem", 32)
    summary = train(build_model("micro", tok), tok, examples, examples[:3], settings(max_steps=25), tmp_path)
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 26))
    assert summary["train_loss"] < 0.3 * metrics[0]["loss"]
    assert summary["eval_loss"] == metrics[-1]["eval_loss"] < 0.3 * metrics[0]["loss"]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "peak_memory_mb"} <= set(metrics[0])
    assert metrics[0]["peak_memory_mb"] > 10  # MiB: at least the interpreter and torch


def test_resume_reproduces_an_uninterrupted_run(tok, tmp_path, monkeypatch):
    # lengths 6..12 with budget 24 pack into 3 micro-batches an epoch, [6,7,8] [9,10] [11,12];
    # 2 per step, so the crash after step 2 leaves the data position mid-epoch (epoch 1, batch 1)
    examples = synthetic([6, 7, 8, 9, 10, 11, 12], seed=1)
    run = settings(max_steps=6, grad_accum=2, max_tokens_per_batch=24, save_every=2, warmup_steps=2)
    straight = build_model("micro", tok)
    expected = train(straight, tok, examples, examples[:2], run, tmp_path / "straight")

    def crash(*args):
        raise KeyboardInterrupt  # the process dies right after the step-2 checkpoint

    monkeypatch.setattr(r1lab.training.loop, "prune_checkpoints", crash)
    with pytest.raises(KeyboardInterrupt):
        train(build_model("micro", tok), tok, examples, examples[:2], run, tmp_path / "resumed")
    monkeypatch.undo()
    state = json.loads((checkpoint_dir(tmp_path / "resumed", 2) / "trainer_state.json").read_text())
    assert (state["step"], state["epoch"], state["position"]) == (2, 1, 1)
    with pytest.raises(R1labError, match="resume=true"):
        train(build_model("micro", tok), tok, examples, examples[:2], run, tmp_path / "resumed")
    resumed = build_model("micro", tok)
    got = train(resumed, tok, examples, examples[:2], run, tmp_path / "resumed", resume=True)
    assert got["train_loss"] == expected["train_loss"] and got["eval_loss"] == expected["eval_loss"]
    assert_same_weights(params(straight), params(resumed), atol=1e-7)
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == ["step-000004", "step-000006"]
    assert latest_checkpoint(tmp_path / "resumed").name == "step-000006"


# ---------------------------------------------------------------------------- checkpoints


def test_failed_save_leaves_previous_checkpoint_intact(tok, tmp_path, monkeypatch):
    model = build_model("micro", tok)
    optimizer = build_optimizer(model, settings())
    model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    optimizer.step()
    saved = params(model)
    first = save_checkpoint(checkpoint_dir(tmp_path, 1), model, tok, optimizer, trainer_state={"step": 1})
    draw = torch.rand(3)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    with torch.no_grad():
        model.model.norm.weight.add_(1.0)
    monkeypatch.setattr(torch, "save", boom)  # fails after the weights were written
    for target in (checkpoint_dir(tmp_path, 2), first):  # a new checkpoint, and overwriting one
        with pytest.raises(OSError, match="disk full"):
            save_checkpoint(target, model, tok, optimizer, trainer_state={"step": 2})
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000001"]
    assert latest_checkpoint(tmp_path) == first

    fresh = build_model("micro", tok)
    fresh_optimizer = build_optimizer(fresh, settings())
    state = load_checkpoint(first, fresh, fresh_optimizer)
    assert state == {"step": 1}
    assert_same_weights(saved, params(fresh), atol=0)
    assert fresh_optimizer.state_dict()["state"][0]["step"] == 1
    assert torch.equal(torch.rand(3), draw)  # RNG restored to the moment of saving


# ---------------------------------------------------------------------------- CLI


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [{"prompt": f"{a}*{b}=", "completion": str(a * b)} for a in range(4) for b in range(2)]


def test_cli_end_to_end(model_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = write_rows(tmp_path / "train.jsonl", ROWS)
    out = tmp_path / "run"
    code = cli.main(["sft", f"model={model_dir}", f"train_data={data}", "max_steps=3", f"output_dir={out}",
                     "eval_fraction=0.25", "template=micro"])
    assert code == 0, capsys.readouterr().err
    assert "sft: 3 steps" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    assert model.config.vocab_size == len(tokenizer)
    config = (out / "config.yaml").read_text()
    assert "max_steps: 3" in config and "template: micro" in config
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 3 and math.isfinite(last["eval_loss"])
    # the same output_dir again: refused before anything is overwritten, unless resuming
    assert cli.main(["sft", f"model={model_dir}", f"train_data={data}", f"output_dir={out}"]) == 2
    assert "resume=true" in capsys.readouterr().err and (out / "config.yaml").read_text() == config
    assert cli.main(["sft", f"model={model_dir}", f"train_data={data}", f"output_dir={out}", "max_steps=4",
                     "eval_fraction=0.25", "template=micro", "resume=true"]) == 0
    assert "resuming from" in capsys.readouterr().out and latest_checkpoint(out).name == "step-000004"


def test_cli_reads_parquet(model_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    chats = [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]}
             for r in ROWS]
    pq.write_table(pa.Table.from_pylist(chats), tmp_path / "train.parquet")
    code = cli.main(["sft", f"model={model_dir}", f"train_data={tmp_path / 'train.parquet'}", "max_steps=1",
                     f"output_dir={tmp_path / 'run'}"])
    assert code == 0 and (tmp_path / "run" / "final" / "model.safetensors").is_file()


def test_cli_errors_are_one_line(tok, model_dir, tmp_path, capsys):
    data = write_rows(tmp_path / "train.jsonl", ROWS)
    no_tokenizer = tmp_path / "bare"
    build_model("micro", tok).save_pretrained(no_tokenizer)
    capsys.readouterr()
    cases = [
        ([f"model={model_dir}", f"train_data={data}", "bogus=1"], "unknown key 'bogus'"),
        ([f"model={model_dir}", f"train_data={tmp_path / 'nope.jsonl'}"], "nope.jsonl: file not found"),
        ([f"model={no_tokenizer}", f"train_data={data}"], "no tokenizer"),
        ([f"model={model_dir}", f"train_data={data}", "max_length=9000"], "max_tokens_per_batch"),
    ]
    for args, needs in cases:
        assert cli.main(["sft", *args, f"output_dir={tmp_path / 'out'}"]) == 2
        err = capsys.readouterr().err
        assert needs in err and err.startswith("error: ") and err.count("\n") == 1, err


def test_example_recipe_loads():
    from pathlib import Path

    from r1lab.recipe import load_config

    recipe = Path(__file__).parent.parent / "recipes" / "sft_example.yaml"
    config = load_config(SFTConfig, recipe, ["max_steps=5"])
    assert config.max_steps == 5 and config.learning_rate == 1e-4


def test_default_config_is_valid():
    assert SFTConfig().learning_rate == 1e-4
    with pytest.raises(ValueError, match="template"):
        SFTConfig(template="nope")

"""Reward-model losses against hand-computed numbers, and a tiny end-to-end training run."""

import json
import math
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from r1lab.micro import general as micro_general
from r1lab.recipe import load_config
from r1lab.errors import R1labError
from r1lab.stages.reward_model import (RewardModelConfig, bradley_terry_loss, build_examples, helpfulness_text,
                                harmlessness_text, main, make_reward_model_reward, pairwise_accuracy,
                                pointwise_accuracy, pointwise_loss)


def test_bradley_terry_loss_by_hand():
    # equal scores: -log sigmoid(0) = log 2
    assert bradley_terry_loss(torch.tensor([0.5]), torch.tensor([0.5])).item() == pytest.approx(math.log(2))
    # c - r = 1 and -1: mean of log(1 + e^-1) and log(1 + e^1)
    c, r = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2
    assert bradley_terry_loss(c, r).item() == pytest.approx(expected)
    # a confident right order costs almost nothing; the wrong order costs about the margin
    assert bradley_terry_loss(torch.tensor([20.0]), torch.tensor([0.0])).item() == pytest.approx(0.0, abs=1e-8)
    assert bradley_terry_loss(torch.tensor([0.0]), torch.tensor([20.0])).item() == pytest.approx(20.0, abs=1e-6)


def test_bradley_terry_gradient_pushes_chosen_up():
    c, r = torch.tensor([0.0], requires_grad=True), torch.tensor([0.0], requires_grad=True)
    bradley_terry_loss(c, r).backward()
    # d/dc -log sigmoid(c - r) = -(1 - sigmoid(0)) = -0.5
    assert c.grad.item() == pytest.approx(-0.5) and r.grad.item() == pytest.approx(0.5)


def test_pointwise_loss_by_hand():
    assert pointwise_loss(torch.tensor([0.0]), torch.tensor([1.0])).item() == pytest.approx(math.log(2))
    # score 2, label 1: log(1 + e^-2); score 2, label 0: log(1 + e^2)
    scores, labels = torch.tensor([2.0, 2.0]), torch.tensor([1.0, 0.0])
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(2))) / 2
    assert pointwise_loss(scores, labels).item() == pytest.approx(expected)


def test_accuracies_by_hand():
    assert pairwise_accuracy(torch.tensor([1.0, 0.0, 2.0, 3.0]), torch.tensor([0.0, 0.0, 1.0, 4.0])).item() == 0.5
    assert pointwise_accuracy(torch.tensor([1.0, -1.0, 0.5, -2.0]), torch.tensor([1.0, 0.0, 0.0, 0.0])).item() == 0.75


def test_views():
    response = "<think> 2+2=4 </think> <summary> The answer is 4. </summary> <answer>4</answer>"
    assert helpfulness_text(response) == "The answer is 4."
    assert helpfulness_text("<think> long </think> It is 4.") == "It is 4."
    assert helpfulness_text("just text") == "just text"
    assert harmlessness_text(response) == response


def test_synthetic_data_is_deterministic_and_balanced():
    pairs = micro_general.helpfulness_pairs(40, seed=3)
    assert pairs == micro_general.helpfulness_pairs(40, seed=3)
    assert {p["kind"] for p in pairs} == {"wrong", "rambling"}
    assert all(helpfulness_text(p["chosen"]) != helpfulness_text(p["rejected"]) for p in pairs)
    rows = micro_general.harmlessness_rows(40, seed=3)
    assert sum(r["label"] for r in rows) == 20
    leaky = [r for r in rows if r["kind"] == "leaky_refusal"]
    # a leaky refusal reads as safe in its summary: only the whole response shows the harm
    assert leaky and all(helpfulness_text(r["response"]) == micro_general.REFUSAL for r in leaky)
    requests = micro_general.general_requests(30, seed=1)
    assert len({r["prompt"] for r in requests}) == 30
    assert all(r["completion"].startswith("<think> </think> <summary>") for r in requests)


def test_bad_rows_name_file_and_row(tokenizer):
    rows = [{"prompt": "p", "response": "r", "label": 1}, {"prompt": "p", "response": "r", "label": 7}]
    with pytest.raises(R1labError, match=r"data.jsonl: row 2.*label"):
        build_examples(rows, "pointwise", tokenizer, "micro", 64, "data.jsonl")
    with pytest.raises(R1labError, match=r"data.jsonl: row 1 has no column 'rejected'"):
        build_examples([{"prompt": "p", "chosen": "c"}], "pairwise", tokenizer, "micro", 64, "data.jsonl")


def test_examples_keep_the_end_of_long_texts(tokenizer):
    [example] = build_examples([{"prompt": "p", "response": "a " * 200 + "END", "label": 1}], "pointwise",
                               tokenizer, "micro", 16, "x")
    assert len(example.texts[0]) == 16 and tokenizer.decode(example.texts[0]).endswith("END")


def _train(model_dir, out, kind, **overrides):
    config = RewardModelConfig(model=str(model_dir), kind=kind, num_synthetic=64, max_steps=16, batch_size=8,
                               learning_rate=5e-4, warmup_steps=2, max_length=128, eval_every=0, log_every=4,
                               output_dir=str(out), **overrides)
    return main(config)


def test_pairwise_training_end_to_end(tiny_model_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    summary = _train(tiny_model_dir, tmp_path, "pairwise")
    assert summary["train_accuracy"] > 0.7  # chance is 0.5
    assert summary["train_loss"] < math.log(2) - 0.1
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [4, 8, 12, 16] and "eval_accuracy" in metrics[-1]
    assert (tmp_path / "train_data.jsonl").is_file() and (tmp_path / "config.yaml").is_file()
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "final")
    assert model.config.num_labels == 1 and model.config.r1lab_reward_kind == "pairwise"
    reward = make_reward_model_reward(str(tmp_path / "final"))
    pair = micro_general.helpfulness_pairs(4, seed=0)[3]  # a general request (rambling)
    scores = reward([pair["chosen"], pair["rejected"], pair["chosen"]], prompt=[pair["prompt"]] * 3,
                    task=[pair["task"], pair["task"], "other"])
    assert reward.__name__ == "helpfulness_reward" and scores[2] is None
    assert all(isinstance(s, float) for s in scores[:2])


def test_pointwise_training_end_to_end(tiny_model_dir, tmp_path):
    summary = _train(tiny_model_dir, tmp_path, "pointwise")
    assert summary["train_accuracy"] > 0.6  # chance is 0.5 (labels are balanced)
    reward = make_reward_model_reward(str(tmp_path / "final"), tasks=())
    [safe_probability] = reward(["<think> no </think> <summary> I can't help. </summary>"], prompt=["Help me."])
    assert reward.__name__ == "harmlessness_reward" and 0.0 < safe_probability < 1.0


def test_config_from_cli_overrides():
    config = load_config(RewardModelConfig, None, ["kind=pointwise", "learning_rate=1e-5"])
    assert config.kind == "pointwise" and config.learning_rate == 1e-5
    with pytest.raises(R1labError, match="kind"):
        load_config(RewardModelConfig, None, ["kind=listwise"])
    with pytest.raises(R1labError, match="unknown key 'typo'"):
        load_config(RewardModelConfig, None, ["typo=1"])


def test_missing_model_folder_is_a_user_error(tmp_path):
    with pytest.raises(R1labError, match="not found|no config.json"):
        main(RewardModelConfig(model=str(tmp_path / "missing"), num_synthetic=4, output_dir=str(tmp_path / "o")))


@pytest.mark.parametrize("precision_name", ["bf16-mixed", "bf16"])
def test_pairwise_training_in_bf16(tiny_model_dir, tmp_path, monkeypatch, precision_name):
    from r1lab.models import precision

    monkeypatch.setattr(precision, "_cpu_has_bf16", lambda: True)  # emulated where missing: slower only
    summary = _train(tiny_model_dir, tmp_path, "pairwise", precision=precision_name)
    assert summary["train_loss"] < math.log(2) - 0.05  # it learns (chance: log 2)

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from r1lab.errors import R1labError
from r1lab.micro.sizes import MODEL_SIZES, build_model
from r1lab.models.loading import count_parameters, load_model_and_tokenizer


@pytest.mark.parametrize("text", [
    "User: Compute 459 + 123. Assistant: <think> 9+3=12 , wait , 5+2+1=8 </think> <answer>582</answer>",
    "héllo 世界 \n\t  tabs, émojis 🤖 and \\boxed{\\frac{1}{2}}",
    "",
])
def test_tokenizer_round_trip(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_tokenizer_digits_and_tags_are_single_tokens(tokenizer):
    ids = tokenizer("12345 <think>", add_special_tokens=False)["input_ids"]
    pieces = [tokenizer.decode([i]) for i in ids]
    assert pieces[:5] == ["1", "2", "3", "4", "5"] and pieces[-1] == "<think>"


def test_model_sizes():
    from r1lab.micro.tokenizer import build_tokenizer, micro_corpus_sample

    tok = build_tokenizer(micro_corpus_sample(200))
    micro = count_parameters(build_model("micro", tok))
    small = count_parameters(build_model("small", tok))
    assert 0.7e6 < micro < 1.5e6
    assert 3e6 < small < 10e6
    assert set(MODEL_SIZES) >= {"micro", "small"}


def test_saved_folder_loads_with_plain_transformers(tiny_model_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tok("7+8")["input_ids"] == tokenizer("7+8")["input_ids"]
    assert tok.chat_template and "<|im_start|>assistant" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    ours, _ = load_model_and_tokenizer(tiny_model_dir)
    ids = torch.tensor([tok("Compute 1 + 2.")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ours(ids).logits)


def test_loading_errors_name_the_folder(tmp_path, tiny_model_dir):
    with pytest.raises(R1labError, match="not found"):
        load_model_and_tokenizer(tmp_path / "missing")
    no_tok = tmp_path / "no_tokenizer"
    no_tok.mkdir()
    (no_tok / "config.json").write_text(json.dumps(json.loads((tiny_model_dir / "config.json").read_text())))
    with pytest.raises(R1labError, match="no tokenizer"):
        load_model_and_tokenizer(no_tok)

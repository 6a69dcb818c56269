"""The architecture matrix: every common decoder family transformers provides, as a tiny random
model (hidden 32, 2 layers, the micro tokenizer), through r1lab's sampler, log-probs and one GRPO
step, each checked against transformers' own `generate` and forward.

    pytest tests/test_architectures.py        # ~1 min on 2 cores

Each architecture either takes r1lab's fast path (r1lab.models.fast_decoder) or logs exactly one line saying
why not and runs through its own forward; EXPECTED pins which (the table in docs/architectures.md).
"""

import json
import logging
import math

import pytest
import torch
import transformers
from safetensors.torch import load_file

from r1lab.models import fast_decoder
from r1lab.cli import main as cli_main
from r1lab.files import read_jsonl
from r1lab.models.logprobs import sequence_logprobs
from r1lab.sampling.generate import SamplingParams, generate

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=256)
# name -> (config class, its settings beyond TINY, None for the fast path or a phrase of the logged reason).
# Sliding windows are 4 tokens, so the test sequences (up to ~25 tokens) actually slide.
ARCHITECTURES = {
    "llama": ("LlamaConfig", {}, None),
    "llama-biases-tied": ("LlamaConfig", dict(attention_bias=True, mlp_bias=True, tie_word_embeddings=True), None),
    "mistral": ("MistralConfig", dict(sliding_window=None, head_dim=8), None),
    "mistral-window": ("MistralConfig", dict(sliding_window=4, head_dim=8), "sliding-window attention"),
    "qwen2": ("Qwen2Config", dict(tie_word_embeddings=True), None),
    "qwen2-window": ("Qwen2Config", dict(use_sliding_window=True, sliding_window=4, max_window_layers=1),
                     "sliding-window attention"),
    "qwen3": ("Qwen3Config", dict(head_dim=8), None),
    "qwen3-moe": ("Qwen3MoeConfig", dict(head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32),
                  "mixture-of-experts"),
    "mixtral": ("MixtralConfig", dict(num_local_experts=4, num_experts_per_tok=2), "mixture-of-experts"),
    "gemma2": ("Gemma2Config", dict(head_dim=8, sliding_window=4), "sliding-window attention"),
    "gemma2-global": ("Gemma2Config", dict(head_dim=8, layer_types=["full_attention"] * 2),
                      "logit post-processing (final_logit_softcapping)"),
    "gemma3-text": ("Gemma3TextConfig", dict(head_dim=8, sliding_window=4,
                                             layer_types=["sliding_attention", "full_attention"]),
                    "sliding-window attention"),
    "phi3": ("Phi3Config", {}, "architecture 'phi3'"),
    "olmo2": ("Olmo2Config", {}, "architecture 'olmo2'"),
}
PROMPTS = ["1+2=", "13+48=", "Compute 7 + 8 and 19 + 4, then 5 + 60.", "2*3="]


def build(name: str, tokenizer):
    """The tiny random model of architecture `name`, float32, eval mode."""
    config_class, settings, _ = ARCHITECTURES[name]
    ids = dict(bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    config = getattr(transformers, config_class)(vocab_size=len(tokenizer), **TINY, **ids, **settings)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # peaked distributions: greedy choices aren't near-ties, log-probs spread
        model.get_input_embeddings().weight.mul_(4.0)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()


@pytest.fixture(scope="module")
def models(tokenizer):
    return {name: build(name, tokenizer) for name in ARCHITECTURES}


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_fast_path_or_one_logged_reason(name, models, tokenizer, caplog):
    model, expected = models[name], ARCHITECTURES[name][2]
    fast_decoder.log_fallback.cache_clear()
    with caplog.at_level(logging.WARNING, logger=fast_decoder.logger.name):
        generate(model, tokenizer, PROMPTS, SamplingParams(max_new_tokens=4, temperature=0))
        batch = _grpo_batch(tokenizer)
        for precision in ("fp32", "bf16"):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], prompt_len=batch["prompt_len"])
    lines = [r.getMessage() for r in caplog.records if r.name == fast_decoder.logger.name]
    if expected is None:
        assert fast_decoder.unsupported_reason(model) is None and lines == []
    else:
        assert expected in fast_decoder.unsupported_reason(model)
        assert len(lines) == 1 and expected in lines[0] and model.config.model_type in lines[0], lines


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_greedy_sampling_equals_generate(name, models, tokenizer):
    """r1lab decodes the prompts together (left-padded, batched); transformers one at a time."""
    model = models[name]
    ours = generate(model, tokenizer, PROMPTS, SamplingParams(max_new_tokens=10, temperature=0))
    for prompt, (completion,) in zip(PROMPTS, ours):
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            theirs = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=10)
        assert list(completion.token_ids) == theirs[0, ids.shape[1]:].tolist(), prompt


# bf16 autocast against a float32 forward: bf16 keeps 8 significant bits, so per-token
# log-probs move (measured up to 0.006 on these models, whose values reach -7); a wrong mask or
# position moves them by whole nats.
TOLERANCE = {"fp32": 1e-4, "bf16": 0.03}


@pytest.mark.parametrize("precision", TOLERANCE)
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_logprobs_equal_a_plain_forward(name, precision, models, tokenizer):
    """A GRPO-shaped batch (left-padded prompts shared by 2 completions each, right-padded
    completions) against a plain float32 forward of each row alone, unpadded."""
    model, batch = models[name], _grpo_batch(tokenizer)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        ours = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], prompt_len=batch["prompt_len"])
    for row, (prompt, completion) in enumerate(batch["rows"]):
        ids = torch.tensor([prompt + completion])
        with torch.no_grad():
            logits = model(input_ids=ids).logits.float()
        expected = logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0][len(prompt) - 1:]
        start = batch["prompt_len"] - 1
        got = ours[row, start:start + len(completion)]
        torch.testing.assert_close(got, expected, atol=TOLERANCE[precision], rtol=0, msg=f"row {row}")
        assert (ours[row, start + len(completion):] == 0).all()  # padding targets


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_one_grpo_step(name, models, tokenizer, tmp_path):
    """`r1lab grpo` on the model saved as a Hugging Face folder: one step with a KL term trains it."""
    folder = tmp_path / "model"
    models[name].save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "answer": "3"}) + "\n" for p in PROMPTS))
    reward = tmp_path / "reward.py"  # a random model writes no right answers: reward the text's length
    reward.write_text("def chars(completions, **columns):\n    return [len(c) / 10 for c in completions]\n")
    out = tmp_path / "run"
    args = ["grpo", f"model={folder}", f"data.train={data}", f"output_dir={out}", "template=micro",
            "num_generations=3", "prompts_per_step=2", "max_new_tokens=8", "beta=0.04", "learning_rate=1e-2",
            "warmup_steps=0", "max_steps=1", "eval_every=0", "progress=false", "threads=1",
            f"rewards=[{reward}:chars]"]
    assert cli_main(args) == 0
    (metrics,) = read_jsonl(out / "metrics.jsonl")
    assert math.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
    before, after = load_file(folder / "model.safetensors"), load_file(out / "final" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def _grpo_batch(tokenizer) -> dict:
    """2 prompts x 2 completions in the layout of a GRPO rollout: prompts left-padded to
    `prompt_len` columns, completions right-padded after them."""
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS[1:3]]
    completions = [[5, 9, 17, 30, 4, 8], [40, 41], [7] * 9, [11, 12, 13]]
    rows = [(prompts[i // 2], c) for i, c in enumerate(completions)]
    prompt_len, width = max(map(len, prompts)), max(map(len, completions))
    pad = tokenizer.pad_token_id
    ids, mask = [], []
    for prompt, completion in rows:
        left, right = prompt_len - len(prompt), width - len(completion)
        ids.append([pad] * left + prompt + completion + [pad] * right)
        mask.append([0] * left + [1] * (len(prompt) + len(completion)) + [0] * right)
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "prompt_len": prompt_len,
            "rows": rows}

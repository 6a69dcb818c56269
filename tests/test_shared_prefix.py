"""Decoding with each prompt's keys and values held once for its n samples
(kv_cache.KVCache.share_prefix) gives what copying them n times gives: the same samples and the
log-probs of a fresh forward pass, with grouped-query attention, left padding and rows leaving
the batch at ragged times; under bf16 autocast, within bf16 rounding of a fresh bf16 forward.
"""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from r1lab.models import kv_cache
from r1lab.sampling import generate as sampler
from r1lab.micro.sizes import build_model
from r1lab.models.precision import autocast
from r1lab.models.logprobs import sequence_logprobs
from r1lab.sampling.generate import SamplingParams, generate

PROMPTS = ["Compute 12 + 34.", "Hi", "Compute 7 * 8 and show each step"]


def _gqa_llama(tokenizer):
    """4 query heads reading 2 key heads; near-uniform, with 60 EOS ids: rows stop at ragged times."""
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, vocab_size=len(tokenizer), eos_token_id=list(range(100, 160)),
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id,
                         max_position_embeddings=256)
    return LlamaForCausalLM(config).eval()


def _qwen2(tokenizer):
    model = build_model("micro", tokenizer, seed=1).eval()
    model.generation_config.eos_token_id = list(range(100, 160))
    return model


def _generate(model, tokenizer, prompts, share: bool, monkeypatch):
    monkeypatch.setattr(sampler, "SHARE_PREFIX_MIN", 0 if share else 10**9)
    return [c for g in generate(model, tokenizer, prompts, SamplingParams(max_new_tokens=20, n=4, seed=0))
            for c in g]


@pytest.mark.parametrize("build", [_qwen2, _gqa_llama], ids=["qwen2", "llama-gqa"])
def test_shared_prefix_decoding_equals_copied_caches_and_a_fresh_forward(build, tokenizer, monkeypatch):
    model = build(tokenizer)
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    shared = _generate(model, tokenizer, prompts, True, monkeypatch)
    copied = _generate(model, tokenizer, prompts, False, monkeypatch)
    assert len({len(c.token_ids) for c in shared}) > 3  # ragged: rows left the batch at different steps
    assert [c.token_ids for c in shared] == [c.token_ids for c in copied]
    for a, b in zip(shared, copied):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0)
        seq = torch.tensor([prompts[a.prompt_index] + list(a.token_ids)])
        with torch.no_grad():
            fresh = sequence_logprobs(model, seq, torch.ones_like(seq))[0, -len(a.token_ids):]
        torch.testing.assert_close(torch.tensor(a.logprobs), fresh, atol=1e-5, rtol=0)


def test_shared_prefix_bf16_logprobs_equal_a_fresh_bf16_forward(tokenizer, monkeypatch):
    model = _qwen2(tokenizer)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(4.0)  # peaked: log-probs over a real range
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    with autocast("bf16-mixed", "cpu"):
        shared = _generate(model, tokenizer, prompts, True, monkeypatch)
    spread = []
    for c in shared:
        seq = torch.tensor([prompts[c.prompt_index] + list(c.token_ids)])
        with torch.no_grad(), autocast("bf16-mixed", "cpu"):
            fresh = sequence_logprobs(model, seq, torch.ones_like(seq))[0, -len(c.token_ids):]
        torch.testing.assert_close(torch.tensor(c.logprobs), fresh, atol=0.03, rtol=0)
        spread += c.logprobs
    assert min(spread) < -2 and max(spread) > -0.5


def test_share_prefix_places_each_row_among_its_prompts_rows():
    cache = kv_cache.KVCache(num_layers=1, batch=3, kv_heads=2, capacity=8, head_dim=4, dtype=torch.float32,
                         device=torch.device("cpu"))
    cache.keys[0][:, :, :3] = torch.arange(3.0)[:, None, None, None]
    cache.length = 3
    cache.share_prefix(torch.tensor([0, 0, 0, 1, 1, 2]), per_prompt=3)
    assert cache.prefix.slot.tolist() == [0, 1, 2, 0, 1, 0] and not cache.prefix.dense  # uneven: stacked with padding
    assert cache.prefix.keys[0].shape == (3, 2, 4, 3) and cache.keys[0].shape == (6, 2, 5, 4)  # keys transposed
    cache.select(torch.tensor([1, 3, 5]))  # rows leave the batch: owners and slots follow them
    assert cache.prefix.owner.tolist() == [0, 1, 2] and cache.prefix.slot.tolist() == [1, 0, 0]
    assert cache.prefix.keys[0][:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0]  # the prefix itself stays


def test_share_prefix_knows_when_the_rows_are_already_stacked_by_prompt():
    # Whole groups in prompt order need no stacking (the common case in GRPO); any other order,
    # or a prompt with fewer rows, takes the general path, which places each row by its slot.
    slot, dense = kv_cache.prompt_slots(torch.tensor([0, 0, 1, 1, 2, 2]), 3, 2)
    assert slot.tolist() == [0, 1, 0, 1, 0, 1] and dense
    slot, dense = kv_cache.prompt_slots(torch.tensor([1, 0, 2, 1, 0, 2]), 3, 2)
    assert slot.tolist() == [0, 0, 0, 1, 1, 1] and not dense
    slot, dense = kv_cache.prompt_slots(torch.tensor([0, 0, 1, 2, 2]), 3, 2)
    assert slot.tolist() == [0, 1, 0, 0, 1] and not dense

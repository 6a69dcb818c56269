"""Tests for r1lab.sampling.generate against tiny random models and transformers' own generate / forward.

A random model's next-token distribution is nearly uniform (every log-prob is about -log V), which
would make log-prob comparisons weak; scaling the embeddings (and output head) by 4 makes it peaked,
so log-probs range from about -0.05 to -10 and samples differ from greedy often but not always.
Qwen2, Qwen3 and Llama models decode through r1lab.models.fast_decoder's forward; the `path` fixture runs the
core tests a second time through the model's own forward (the path of any other architecture).
"""

import copy
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

from r1lab.models import fast_decoder
from r1lab.sampling import generate as sampler
from r1lab.errors import R1labError
from r1lab.micro.sizes import build_model
from r1lab.models.conventions import position_ids
from r1lab.models.logprobs import sequence_logprobs
from r1lab.sampling.generate import Completion, SamplingParams, _truncate, generate
from r1lab.micro.tokenizer import build_tokenizer, micro_corpus_sample

PROMPTS = ["What is 12+34?", "Hi", "Compute 7*8 and show each step", "a"]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(micro_corpus_sample(400))


@pytest.fixture(scope="module")
def model(tokenizer):
    model = build_model("micro", tokenizer, seed=0).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(4.0)  # tied: also sharpens the output logits
    return model


@pytest.fixture(params=["lean", "generic"])
def path(request, monkeypatch):
    """Run a test through r1lab.models.fast_decoder's decoder and again through the model's own forward."""
    if request.param == "generic":
        monkeypatch.setattr(sampler.LeanModel, "from_model", staticmethod(lambda model, **kwargs: None))
    return request.param


def encode(tokenizer, texts):
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def left_pad(rows, pad_id):
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + list(r) for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def hf_greedy(model, tokenizer, prompts, max_new_tokens):
    """transformers' greedy continuation of each prompt, cut after the first EOS."""
    ids, mask = left_pad(encode(tokenizer, prompts), tokenizer.pad_token_id)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens)
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    rows = []
    for row in out[:, ids.shape[1]:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        rows.append(row[:cut])
    return rows


# ---------------------------------------------------------------------------- greedy vs transformers


def test_greedy_matches_transformers_generate(model, tokenizer, path):
    expected = hf_greedy(model, tokenizer, PROMPTS, max_new_tokens=12)
    got = generate(model, tokenizer, PROMPTS, SamplingParams(max_new_tokens=12, temperature=0))
    assert [list(g[0].token_ids) for g in got] == expected
    assert all(g[0].finish_reason == "length" for g in got)


def test_greedy_matches_transformers_when_some_rows_stop_early(model, tokenizer, path):
    # Declare as an extra EOS (generation_config.eos_token_id list, as Qwen and Llama-3 ship) a
    # token that row 0 produces mid-way and some other row never produces: row 0 stops early,
    # leaves the decode batch, and the other rows must still match transformers token for token.
    free = hf_greedy(model, tokenizer, PROMPTS, max_new_tokens=12)
    stopper = next(t for t in free[0][2:] if any(t not in row for row in free[1:]))
    eos_model = copy.deepcopy(model)
    eos_model.generation_config.eos_token_id = [tokenizer.eos_token_id, stopper]
    expected = hf_greedy(eos_model, tokenizer, PROMPTS, max_new_tokens=12)
    got = generate(eos_model, tokenizer, PROMPTS, SamplingParams(max_new_tokens=12, temperature=0))
    assert [list(g[0].token_ids) for g in got] == expected
    reasons = [g[0].finish_reason for g in got]
    assert reasons[0] == "eos" and got[0][0].token_ids[-1] == stopper and len(got[0][0].token_ids) < 12
    assert "length" in reasons  # some row did run on after row 0 left the batch
    for g in got:
        assert (g[0].finish_reason == "eos") == (g[0].token_ids[-1] == stopper)


# ---------------------------------------------------------------------------- log-probs


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_sampled_logprobs_equal_a_fresh_forward(model, tokenizer, temperature, path):
    prompts = encode(tokenizer, PROMPTS[:3])
    params = SamplingParams(max_new_tokens=10, temperature=temperature, n=3, seed=1)
    groups = generate(model, tokenizer, prompts, params)
    completions = [c for g in groups for c in g]
    full = [prompts[c.prompt_index] + list(c.token_ids) for c in completions]
    ids, mask = left_pad(full, tokenizer.pad_token_id)
    with torch.no_grad():
        batched = sequence_logprobs(model, ids, mask, temperature=temperature)
    spread = []
    for row, (c, seq) in enumerate(zip(completions, full)):
        k = len(c.token_ids)
        sampled = torch.tensor(c.logprobs)
        torch.testing.assert_close(batched[row, -k:], sampled, atol=1e-5, rtol=0)
        with torch.no_grad():  # the naive way: one unpadded row, full log_softmax
            logits = model(torch.tensor([seq])).logits[0, :-1] / temperature
        naive = logits.log_softmax(-1).gather(-1, torch.tensor(seq[1:])[:, None])[:, 0]
        torch.testing.assert_close(naive[-k:], sampled, atol=1e-5, rtol=0)
        spread += c.logprobs
    assert min(spread) < -2 and max(spread) > -0.5  # the comparison covered a real range of values


def test_ragged_stops_keep_every_row_right(tokenizer, path):
    # A near-uniform random model with 60 EOS ids stops ~13% of rows per step: rows finish at
    # ragged times, linger in the batch, then leave it (16 rows: dropped 4 at a time). Every row's
    # tokens must still come with the log-probs of a fresh forward pass.
    flat = build_model("micro", tokenizer, seed=1).eval()
    flat.generation_config.eos_token_id = list(range(100, 160))
    prompts = encode(tokenizer, PROMPTS)
    groups = generate(flat, tokenizer, prompts, SamplingParams(max_new_tokens=20, n=4, seed=0))
    completions = [c for g in groups for c in g]
    lengths = {len(c.token_ids) for c in completions}
    assert len(lengths) > 4 and min(lengths) < 10  # ragged
    ends = set(range(100, 160)) | {tokenizer.eos_token_id}  # the tokenizer's EOS ends a row too
    for c in completions:
        assert (c.finish_reason == "eos") == (c.token_ids[-1] in ends)
        assert all(t not in ends for t in c.token_ids[:-1])
        seq = torch.tensor([prompts[c.prompt_index] + list(c.token_ids)])
        with torch.no_grad():
            expected = sequence_logprobs(flat, seq, torch.ones_like(seq))[0, -len(c.token_ids):]
        torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=1e-5, rtol=0)


def test_greedy_logprobs_are_raw_logit_log_softmax(model, tokenizer):
    prompt = encode(tokenizer, ["Hi"])[0]
    c = generate(model, tokenizer, [prompt], SamplingParams(max_new_tokens=6, temperature=0))[0][0]
    seq = torch.tensor([prompt + list(c.token_ids)])
    with torch.no_grad():
        expected = sequence_logprobs(model, seq, torch.ones_like(seq), temperature=0)[0, -6:]
    torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=1e-5, rtol=0)


def test_sequence_logprobs_chunked_equals_unchunked_and_padding_is_invisible(model, tokenizer):
    rows = encode(tokenizer, ["What is 12+34? The answer", "Hi there"])
    ids, mask = left_pad(rows, tokenizer.pad_token_id)
    with torch.no_grad():
        whole = sequence_logprobs(model, ids, mask, chunk_size=10**6, temperature=0.7)
        chunked = sequence_logprobs(model, ids, mask, chunk_size=3, temperature=0.7)
        alone = sequence_logprobs(model, torch.tensor([rows[1]]), torch.ones(1, len(rows[1]), dtype=torch.long),
                                  temperature=0.7)
    assert whole.shape == (2, ids.shape[1] - 1)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)
    torch.testing.assert_close(whole[1, -alone.shape[1]:], alone[0], atol=1e-5, rtol=0)


def test_sequence_logprobs_completion_mask_and_gradients(model, tokenizer):
    ids, mask = left_pad(encode(tokenizer, ["What is 12+34? 46", "Hi 7"]), tokenizer.pad_token_id)
    completion = torch.zeros(ids.shape[0], ids.shape[1] - 1, dtype=torch.long)
    completion[:, -2:] = 1  # the last two targets of each row are "completion"
    trained = copy.deepcopy(model).train()
    logps = sequence_logprobs(trained, ids, mask, completion_mask=completion, chunk_size=2)
    with torch.no_grad():
        full = sequence_logprobs(trained, ids, mask)
    torch.testing.assert_close(logps.detach(), full * completion, atol=1e-5, rtol=0)
    assert logps.requires_grad
    (-logps.sum()).backward()
    grads = [p.grad for p in trained.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_sequence_logprobs_models_without_a_plain_head(model, tokenizer):
    class Wrapped(torch.nn.Module):  # not a PreTrainedModel: takes the full-logits path
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, **kwargs):
            return self.inner(**kwargs)

    ids, mask = left_pad(encode(tokenizer, ["What is 12+34?", "Hi"]), tokenizer.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(sequence_logprobs(Wrapped(model), ids, mask, chunk_size=4),
                                   sequence_logprobs(model, ids, mask), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------- sampling behaviour


def test_same_seed_same_samples_different_seed_different(model, tokenizer):
    def run(seed):
        groups = generate(model, tokenizer, PROMPTS, SamplingParams(max_new_tokens=8, n=2, seed=seed))
        return [(c.token_ids, c.logprobs) for g in groups for c in g]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_n_samples_per_prompt_shapes_indices_and_text(model, tokenizer):
    params = SamplingParams(max_new_tokens=7, n=3, seed=2)
    for prompts in (PROMPTS, encode(tokenizer, PROMPTS)):
        for batch_size in (None, 4):  # 4 sequences per chunk: one prompt (x3) at a time
            groups = generate(model, tokenizer, prompts, params, batch_size=batch_size, progress=batch_size == 4)
            assert len(groups) == len(PROMPTS) and all(len(g) == 3 for g in groups)
            for i, group in enumerate(groups):
                for c in group:
                    assert isinstance(c, Completion) and c.prompt_index == i
                    assert c.text == tokenizer.decode(list(c.token_ids), skip_special_tokens=True)
                    assert len(c.logprobs) == len(c.token_ids) <= 7
                    assert all(lp <= 0 for lp in c.logprobs)
            assert len({c.token_ids for g in groups for c in g}) > len(PROMPTS)  # samples differ
    assert generate(model, tokenizer, [], params) == []


def test_greedy_n_copies_and_training_mode_restored(model, tokenizer):
    trained = copy.deepcopy(model).train()
    groups = generate(trained, tokenizer, PROMPTS[:2], SamplingParams(max_new_tokens=5, temperature=0, n=3))
    assert trained.training
    assert all(len(g) == 3 and len({c.token_ids for c in g}) == 1 for g in groups)


def test_top_k_1_and_tiny_top_p_equal_greedy(model, tokenizer):
    greedy = generate(model, tokenizer, PROMPTS, SamplingParams(max_new_tokens=10, temperature=0))
    expected = [[g[0].token_ids] * 2 for g in greedy]
    for params in (SamplingParams(max_new_tokens=10, top_k=1, n=2, seed=5),
                   SamplingParams(max_new_tokens=10, top_p=1e-6, n=2, seed=5, temperature=0.7)):
        groups = generate(model, tokenizer, PROMPTS, params)
        assert [[c.token_ids for c in g] for g in groups] == expected


def test_top_k_samples_stay_in_the_top_k(model, tokenizer):
    prompts = encode(tokenizer, PROMPTS)
    groups = generate(model, tokenizer, prompts, SamplingParams(max_new_tokens=8, top_k=2, n=4, seed=0))
    for c in (c for g in groups for c in g):
        seq = torch.tensor([prompts[c.prompt_index] + list(c.token_ids)])
        with torch.no_grad():
            logits = model(seq).logits[0, -len(c.token_ids) - 1:-1]
        top2 = logits.topk(2, dim=-1).indices
        assert all(t in row for t, row in zip(c.token_ids, top2.tolist()))


def test_truncate_hand_example():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()

    def kept(out):
        return torch.isfinite(out[0]).tolist()
    # top_p 0.7: mass before token 2 is 0.5 < 0.7 (kept), before token 3 is 0.8 >= 0.7 (dropped)
    assert kept(_truncate(logits, top_k=0, top_p=0.7)) == [True, True, False, False]
    assert kept(_truncate(logits, top_k=0, top_p=0.5)) == [True, False, False, False]
    # top_k 3 renormalises to 0.526, 0.316, 0.158: mass before the 3rd is 0.842 < 0.9, kept
    assert kept(_truncate(logits, top_k=3, top_p=0.9)) == [True, True, True, False]
    assert kept(_truncate(logits, top_k=2, top_p=1.0)) == [True, True, False, False]
    assert torch.equal(_truncate(logits, top_k=0, top_p=1.0), logits)


# ---------------------------------------------------------------------------- stopping


def test_stop_strings_end_sequences_and_stay_in_the_text(model, tokenizer):
    free = generate(model, tokenizer, PROMPTS, SamplingParams(max_new_tokens=16, temperature=0))
    free_ids = [list(g[0].token_ids) for g in free]
    # A stop string taken from the middle of row 0's greedy text; other rows may or may not hit it.
    text0 = free[0][0].text
    stop = text0[len(text0) // 2:len(text0) // 2 + 2]
    assert stop and len(free_ids[0]) == 16
    got = generate(model, tokenizer, PROMPTS, SamplingParams(max_new_tokens=16, temperature=0, stop=("zzzq", stop)))
    for ids, group in zip(free_ids, got):
        c = group[0]
        first_hit = next((k for k in range(1, 17) if stop in tokenizer.decode(ids[:k], skip_special_tokens=True)), None)
        if first_hit is None:
            assert c.finish_reason == "length" and list(c.token_ids) == ids
        else:
            assert c.finish_reason == "stop" and list(c.token_ids) == ids[:first_hit]
            assert stop in c.text
    assert got[0][0].finish_reason == "stop" and len(got[0][0].token_ids) < 16


def test_stop_string_when_sampling(model, tokenizer):
    params = SamplingParams(max_new_tokens=20, temperature=1.0, seed=11)
    free = generate(model, tokenizer, ["Hi"], params)[0][0]
    stop = free.text[-4:-2]  # a single row samples the same tokens until the stop
    params = SamplingParams(max_new_tokens=20, temperature=1.0, seed=11, stop=(stop,))
    c = generate(model, tokenizer, ["Hi"], params)[0][0]
    assert c.finish_reason == "stop" and stop in c.text and free.token_ids[:len(c.token_ids)] == c.token_ids
    assert stop not in tokenizer.decode(list(c.token_ids[:-1]), skip_special_tokens=True)


def test_max_new_tokens_respected(model, tokenizer):
    groups = generate(model, tokenizer, PROMPTS, SamplingParams(max_new_tokens=3, n=2))
    for c in (c for g in groups for c in g):
        assert len(c.token_ids) <= 3
        assert (c.finish_reason == "length") == (len(c.token_ids) == 3 and c.token_ids[-1] != tokenizer.eos_token_id)


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize("kwargs", [
    dict(temperature=-0.1), dict(temperature=float("nan")), dict(top_p=0.0), dict(top_p=1.5), dict(n=0),
    dict(top_k=-1), dict(max_new_tokens=0), dict(stop="</answer>"), dict(stop=("",)),
])
def test_invalid_params_raise(kwargs):
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)


def test_stop_list_becomes_a_tuple():
    assert SamplingParams(stop=["</answer>"]).stop == ("</answer>",)


def test_bad_prompts(model, tokenizer):
    with pytest.raises(R1labError, match="prompt 1 is empty"):
        generate(model, tokenizer, ["Hi", ""], SamplingParams(max_new_tokens=2))
    with pytest.raises(ValueError, match="mix"):
        generate(model, tokenizer, ["Hi", [5, 6]], SamplingParams(max_new_tokens=2))


# ---------------------------------------------------------------------------- the lean path on other architectures


def _sharpened(model, factor: float = 4.0):
    """Peaked next-token distributions (see the module docstring); hidden 64 needs a larger factor."""
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(factor)
        if model.lm_head.weight is not model.model.embed_tokens.weight:
            model.lm_head.weight.mul_(factor)
    return model.eval()


def _ids(tokenizer) -> dict:
    return dict(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.eos_token_id, max_position_embeddings=256)


def tiny_llama(tokenizer):
    """Llama with grouped-query attention (4 query heads, 2 key heads), untied head, Llama-3 RoPE scaling."""
    torch.manual_seed(0)
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16, "rope_theta": 10000.0}
    config = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, rope_parameters=rope, **_ids(tokenizer))
    return _sharpened(LlamaForCausalLM(config), 20.0)


def tiny_qwen3(tokenizer):
    """Qwen3: per-head q/k RMSNorms, head_dim 32 with hidden 64 (H * D != hidden), grouped-query attention."""
    torch.manual_seed(0)
    config = Qwen3Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=32, intermediate_size=128, tie_word_embeddings=True, **_ids(tokenizer))
    return _sharpened(Qwen3ForCausalLM(config), 6.0)


ARCHITECTURES = {"qwen2": lambda tok: _sharpened(build_model("micro", tok, seed=0)), "llama": tiny_llama,
                 "qwen3": tiny_qwen3}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_lean_greedy_and_logprobs_match_transformers(arch, tokenizer):
    model = ARCHITECTURES[arch](tokenizer)
    assert fast_decoder.supports(model)
    expected = hf_greedy(model, tokenizer, PROMPTS, max_new_tokens=12)
    got = generate(model, tokenizer, PROMPTS, SamplingParams(max_new_tokens=12, temperature=0))
    assert [list(g[0].token_ids) for g in got] == expected
    prompts = encode(tokenizer, PROMPTS)
    groups = generate(model, tokenizer, prompts, SamplingParams(max_new_tokens=10, n=3, seed=1, temperature=0.8))
    spread = []
    for c in (c for g in groups for c in g):
        seq = prompts[c.prompt_index] + list(c.token_ids)
        with torch.no_grad():
            logits = model(torch.tensor([seq])).logits[0, :-1] / 0.8
        fresh = logits.log_softmax(-1).gather(-1, torch.tensor(seq[1:])[:, None])[:, 0]
        torch.testing.assert_close(fresh[-len(c.token_ids):], torch.tensor(c.logprobs), atol=1e-5, rtol=0)
        spread += c.logprobs
    assert min(spread) < -1 and max(spread) > -0.5


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_lean_logits_equal_the_models_forward_on_padded_batches(arch, tokenizer):
    model = ARCHITECTURES[arch](tokenizer)
    ids, mask = left_pad(encode(tokenizer, PROMPTS), tokenizer.pad_token_id)
    positions = position_ids(mask)
    fast = fast_decoder.LeanModel(model, packed=True)
    with torch.inference_mode():
        expected = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
        cache = fast.new_cache(len(PROMPTS), ids.shape[1] + 1)
        torch.testing.assert_close(fast.forward(ids, positions, mask, cache), expected, atol=2e-5, rtol=0)
        nxt = expected.argmax(-1, keepdim=True)  # one decode step on top of the prefill
        ids2, mask2 = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
        expected2 = model(input_ids=ids2, attention_mask=mask2, position_ids=position_ids(mask2)).logits[:, -1]
        torch.testing.assert_close(fast.forward(nxt, positions[:, -1:] + 1, mask2, cache), expected2, atol=2e-5, rtol=0)


@pytest.mark.parametrize("rows", ["groups", "shuffled"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_shared_prompt_logprobs_and_gradients_equal_the_full_forward(arch, rows, tokenizer):
    # A GRPO-shaped batch: 3 prompts of different lengths (left-padded) x 4 completions of ragged
    # lengths (right-padded). Running each prompt once must give the full forward's log-probs on
    # every completion token, and the same gradients: for whole groups in order (each prompt's
    # rows are stacked as they are) and for a shuffled subset (uneven rows per prompt, out of order).
    model = ARCHITECTURES[arch](tokenizer)
    prompts = encode(tokenizer, PROMPTS[:3])
    torch.manual_seed(0)
    completions = [torch.randint(5, len(tokenizer), (k,)).tolist() for k in (6, 3, 6, 1, 5, 6, 2, 6, 4, 6, 6, 5)]
    p_len, c_len = max(map(len, prompts)), 6
    ids = torch.full((12, p_len + c_len), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    completion_mask = torch.zeros(12, p_len + c_len - 1)
    for row, c in enumerate(completions):
        p = prompts[row // 4]
        ids[row, p_len - len(p):p_len], ids[row, p_len:p_len + len(c)] = torch.tensor(p), torch.tensor(c)
        mask[row, p_len - len(p):p_len + len(c)] = 1
        completion_mask[row, p_len - 1:p_len - 1 + len(c)] = 1
    if rows == "shuffled":
        keep = torch.tensor([9, 0, 5, 11, 2, 4, 10])  # prompts 2, 0, 1, 2, 0, 1, 2
        ids, mask, completion_mask = ids[keep], mask[keep], completion_mask[keep]
    full_model, shared_model = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    full = sequence_logprobs(full_model, ids, mask, temperature=0.7) * completion_mask
    shared = sequence_logprobs(shared_model, ids, mask, temperature=0.7, prompt_len=p_len) * completion_mask
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=0)
    (full.sum()).backward()
    (shared.sum()).backward()
    for (name, a), b in zip(full_model.named_parameters(), shared_model.parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-4, rtol=1e-4, msg=name)



def test_shared_prompt_logprobs_of_one_token_completions(tokenizer):
    # Completions of one token leave the completion pass no input columns (each completion's only
    # log-prob comes from its prompt's last position): nothing may break on the empty pass.
    model = ARCHITECTURES["qwen2"](tokenizer)
    prompts = encode(tokenizer, PROMPTS[:2])
    p_len = max(map(len, prompts))
    ids = torch.full((4, p_len + 1), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for row in range(4):
        p = prompts[row // 2]
        ids[row, p_len - len(p):p_len], ids[row, p_len] = torch.tensor(p), 7 + row
        mask[row, p_len - len(p):] = 1
    full = sequence_logprobs(model, ids, mask)[:, -1]
    shared = sequence_logprobs(model, ids, mask, prompt_len=p_len)[:, -1]
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=0)
    assert len(set(full.tolist())) == 4  # four different tokens, four different log-probs

def test_unknown_or_modified_models_take_the_generic_path(tokenizer, model):
    fp16 = copy.deepcopy(model).to(torch.float16)  # all float32 or all bf16 only
    mixed = copy.deepcopy(model)
    mixed.model.layers[0].to(torch.bfloat16)
    sliding = Qwen2ForCausalLM(Qwen2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                           num_key_value_heads=4, intermediate_size=128, use_sliding_window=True,
                                           sliding_window=8, max_window_layers=0, **_ids(tokenizer)))
    hooked = copy.deepcopy(model)
    hooked.model.layers[0].mlp.register_forward_hook(lambda module, args, out: out * 2)
    for other in (fp16, mixed, sliding, hooked):
        assert not fast_decoder.supports(other)
        assert fast_decoder.LeanModel.from_model(other) is None
    assert fast_decoder.supports(model) and fast_decoder.supports(copy.deepcopy(model).to(torch.bfloat16))
    # the hook changes the model's outputs; the sampler must see them (generic path)
    expected = hf_greedy(hooked, tokenizer, PROMPTS[:2], max_new_tokens=6)
    got = generate(hooked, tokenizer, PROMPTS[:2], SamplingParams(max_new_tokens=6, temperature=0))
    assert [list(g[0].token_ids) for g in got] == expected


def test_inverse_cdf_sampling_follows_the_distribution():
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2]]).repeat(20000, 1)
    draws = sampler._inverse_cdf_sample(probs, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    assert freq[1] == 0  # zero-probability tokens are never drawn
    torch.testing.assert_close(freq, probs[0], atol=0.015, rtol=0)

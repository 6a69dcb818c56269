"""The memory savers keep the maths: gradient checkpointing, SDPA attention, log-prob chunks
recomputed in the backward and token-budget micro-batches each give the update step the plain
path gives (same loss, statistics and weights within float rounding)."""

import copy

import pytest
import torch

from r1lab.models import attention, fast_decoder, logprobs
from r1lab.sampling import generate as sampling
from r1lab.grpo.update import UpdateSettings, pack_by_length, row_lengths, update_policy
from r1lab.sampling.generate import SamplingParams
from r1lab.training.loop import enable_gradient_checkpointing

PROMPTS = ["Compute 12 + 34.", "Hi", "Compute 7 * 8 and show each step"]


@pytest.fixture(scope="module")
def rollout(packed_rollout):
    return packed_rollout.with_ref(packed_rollout.old_logp - 0.01)


def _step(policy, rollout, checkpointing=False, **overrides):
    settings = dict(num_iterations=1, minibatches=2, micro_batch_size=3, temperature=1.0, eps_low=0.2,
                    eps_high=0.2, beta=0.04, kl_estimator="k3", aggregation="token_mean", max_len=16,
                    max_grad_norm=1.0)
    model = copy.deepcopy(policy).train()
    if checkpointing:
        enable_gradient_checkpointing(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    stats = update_policy(model, optimizer, rollout, UpdateSettings(**{**settings, **overrides}), seed=0)
    return model, stats


@pytest.fixture(scope="module")
def plain(policy, rollout):
    return _step(policy, rollout)


def _same(got, plain, policy):
    (model, stats), (ref_model, ref_stats) = got, plain
    for key in ("loss", "kl", "grad_norm", "ratio"):
        assert stats[key] == pytest.approx(ref_stats[key], rel=1e-4, abs=1e-6), key
    for (name, a), b in zip(ref_model.named_parameters(), model.parameters()):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=name)
    assert any(not torch.equal(a, b) for a, b in zip(policy.parameters(), model.parameters()))  # it did move


def test_gradient_checkpointing_gives_the_same_update(policy, rollout, plain, monkeypatch):
    calls = []
    original = fast_decoder.checkpoint
    monkeypatch.setattr(fast_decoder, "checkpoint", lambda *a, **k: calls.append(1) or original(*a, **k))
    _same(_step(policy, rollout, checkpointing=True), plain, policy)
    assert calls  # the layers really were checkpointed


def test_sdpa_attention_gives_the_same_update(policy, rollout, plain, monkeypatch):
    calls = []
    original = attention.F.scaled_dot_product_attention
    monkeypatch.setattr(attention, "SDPA_MIN_SCORES", 0)  # every forward through SDPA, prefix included
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    _same(_step(policy, rollout), plain, policy)
    assert calls


def test_recomputed_logprob_chunks_give_the_same_update(policy, rollout, plain, monkeypatch):
    calls = []
    original = logprobs.checkpoint
    monkeypatch.setattr(logprobs, "checkpoint", lambda *a, **k: calls.append(1) or original(*a, **k))
    monkeypatch.setattr(logprobs, "LOGIT_RECOMPUTE_MIN", 0)
    monkeypatch.setattr(logprobs, "LOGIT_CHUNK_ELEMENTS", 7 * policy.config.vocab_size)  # 7-row chunks
    _same(_step(policy, rollout), plain, policy)
    assert calls  # the chunks really were recomputed


def test_recomputed_logprob_chunks_keep_the_entropy_bonus(policy, rollout, monkeypatch):
    bonus = _step(policy, rollout, entropy_coef=0.1)
    monkeypatch.setattr(logprobs, "LOGIT_RECOMPUTE_MIN", 0)
    monkeypatch.setattr(logprobs, "LOGIT_CHUNK_ELEMENTS", 7 * policy.config.vocab_size)
    got = _step(policy, rollout, entropy_coef=0.1)
    assert got[1]["entropy"] == pytest.approx(bonus[1]["entropy"], rel=1e-5)
    _same(got, bonus, policy)


def test_token_budget_micro_batches_give_the_same_update(policy, rollout, plain):
    _same(_step(policy, rollout, max_tokens_per_micro_batch=60), plain, policy)


def test_pack_by_length_by_hand():
    parts = pack_by_length(torch.tensor([5, 2, 9, 3, 3]), 10)
    # shortest first: 2, 3, 3 (3 rows x 3 = 9 tokens), then 5 alone (2 x 5 > 10), 9 alone
    assert [p.tolist() for p in parts] == [[1, 3, 4], [0], [2]]
    assert [p.tolist() for p in pack_by_length(torch.tensor([20, 1]), 10)] == [[1], [0]]  # too long: alone


def test_row_lengths_count_up_to_the_last_real_token(rollout):
    lengths = row_lengths(rollout)
    for row in range(rollout.num_rows):
        real = rollout.attention_mask[row].nonzero()
        assert lengths[row] == int(real[-1]) + 1


@pytest.mark.parametrize("own_forward", [False, True])
def test_the_decode_cache_grows_when_rows_run_past_its_first_room(policy, tokenizer, monkeypatch, own_forward):
    params = SamplingParams(max_new_tokens=20, n=2, seed=5)
    if own_forward:
        monkeypatch.setattr(fast_decoder, "supports", lambda model: False)
    roomy = sampling.generate(policy, tokenizer, PROMPTS, params)
    monkeypatch.setattr(sampling, "INITIAL_NEW_TOKENS", 1)  # room for 1 new token at first
    grown = sampling.generate(policy, tokenizer, PROMPTS, params)
    assert [[c.token_ids for c in g] for g in grown] == [[c.token_ids for c in g] for g in roomy]
    assert max(len(c.token_ids) for g in grown for c in g) > 3  # rows ran past the first room

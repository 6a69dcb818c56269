"""The GRPO speed-ups keep the maths: sampled log-probs equal a fresh forward, the shared-prompt
training forward equals the model's own, an update step is the same either way, and the optional
vLLM backend keeps the sampler's contract (tested with a stand-in engine: no GPU here).
"""

import copy
import sys
import types

import pytest
import torch

from r1lab.models import fast_decoder
from r1lab.errors import R1labError
from r1lab.grpo.config import GRPOConfig
from r1lab.grpo.rollout import rollout_sampler
from r1lab.grpo.update import UpdateSettings, reference_logprobs, update_policy
from r1lab.models.logprobs import sequence_logprobs
from r1lab.sampling.generate import Completion, SamplingParams

PROMPTS = ["Compute 12 + 34.", "Hi", "Compute 7 * 8 and show each step"]


@pytest.fixture(scope="module")
def rollout(packed_rollout):
    assert len(set(packed_rollout.completion_mask.sum(1).tolist())) > 2  # ragged: padding inside the batch
    return packed_rollout


def _generic(monkeypatch):
    monkeypatch.setattr(fast_decoder, "supports", lambda model: False)


def test_sampled_logprobs_equal_a_fresh_forward_of_the_training_path(policy, rollout, monkeypatch):
    mask = rollout.completion_mask.bool()
    with torch.no_grad():
        shared = sequence_logprobs(policy, rollout.input_ids, rollout.attention_mask, prompt_len=rollout.prompt_len)
        _generic(monkeypatch)
        full = sequence_logprobs(policy, rollout.input_ids, rollout.attention_mask, prompt_len=rollout.prompt_len)
    torch.testing.assert_close(shared[mask], rollout.old_logp[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(full[mask], rollout.old_logp[mask], atol=1e-5, rtol=0)
    assert rollout.old_logp[mask].max() - rollout.old_logp[mask].min() > 2  # a real range of values compared


def test_reference_logprobs_equal_the_models_own_forward(policy, rollout, monkeypatch):
    fast = reference_logprobs(policy, rollout, temperature=1.0, micro_batch_size=5)
    _generic(monkeypatch)
    slow = reference_logprobs(policy, rollout, temperature=1.0, micro_batch_size=12)
    mask = rollout.completion_mask.bool()
    torch.testing.assert_close(fast[mask], slow[mask], atol=1e-5, rtol=0)


@pytest.mark.parametrize("minibatches,micro", [(1, 12), (2, 5)])
def test_an_update_step_is_the_same_through_either_forward(policy, rollout, monkeypatch, minibatches, micro):
    settings = UpdateSettings(num_iterations=1, minibatches=minibatches, micro_batch_size=micro, temperature=1.0,
                              eps_low=0.2, eps_high=0.2, beta=0.04, kl_estimator="k3", aggregation="token_mean",
                              max_len=16, max_grad_norm=1.0)
    ref = rollout.with_ref(rollout.old_logp - 0.01)

    def step():
        model = copy.deepcopy(policy).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        stats = update_policy(model, optimizer, ref, settings, seed=0)
        return model, stats

    fast, fast_stats = step()
    _generic(monkeypatch)
    slow, slow_stats = step()
    for key in ("loss", "kl", "grad_norm"):
        assert fast_stats[key] == pytest.approx(slow_stats[key], rel=1e-4, abs=1e-6), key
    for (name, a), b in zip(slow.named_parameters(), fast.parameters()):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=name)
    assert any(not torch.equal(a, b) for a, b in zip(policy.parameters(), fast.parameters()))  # it did move


def test_rollout_prompt_len_follows_row_selection(rollout):
    index = torch.tensor([4, 5, 6, 7])  # the group of the shortest prompt ("Hi"): leading columns trimmed
    lo = int(rollout.attention_mask[index].any(0).nonzero()[0])
    part = rollout.rows(index)
    assert lo > 0 and part.prompt_len == rollout.prompt_len - lo
    assert (part.completion_mask[:, :part.prompt_len - 1] == 0).all()
    assert part.completion_mask[:, part.prompt_len - 1].any()


# ---------------------------------------------------------------------------- vLLM backend


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class FakeLLM:
    """Stands in for vllm.LLM: records weight loads, returns canned outputs."""

    def __init__(self):
        self.loads: list[dict[str, torch.Tensor]] = []
        self.resets = 0
        self.calls: list[tuple] = []

    def collective_rpc(self, method, args=()):
        assert method == "r1lab_load_weights"
        (weights,) = args
        self.loads.append({name: w.clone() for name, w in weights})
        return [len(weights)]

    def reset_prefix_cache(self):
        self.resets += 1

    def generate(self, prompts, sampling_params, use_tqdm=False):
        self.calls.append((prompts, sampling_params.kwargs))
        n = sampling_params.kwargs["n"]

        def output(i, j):
            ids = [40 + i, 41 + j, 0] if j == 0 else [40 + i, 42 + j]
            reason, stop_reason = ("stop", None) if j == 0 else ("stop", "</answer>") if j == 1 else ("length", None)
            return types.SimpleNamespace(token_ids=ids, logprobs=[{t: types.SimpleNamespace(logprob=-0.1 * (k + 1))}
                                                                  for k, t in enumerate(ids)],
                                         finish_reason=reason, stop_reason=stop_reason)

        return [types.SimpleNamespace(outputs=[output(i, j) for j in range(n)]) for i in range(len(prompts))]


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.SamplingParams = FakeSamplingParams
    module.__version__ = "0.32.0"
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def test_vllm_backend_without_vllm_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(R1labError, match=r"pip install 'r1lab\[vllm\]'"):
        rollout_sampler("vllm", "some/model")
    assert GRPOConfig(rollout_backend="vllm").rollout_backend == "vllm"
    with pytest.raises(ValueError, match="rollout_backend"):
        GRPOConfig(rollout_backend="sglang")
    assert rollout_sampler("native", "some/model").__name__ == "generate"


def test_vllm_keys_without_the_vllm_backend_are_a_clear_error():
    with pytest.raises(ValueError, match="vllm_importance_sampling_cap set, but rollout_backend=native"):
        GRPOConfig(vllm_importance_sampling_cap=3.0)
    GRPOConfig(rollout_backend="vllm", vllm_importance_sampling_cap=3.0, vllm_dtype="float32")


def test_an_old_vllm_is_a_clear_error(fake_vllm):
    from r1lab.sampling.vllm import import_vllm

    fake_vllm.__version__ = "0.10.1"
    with pytest.raises(R1labError, match=r"needs vLLM >= 0.32.*found vLLM 0.10.1"):
        import_vllm()


def fused_adamw_step(model) -> None:
    """One step of the optimiser GRPO uses (grpo/train.py: fused AdamW), which updates the weights
    in place without bumping their version counters: only an explicit `weights_changed` can tell."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()


def test_vllm_backend_loads_the_policy_weights_before_each_rollout(fake_vllm, policy, tokenizer):
    from r1lab.sampling.vllm import VLLMSampler

    llm = FakeLLM()
    sampler = VLLMSampler(llm=llm)
    model = copy.deepcopy(policy)
    params = SamplingParams(max_new_tokens=8, n=3, temperature=0.9, top_k=5, stop=("</answer>",), seed=7)
    groups = sampler(model, tokenizer, PROMPTS[:2], params)
    assert len(llm.loads) == 1 and llm.resets == 1
    assert set(llm.loads[0]) == {name for name, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        assert torch.equal(llm.loads[0][name], p.detach())
    # unchanged weights: no second load; after an optimiser step, which the trainer reports: loaded again
    sampler(model, tokenizer, PROMPTS[:2], params)
    assert len(llm.loads) == 1
    fused_adamw_step(model)
    sampler.weights_changed()
    sampler(model, tokenizer, PROMPTS[:2], params)
    assert len(llm.loads) == 2 and torch.equal(llm.loads[1]["model.norm.weight"], model.model.norm.weight.detach())
    assert not torch.equal(llm.loads[1]["model.norm.weight"], llm.loads[0]["model.norm.weight"])

    prompts, kwargs = llm.calls[0]
    assert prompts == [{"prompt_token_ids": tokenizer(p, add_special_tokens=False)["input_ids"]} for p in PROMPTS[:2]]
    assert kwargs["n"] == 3 and kwargs["max_tokens"] == 8 and kwargs["temperature"] == 0.9 and kwargs["top_k"] == 5
    assert kwargs["stop"] == ["</answer>"] and kwargs["include_stop_str_in_output"] and kwargs["seed"] == 7
    # the native sampler's contract: [P][n] Completions, text decoded from the ids, one log-prob per token
    assert len(groups) == 2 and all(len(g) == 3 for g in groups)
    for i, group in enumerate(groups):
        for c in group:
            assert isinstance(c, Completion) and c.prompt_index == i
            assert c.text == tokenizer.decode(list(c.token_ids), skip_special_tokens=True)
            assert len(c.logprobs) == len(c.token_ids)
            assert c.logprobs[0] == pytest.approx(-0.1)
        assert [c.finish_reason for c in group] == ["eos", "stop", "length"]
        assert group[0].token_ids[-1] == 0  # the EOS token stays in the ids, as the native sampler keeps it


class SpySampler:
    """r1lab's sampler, recording its calls and the trainer's `weights_changed` reports."""

    def __init__(self):
        self.events: list[str] = []

    def __call__(self, *args, **kwargs):
        from r1lab.sampling.generate import generate

        self.events.append("sample")
        return generate(*args, **kwargs)

    def weights_changed(self):
        self.events.append("changed")


def test_grpo_tells_the_sampler_after_every_update(tiny_model_dir, prompts_jsonl, tmp_path, monkeypatch):
    from itertools import groupby

    from r1lab import cli
    from r1lab.grpo import train

    spy = SpySampler()
    monkeypatch.setattr(train, "rollout_sampler", lambda *args, **kwargs: spy)
    args = ["grpo", f"model={tiny_model_dir}", f"data.train={prompts_jsonl}", f"output_dir={tmp_path / 'run'}",
            "template=micro", "num_generations=2", "prompts_per_step=2", "max_new_tokens=6", "max_steps=3",
            "eval_every=0", "progress=false", "threads=1"]
    assert cli.main(args) == 0
    # a step's sampling, then its update reported, then the next step's sampling from the new weights
    assert [event for event, _ in groupby(spy.events)] == ["sample", "changed"] * 3

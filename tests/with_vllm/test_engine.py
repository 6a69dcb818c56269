"""The vLLM engine as r1lab drives it, on vLLM's CPU build: `make test-vllm` (.venv-vllm).

Weight pushes (the engine samples from the updated policy), LoRA's merged weights, and the
errors: a model vLLM can't load, bad weights, an engine that is gone. One engine is shared
by the module (building one takes ~20-40 s on a 2-core CPU); fp32, so vLLM's log-probs and the
trainer's agree to float rounding.
"""

import copy
import json
import signal
import warnings
from contextlib import contextmanager

import pytest
import torch

pytest.importorskip("vllm", reason="needs vLLM: `make test-vllm` runs these in .venv-vllm")

from r1lab.errors import R1labError  # noqa: E402
from r1lab.sampling.vllm import EngineSettings, VLLMSampler, build_engine  # noqa: E402
from r1lab.sampling.generate import SamplingParams  # noqa: E402

PROMPT = "12+34="


@contextmanager
def deadline(seconds: int):
    """Fail instead of hanging: SIGALRM after `seconds`."""
    def timeout(*_):
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir  # tests/conftest.py: a random micro model folder (the engine never writes to it)


@pytest.fixture(scope="module")
def engine(model_dir):
    """(sampler, warnings raised while building it): sleep mode asked for, on a CPU."""
    settings = EngineSettings(dtype="float32", enforce_eager=True, max_model_len=256, enable_sleep_mode=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sampler = VLLMSampler(model_dir, settings)
    yield sampler, [str(w.message) for w in caught]
    sampler.close()


@pytest.fixture
def policy_model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def vllm_logprobs(sampler, ids: list[int], completion: list[int]) -> torch.Tensor:
    """The engine's log-probs of `completion` after `ids` (its prompt log-probs, temperature 1)."""
    import vllm

    full = ids + completion
    out = sampler.llm.generate([{"prompt_token_ids": full}], vllm.SamplingParams(max_tokens=1, prompt_logprobs=0),
                               use_tqdm=False)
    logprobs = out[0].prompt_logprobs
    return torch.tensor([logprobs[i][full[i]].logprob for i in range(len(ids), len(full))])


@torch.no_grad()
def trainer_logprobs(model, ids: list[int], completion: list[int]) -> torch.Tensor:
    full = torch.tensor([ids + completion])
    logp = model(full).logits.float().log_softmax(-1)[0, :-1]
    return logp.gather(-1, full[0, 1:, None])[len(ids) - 1:, 0]


def sample_one(sampler, model, tokenizer):
    ids = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    params = SamplingParams(max_new_tokens=16, temperature=1.0, n=2, stop=(), seed=3)
    groups = sampler(model, tokenizer, [ids], params)
    assert len(groups) == 1 and len(groups[0]) == 2
    return ids, groups[0][0]


def optimizer_step(model, ids, completion):
    """One step of GRPO's optimiser (fused AdamW: in place, tensors' version counters unchanged)
    that raises the completion's likelihood (an update GRPO could make)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-2, fused=True)
    full = torch.tensor([ids + completion])
    loss = -model(full).logits.log_softmax(-1)[0, :-1].gather(-1, full[0, 1:, None]).sum()
    loss.backward()
    optimizer.step()


def test_sleep_mode_on_a_cpu_is_ignored_with_a_warning(engine):
    _, caught = engine
    assert any("vllm_enable_sleep_mode is ignored" in message for message in caught)


def test_the_engine_samples_from_the_updated_weights(engine, policy_model, tokenizer):
    sampler, _ = engine
    ids, c = sample_one(sampler, policy_model, tokenizer)
    completion = list(c.token_ids)
    before = vllm_logprobs(sampler, ids, completion)
    torch.testing.assert_close(before, trainer_logprobs(policy_model, ids, completion), atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.tensor(c.logprobs), before, atol=1e-4, rtol=0)  # the sampler's own

    assert not sampler.sync_weights(policy_model)  # pushed by the first call, unchanged since: not again
    optimizer_step(policy_model, ids, completion)
    sampler.weights_changed()  # what the GRPO loop says after its optimiser steps
    sample_one(sampler, policy_model, tokenizer)  # pushes the new weights, then samples
    assert not sampler.sync_weights(policy_model)  # once
    after = vllm_logprobs(sampler, ids, completion)
    gap = (after - trainer_logprobs(policy_model, ids, completion)).abs().max()
    print(f"after the update: max |logp_vllm - logp_trainer| = {gap:.2e}, moved by {(after - before).abs().max():.2f}")
    assert gap < 1e-4  # vLLM samples from the updated weights
    assert (after - before).abs().max() > 0.1  # and it is not the old model any more


def test_lora_policies_push_their_merged_weights(engine, policy_model, tokenizer):
    from r1lab.models.lora import apply_lora

    sampler, _ = engine
    lora = apply_lora(copy.deepcopy(policy_model), 4, 8.0, seed=0)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    ids, c = sample_one(sampler, lora, tokenizer)
    completion = list(c.token_ids)
    merged = copy.deepcopy(lora).merge_and_unload()
    torch.testing.assert_close(vllm_logprobs(sampler, ids, completion), trainer_logprobs(merged, ids, completion),
                               atol=1e-4, rtol=0)
    unmerged = trainer_logprobs(policy_model, ids, completion)
    assert (trainer_logprobs(merged, ids, completion) - unmerged).abs().max() > 0.1


def test_bad_prompts_are_clear_errors(engine, policy_model, tokenizer):
    sampler, _ = engine
    params = SamplingParams(max_new_tokens=4, n=2)
    with pytest.raises(ValueError, match="all strings or all token id lists"):
        sampler(policy_model, tokenizer, ["1+1=", [5, 6]], params)
    with pytest.raises(R1labError, match="seeds has 1 entries for 2 prompts"):
        sampler(policy_model, tokenizer, ["1+1=", "2+2="], params, seeds=[1])


def test_a_model_vllm_cannot_load_is_a_clear_error(tmp_path, model_dir):
    broken = tmp_path / "broken"
    broken.mkdir()
    config = json.loads((model_dir / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "architectures": ["NoSuchModelForCausalLM"]}))
    with deadline(120), pytest.raises(R1labError, match=f"vLLM can't load the model {broken}"):
        build_engine(str(broken), EngineSettings(enforce_eager=True))


def test_weights_of_the_wrong_shape_are_a_clear_error(engine, tokenizer):
    from r1lab.micro.sizes import build_model

    sampler, _ = engine
    other = build_model("micro", tokenizer, max_positions=512, seed=0)
    with torch.no_grad():  # a policy of another shape than the engine's model
        other.model.norm.weight = torch.nn.Parameter(torch.ones(7))
    with deadline(120), pytest.raises(R1labError, match="the vLLM engine failed in collective_rpc"):
        sampler.sync_weights(other)


def test_a_dead_engine_ends_the_call_with_its_error(engine, policy_model, tokenizer):
    sampler, _ = engine
    sampler.close()  # the engine is gone (as after a crash of its core)
    with deadline(120), pytest.raises(R1labError, match="the vLLM engine failed"):
        sample_one(sampler, policy_model, tokenizer)

"""Rollout step noise (r1lab.micro.step_noise): which tokens it corrupts, how the sampler continues from
them, and that the corrupted tokens get no loss. A hand-made trace stands in for the model where the
rule is tested; a tiny random model where the sampler is."""

import doctest

import pytest
import torch

from r1lab.micro import step_noise
from r1lab.grpo.config import GRPOConfig
from r1lab.grpo.advantages import ADVANTAGES
from r1lab.micro.step_noise import StepNoise, noise_metrics, pending_step_value, step_outcomes
from r1lab.grpo.rollout import Scored, pack
from r1lab.micro.sizes import build_model
from r1lab.models.logprobs import sequence_logprobs
from r1lab.sampling.generate import Completion, SamplingParams, generate

TRACE = " <think> 9+3=12 , 5+2+1=8 , wait , 5+2+1=8 , 4+1=5 , so 582 </think> <answer>582</answer>"


def test_docstring_examples():
    result = doctest.testmod(step_noise)
    assert result.attempted > 0 and result.failed == 0


def _replay(tokenizer, text: str, hook) -> list[tuple[int, str, str]]:
    """Feed `text` token by token through the hook as the sampler would (no model): the
    (index, written digit, replacement) of every token it replaces."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    out = []
    for i, token in enumerate(ids):
        new = hook(ids[:i], token)
        if new is not None:
            out.append((i, tokenizer.decode([token]), tokenizer.decode([new])))
    return out


def test_only_units_digits_of_first_attempts_are_corrupted(tokenizer):
    # p just under 1: every eligible digit is hit (the draws are seeded, so this is fixed)
    hits = _replay(tokenizer, TRACE, StepNoise(0.999999, tokenizer, seed=0))
    written = [w for _, w, _ in hits]
    assert written == ["2", "8", "5"]  # 9+3=1[2], the first 5+2+1=[8], 4+1=[5]; not the re-check, not the 1 of 12
    for _, w, new in hits:
        assert new != w and (int(new) - int(w)) % 10 in (1, 9)  # the right digit +-1: always wrong
    ids = tokenizer(TRACE, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids[:hits[0][0]]).endswith("9+3=1")


def test_noise_rate_and_reproducibility(tokenizer):
    trace = " <think> " + " , ".join(["3+4=7"] * 400)
    hits = _replay(tokenizer, trace, StepNoise(0.15, tokenizer, seed=1))
    assert 40 <= len(hits) <= 80  # 400 eligible steps at p=0.15: 60 expected (sd ~7)
    assert hits == _replay(tokenizer, trace, StepNoise(0.15, tokenizer, seed=1))
    assert _replay(tokenizer, trace, StepNoise(0.0, tokenizer, seed=1)) == []


def test_pending_step_value_rules():
    assert pending_step_value("7*6=4") == 42 and pending_step_value("4*6+4=2") == 28
    assert pending_step_value("12-7-1=") == 4
    assert pending_step_value("so 582") is None and pending_step_value("9+3=12") is None
    assert pending_step_value("1+1+1+1+1+1=") is None  # not a column step the tasks write
    assert pending_step_value("wait , 9+3=1") is None


def test_step_noise_rejects_bad_settings(tokenizer):
    with pytest.raises(ValueError, match="step_noise"):
        StepNoise(1.0, tokenizer, seed=0)
    with pytest.raises(ValueError, match="step_noise must be in"):
        GRPOConfig(step_noise=-0.1)
    with pytest.raises(ValueError, match="rollout_backend native"):
        GRPOConfig(step_noise=0.1, rollout_backend="vllm")
    assert GRPOConfig().step_noise == 0.0


@pytest.fixture(scope="module")
def model(tokenizer):
    model = build_model("micro", tokenizer, seed=0).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(4.0)  # peaked distributions (see tests/test_sampling.py)
    return model


def test_sampler_continues_from_the_hooks_token(model, tokenizer):
    prompt = tokenizer("Compute 12 + 34.", add_special_tokens=False)["input_ids"]
    forced_token = tokenizer.convert_tokens_to_ids("7")
    params = SamplingParams(max_new_tokens=8, temperature=0)
    hooked = generate(model, tokenizer, [prompt], params, token_hook=lambda ids, t: forced_token if not ids else None)
    c = hooked[0][0]
    assert c.token_ids[0] == forced_token and c.forced == (0,)
    # the model went on from the written token: the greedy continuation of prompt + "7"
    rest = generate(model, tokenizer, [prompt + [forced_token]], SamplingParams(max_new_tokens=7, temperature=0))
    assert c.token_ids[1:] == rest[0][0].token_ids
    # the recorded log-prob is the model's for the written token (not for the one it sampled)
    ids = torch.tensor([prompt + list(c.token_ids)])
    logp = sequence_logprobs(model, ids, torch.ones_like(ids))[0, len(prompt) - 1:]
    assert torch.allclose(torch.tensor(c.logprobs), logp, atol=1e-4)
    plain = generate(model, tokenizer, [prompt], params)[0][0]
    assert plain.forced == () and plain.token_ids != c.token_ids


def test_sampled_rows_keep_their_own_forced_indices(model, tokenizer):
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in ("Compute 1 + 2.", "Hi")]
    token = tokenizer.convert_tokens_to_ids("5")
    params = SamplingParams(max_new_tokens=6, temperature=1.0, n=3, seed=2)
    out = generate(model, tokenizer, prompts, params, token_hook=lambda ids, t: token if len(ids) == 2 else None)
    for group in out:
        for c in group:
            if len(c.token_ids) > 2:
                assert c.forced == (2,) and c.token_ids[2] == token
            else:
                assert c.forced == ()


def test_pack_gives_forced_tokens_no_loss():
    completions = [[Completion(0, "a", (5, 6, 7), (-1.0, -2.0, -3.0), "stop", forced=(1,)),
                    Completion(0, "b", (5, 6), (-1.0, -2.0), "stop")]]
    scored = Scored([{"prompt": "p"}], completions, torch.tensor([[1.0, 0.0]]), {})
    rollout = pack(scored, [[1, 2]], ADVANTAGES["group"](scored.rewards), pad_id=0)
    # prompt length 2: completion tokens are predicted at columns 1, 2, 3
    assert rollout.completion_mask.tolist() == [[0, 1, 0, 1], [0, 1, 1, 0]]


class _CharTokenizer:
    """decode() of one character per token id: enough for noise_metrics' offsets."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def _completion(steps: str, forced: tuple[int, ...]) -> Completion:
    text = f"<think> {steps} </think> <answer>{steps.rsplit(' ', 1)[-1]}</answer>"
    forced = tuple(i + len("<think> ") for i in forced)
    return Completion(0, text, tuple(ord(ch) for ch in text), (0.0,) * len(text), "stop", forced)


def test_noise_metrics_separate_corrupted_and_clean_steps():
    fixed = "9+3=13 , wait , 9+3=12 , 1+0+1=2 , so 22"  # corrupted 9+3=1[3], then re-checked
    kept = "9+3=13 , 1+0+1=2 , so 23"  # corrupted, carried through
    clean = "9+3=12 , 1+0+1=2 , so 22"
    comps = [_completion(fixed, (5,)), _completion(kept, (5,)), _completion(clean, ())]
    rows = [{"task": "addition", "prompt": "Compute 19 + 3.", "answer": "22", "operands": [19, 3]}]
    scored = Scored(rows, [comps], torch.zeros(1, 3), {"accuracy": [1.0, 0.0, 1.0]})
    m = noise_metrics(scored, _CharTokenizer())
    assert m["noise/corrupted"] == pytest.approx(2 / 3)
    assert m["noise/recheck_after_corrupted"] == 0.5  # 1 of the 2 corrupted steps re-checked
    assert m["noise/recheck_after_clean"] == 0.0  # 4 clean first attempts, none re-checked
    assert m["noise/reflection_corrupted"] == 0.5 and m["noise/reflection_clean"] == 0.0
    assert m["noise/faithful"] == 1.0  # all three answers follow from their steps
    assert m["noise/accuracy_corrupted"] == 0.5 and m["noise/accuracy_clean"] == 1.0
    assert m["noise/shortcut"] == 0.0
    shortcut = _completion("9+3=13 , 1+0+1=2 , so 22", (5,))  # right answer, not from the steps
    m = noise_metrics(Scored(rows, [[shortcut, shortcut]], torch.zeros(1, 2), {"accuracy": [1.0, 1.0]}),
                      _CharTokenizer())
    assert m["noise/shortcut"] == 1.0 and m["noise/faithful"] == 0.0 and "noise/accuracy_clean" not in m
    assert step_outcomes(kept, [6]) == [(True, False), (False, False)]


def test_noisy_recipe_loads_and_differs_from_r1_zero_only_in_noise_and_faithfulness():
    from pathlib import Path

    from r1lab.recipe import load_config

    recipes = Path(__file__).parent.parent / "recipes" / "micro"
    noisy = load_config(GRPOConfig, str(recipes / "r1_zero_noisy.yaml"))
    clean = load_config(GRPOConfig, str(recipes / "r1_zero.yaml"))
    assert noisy.step_noise == 0.15 and "faithfulness" in noisy.rewards
    assert clean.step_noise == 0.0
    differ = {f for f in GRPOConfig.__dataclass_fields__ if getattr(noisy, f) != getattr(clean, f)}
    assert differ <= {"step_noise", "rewards", "reward_weights", "output_dir", "max_steps"}
    aha = load_config(GRPOConfig, str(recipes / "r1_zero_aha.yaml"))
    assert aha.step_noise == 0.3 and aha.model == "runs/micro/base_recheck/final"
    differ = {f for f in GRPOConfig.__dataclass_fields__ if getattr(aha, f) != getattr(noisy, f)}
    assert differ == {"model", "step_noise", "output_dir", "max_steps"}


def test_recheck_probe_scores_each_variant(model, tokenizer):
    out = step_noise.recheck_probe(model, tokenizer, num_problems=3, n=2, temperature=1.0)
    assert list(out) == list(step_noise.PROBE_VARIANTS)
    for scores in out.values():
        assert set(scores) == {"accuracy", "faithful"} and all(0.0 <= v <= 1.0 for v in scores.values())

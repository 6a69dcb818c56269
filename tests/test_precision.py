"""`precision: bf16-mixed` keeps GRPO's maths: the sampler's bf16 log-probs match a fresh bf16 forward,
the ratio is exactly 1 before the weights change (old log-probs come from the training forward),
bf16 gradients point where fp32's do, and fp32 stays what it was. bf16 autocast runs on any CPU
(emulated where the hardware lacks it), so none of these skip.
"""

import copy

import pytest
import torch

from r1lab.models import fast_decoder, precision
from r1lab.errors import R1labError
from r1lab.grpo.config import GRPOConfig
from r1lab.grpo.advantages import ADVANTAGES
from r1lab.grpo.rollout import RolloutSettings, pack, sample_and_score
from r1lab.grpo.update import UpdateSettings, update_policy
from r1lab.models.logprobs import sequence_logprobs
from r1lab.sampling.generate import SamplingParams

PROMPTS = ["Compute 12 + 34.", "Hi", "Compute 7 * 8 and show each step", "Compute 5 - 3."]


def length_reward(completions, **columns):
    return [float(len(c)) for c in completions]


def _rollout(policy, tokenizer, precision_name: str):
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    settings = RolloutSettings(params=SamplingParams(max_new_tokens=16, n=4, seed=3),
                               reward_fns=[("len", length_reward)], reward_weights=[1.0], precision=precision_name)
    scored = sample_and_score(policy, tokenizer, [{"prompt": p} for p in PROMPTS], prompt_ids, settings)
    return pack(scored, prompt_ids, ADVANTAGES["group"](scored.rewards), tokenizer.pad_token_id)


@pytest.fixture(scope="module")
def bf16_rollout(policy, tokenizer):
    return _rollout(policy, tokenizer, "bf16-mixed")


def _settings(**overrides) -> UpdateSettings:
    base = dict(num_iterations=1, minibatches=2, micro_batch_size=4, temperature=1.0, eps_low=0.2, eps_high=0.2,
                beta=0.0, kl_estimator="k3", aggregation="token_mean", max_len=16, max_grad_norm=1.0,
                precision="bf16-mixed")
    return UpdateSettings(**{**base, **overrides})


def test_precision_is_validated_and_checked_against_the_hardware(monkeypatch):
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        GRPOConfig(precision="fp16")
    assert GRPOConfig().precision == "fp32"
    precision.check_supported("fp32", "cpu")  # always fine
    monkeypatch.setattr(precision, "_cpu_has_bf16", lambda: False)
    for name in ("bf16-mixed", "bf16"):
        with pytest.raises(R1labError, match=f"{name} is not supported natively"):
            precision.check_supported(name, "cpu")


def test_the_sampler_packs_bf16_weights_under_autocast_and_fp32_logits(policy):
    with torch.inference_mode(), precision.autocast("bf16-mixed", "cpu"):
        model = fast_decoder.LeanModel(policy, packed=True, dtype=precision.autocast_dtype("cpu"))
        cache = model.new_cache(batch=2, capacity=8)
        ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
        logits = model.forward(ids, torch.arange(3).expand(2, 3), torch.ones(2, 3), cache)
    assert model.layers[0].qkv.dtype == torch.bfloat16 and model.head.dtype == torch.float32
    assert logits.dtype == torch.float32


def test_bf16_sampler_logprobs_equal_a_fresh_bf16_forward(policy, bf16_rollout):
    mask = bf16_rollout.completion_mask.bool()
    with torch.no_grad():
        with precision.autocast("bf16-mixed", "cpu"):
            bf16 = sequence_logprobs(policy, bf16_rollout.input_ids, bf16_rollout.attention_mask,
                                     prompt_len=bf16_rollout.prompt_len)
        fp32 = sequence_logprobs(policy, bf16_rollout.input_ids, bf16_rollout.attention_mask,
                                 prompt_len=bf16_rollout.prompt_len)
    sampled = bf16_rollout.old_logp[mask]
    assert sampled.max() - sampled.min() > 2  # a real range of values compared
    # bf16 has 8 mantissa bits: hidden states carry ~4e-3 relative error, log-probs ~1e-2
    torch.testing.assert_close(bf16[mask], sampled, atol=0.03, rtol=0)
    assert (fp32[mask] - sampled).abs().max() > 1e-4  # the sampler really ran in bf16
    torch.testing.assert_close(fp32[mask], sampled, atol=0.1, rtol=0)  # and bf16 is close to fp32


def test_ratio_is_exactly_one_until_the_weights_change(policy, bf16_rollout):
    """lr 0: the weights never change, so every ratio of the pass is exactly 1 in bf16, for the
    first minibatch (its own detached log-probs) and the second (recomputed before any step)."""
    model = copy.deepcopy(policy).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    stats = update_policy(model, optimizer, bf16_rollout, _settings(), seed=0)
    assert stats["ratio"] == 1.0 and stats["clip/fraction"] == 0.0
    # the sampler's own bf16 log-probs as old ones would not give 1: the test can tell
    stats = update_policy(model, optimizer, bf16_rollout, _settings(precision="fp32"), seed=0)
    assert stats["ratio"] != 1.0


def test_bf16_update_moves_the_weights_as_fp32_does(policy, bf16_rollout):
    """One SGD step from the same rollout: the bf16 weight change points where fp32's does."""
    deltas = {}
    for name in ("fp32", "bf16-mixed"):
        model = copy.deepcopy(policy).train()
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        update_policy(model, optimizer, bf16_rollout, _settings(precision=name, minibatches=1), seed=0)
        deltas[name] = torch.cat([p.detach().flatten() for p in model.parameters()]) - before
        assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    cosine = torch.nn.functional.cosine_similarity(deltas["fp32"], deltas["bf16-mixed"], dim=0)
    assert deltas["fp32"].norm() > 0 and cosine > 0.99


def test_fp32_sampling_is_unchanged_by_the_precision_plumbing(policy, tokenizer):
    fp32 = _rollout(policy, tokenizer, "fp32")
    mask = fp32.completion_mask.bool()
    with torch.no_grad():
        fresh = sequence_logprobs(policy, fp32.input_ids, fp32.attention_mask, prompt_len=fp32.prompt_len)
    torch.testing.assert_close(fresh[mask], fp32.old_logp[mask], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["bf16-mixed", "bf16"])
def test_grpo_cli_runs_in_bf16_and_refuses_it_without_hardware_support(name, tiny_model_dir, tmp_path, monkeypatch,
                                                                         capsys):
    from r1lab.cli import main as cli_main
    from r1lab.files import read_jsonl

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(f'{{"prompt": "Compute {a} + {b}.", "answer": "{a + b}"}}\n' for a, b in [(1, 2), (3, 4)]))
    args = [f"model={tiny_model_dir}", f"data.train={data}", "template=micro", "num_generations=4",
            "prompts_per_step=2", "max_new_tokens=12", "beta=0.04", "learning_rate=1e-3", "warmup_steps=1",
            "eval_every=0", "sample_every=0", "progress=false", "threads=1", "max_steps=2", "minibatches=2",
            "num_iterations=2", "micro_batch_size=3", f"precision={name}"]
    monkeypatch.setattr(precision, "_cpu_has_bf16", lambda: True)  # any CPU can run it, only slower
    assert cli_main(["grpo", *args, f"output_dir={tmp_path / 'run'}"]) == 0
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and all(r["kl"] >= 0 and r["loss"] == r["loss"] for r in rows)
    monkeypatch.setattr(precision, "_cpu_has_bf16", lambda: False)
    assert cli_main(["grpo", *args, f"output_dir={tmp_path / 'no'}"]) == 2
    assert f"{name} is not supported natively" in capsys.readouterr().err.splitlines()[-1]

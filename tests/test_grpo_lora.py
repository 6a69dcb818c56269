"""LoRA GRPO on a tiny random model (``pytest tests/test_grpo_lora.py``): the sampler and the
reference with adapters, a run whose reward rises, the saved adapters, resume."""

import copy
import json
import shutil

import pytest
import torch

import r1lab.grpo.train
from r1lab.cli import main as cli_main
from r1lab.grpo.config import GRPOConfig
from r1lab.files import read_jsonl

peft = pytest.importorskip("peft", reason="LoRA needs peft (pip install 'r1lab[peft]')")

from transformers import AutoModelForCausalLM  # noqa: E402

from r1lab.models import fast_decoder  # noqa: E402
from r1lab.grpo.advantages import ADVANTAGES  # noqa: E402
from r1lab.grpo.rollout import Rollout, RolloutSettings, pack, sample_and_score  # noqa: E402
from r1lab.grpo.update import reference_logprobs  # noqa: E402
from r1lab.models.lora import apply_lora, disabled_adapters  # noqa: E402
from r1lab.models.logprobs import sequence_logprobs  # noqa: E402
from r1lab.sampling.generate import SamplingParams, generate  # noqa: E402

SPACES_REWARD = '''
def spaces(completions, **columns):
    """A toy reward a random model can learn: spaces in the completion, a quarter point each."""
    return [t.count(" ") / 4 for t in completions]
'''


@pytest.fixture(scope="module")
def toy(tmp_path_factory, tiny_model_dir, tokenizer):
    """The tiny model with its (tied) embeddings scaled x3, a spaces reward and five prompts.

    At init (std 0.02) the frozen embeddings, which are also the output head, keep every logit
    within about +-2.6, too little room for adapters to move a whole class of tokens: measured, 20
    steps of LoRA GRPO went 0.39 -> 0.47 while full fine-tuning went 0.39 -> 0.84. x3 stands in
    for a trained model's larger logits.
    """
    root = tmp_path_factory.mktemp("grpo_lora")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(3)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    (root / "reward.py").write_text(SPACES_REWARD)
    rows = [{"prompt": f"Compute {a} + {b}.", "answer": str(a + b)}
            for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (9, 1)]]
    (root / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _args(toy, out, *extra):
    return [f"model={toy / 'model'}", f"data.train={toy / 'prompts.jsonl'}", f"output_dir={out}", "template=micro",
            f"rewards=[{toy / 'reward.py'}:spaces]", "stop=[]", "num_generations=8", "prompts_per_step=4",
            "max_new_tokens=8", "beta=0.01", "ref_update_every=0", "warmup_steps=0", "eval_every=0",
            "sample_every=0", "progress=false", "threads=1", "lora_r=8", "lora_alpha=16",
            "lora_target_modules=[all-linear]", *extra]


def _adapted(tiny_model_dir, dropout=0.0):
    """A PEFT model of the tiny model whose adapters are not zero (B random), in eval mode."""
    model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), r=4, alpha=8, dropout=dropout,
                       target_modules="all-linear", seed=1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05, generator=torch.Generator().manual_seed(len(name)))
    return model.eval()


def _forward_logprobs(model, prompt, completion):
    """log p(completion | prompt) per token from the model's own (PEFT) forward."""
    ids = torch.tensor([list(prompt) + list(completion)])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    return logp.gather(-1, ids[0, 1:, None])[len(prompt) - 1:, 0]


def test_sampler_reads_the_adapted_weights(tiny_model_dir, tokenizer, monkeypatch):
    model = _adapted(tiny_model_dir, dropout=0.1)  # dropout: off in eval mode, as in sampling
    assert fast_decoder.LeanModel.from_model(model, packed=True) is not None  # the sampler's fast path, merged weights
    assert not fast_decoder.supports(model)  # with gradients on: PEFT's own forward (no full weight gradients)
    prompts = [[5, 6, 7], [8, 9]]
    params = SamplingParams(max_new_tokens=10, temperature=1.0, n=3, seed=2)
    fast = generate(model, tokenizer, prompts, params)
    for prompt, group in zip(prompts, fast):
        for c in group:
            torch.testing.assert_close(torch.tensor(c.logprobs), _forward_logprobs(model, prompt, c.token_ids),
                                       rtol=0, atol=1e-5)
    monkeypatch.setattr(fast_decoder, "supports", lambda m: False)
    slow = generate(model, tokenizer, prompts, params)  # PEFT's forward all the way
    assert [[c.token_ids for c in g] for g in slow] == [[c.token_ids for c in g] for g in fast]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    assert [[c.token_ids for c in g] for g in generate(base, tokenizer, prompts, params)] != \
        [[c.token_ids for c in g] for g in fast]  # the adapters change what is sampled


def test_reference_is_the_base_model_with_adapters_disabled(tiny_model_dir, tokenizer):
    model = _adapted(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    settings = RolloutSettings(params=SamplingParams(max_new_tokens=8, n=4, seed=3),
                               reward_fns=[("len", lambda completions, **_: [float(len(c)) for c in completions])],
                               reward_weights=[1.0])
    prompt_ids = [[5, 6, 7], [8, 9, 10, 11]]
    rows = [{"prompt": "a"}, {"prompt": "b"}]
    scored = sample_and_score(model, tokenizer, rows, prompt_ids, settings)
    rollout: Rollout = pack(scored, prompt_ids, ADVANTAGES["group"](scored.rewards), tokenizer.pad_token_id)
    with disabled_adapters(model):
        ref = reference_logprobs(model, rollout, 1.0, micro_batch_size=3)  # shared-prompt lean path
    mask = rollout.completion_mask
    with torch.no_grad():
        expected = sequence_logprobs(base, rollout.input_ids, rollout.attention_mask, mask)
        policy = sequence_logprobs(model, rollout.input_ids, rollout.attention_mask, mask)
    torch.testing.assert_close(ref * mask, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(rollout.old_logp * mask, policy, rtol=0, atol=1e-5)  # sampler = PEFT forward
    assert (policy - expected).abs().max() > 1e-2


def test_ref_refresh_with_lora_is_a_clear_error():
    with pytest.raises(ValueError, match="ref_update_every=50 with LoRA"):
        GRPOConfig(lora_r=8, beta=0.02, ref_update_every=50, max_steps=100)
    GRPOConfig(lora_r=8, beta=0.02, ref_update_every=400, max_steps=100)  # a refresh after the run: no effect
    GRPOConfig(lora_r=8, beta=0.0, ref_update_every=50, max_steps=100)  # no reference at all
    GRPOConfig(lora_r=8, ref_update_every=0, rollout_backend="vllm")  # vLLM samples from the merged weights


def test_merged_weights_are_what_merge_and_unload_gives(policy):
    from r1lab.models.lora import apply_lora, merged_weights

    model = apply_lora(copy.deepcopy(policy), 4, 8.0, seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # B starts at 0: make the adapters matter
    merged = dict(merged_weights(model))
    expected = dict(copy.deepcopy(model).merge_and_unload().named_parameters())
    assert merged.keys() == expected.keys()
    for name, weight in expected.items():
        torch.testing.assert_close(merged[name], weight.detach())
    assert any(not torch.equal(merged[n], p) for n, p in policy.named_parameters())  # the adapters changed something


def test_lora_grpo_raises_the_reward_and_saves_loadable_adapters(toy, tmp_path, monkeypatch):
    ids = torch.tensor([[5, 17, 42, 8, 3, 11, 60]])
    mask = torch.ones_like(ids)
    at_save = {}
    save_final = r1lab.grpo.train.save_final

    def save_and_note(path, model, tokenizer):  # the trained policy's log-probs, as it is saved
        with torch.no_grad():
            at_save[path.name] = sequence_logprobs(model.eval(), ids, mask)
        return save_final(path, model, tokenizer)

    monkeypatch.setattr(r1lab.grpo.train, "save_final", save_and_note)
    out = tmp_path / "run"
    assert cli_main(["grpo", *_args(toy, out, "max_steps=16", "learning_rate=3e-2", "save_every=8")]) == 0
    rewards = [r["reward/mean"] for r in read_jsonl(out / "metrics.jsonl")]
    # measured: 0.41 in the first 4 steps, 1.55 in the last 4 (1.6 -> 6.2 spaces per completion)
    assert sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4 + 0.3, rewards

    assert (out / "final" / "adapter_model.safetensors").is_file()
    assert (out / "checkpoints" / "step-000008" / "adapter_model.safetensors").is_file()
    assert not (out / "final" / "model.safetensors").exists()
    adapted = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(toy / "model"), out / "final").eval()
    merged = AutoModelForCausalLM.from_pretrained(out / "final-merged").eval()
    base = AutoModelForCausalLM.from_pretrained(toy / "model").eval()
    with torch.no_grad():
        loaded = sequence_logprobs(adapted, ids, mask)
        torch.testing.assert_close(loaded, at_save["final"], rtol=0, atol=1e-6)
        torch.testing.assert_close(sequence_logprobs(merged, ids, mask), loaded, rtol=0, atol=1e-5)
        assert (loaded - sequence_logprobs(base, ids, mask)).abs().max() > 1e-2


def test_lora_grpo_resumes_as_if_never_stopped(toy, tmp_path):
    steps = ["max_steps=4", "learning_rate=3e-2", "save_every=2", "keep_checkpoints=0", "lora_dropout=0.1"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert cli_main(["grpo", *_args(toy, straight, *steps)]) == 0
    assert cli_main(["grpo", *_args(toy, killed, *steps)]) == 0
    # As if killed after the step-2 checkpoint: the later checkpoint and outputs never written.
    for lost in ("checkpoints/step-000004", "final", "final-merged"):
        shutil.rmtree(killed / lost)
    assert cli_main(["grpo", *_args(toy, killed, *steps, "resume=true")]) == 0

    def comparable(run):
        return [{k: v for k, v in r.items() if k not in {"step_time", "rollout_s", "train_s", "tokens_per_s",
                                                                 "peak_memory_mb"}}
                for r in read_jsonl(run / "metrics.jsonl")]

    assert [r["step"] for r in comparable(killed)] == [1, 2, 3, 4]
    assert comparable(killed) == comparable(straight)
    from safetensors.torch import load_file

    a = load_file(straight / "final" / "adapter_model.safetensors")
    b = load_file(killed / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

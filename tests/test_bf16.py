"""`precision: bf16`: bf16 weights with a stochastically rounded AdamW that still moves them at
lr 1e-6 (plain AdamW on bf16 weights doesn't), and the GRPO reference held in bf16, absent at
beta 0, and the adapter-less base with LoRA."""

import pytest
import torch

from r1lab.training.optim import BF16AdamW, build_adamw, random_bits, round_stochastic, shard_start
from r1lab.grpo.config import GRPOConfig
from r1lab.grpo.train import load_policy


def _train(optimizer_cls, steps: int = 100, **kwargs) -> torch.Tensor:
    """A bf16 weight of 1.0 (x 20000) after `steps` AdamW steps of gradient 1 at lr 1e-6."""
    p = torch.nn.Parameter(torch.ones(20000, dtype=torch.bfloat16))
    optimizer = optimizer_cls([p], lr=1e-6, **kwargs)
    for _ in range(steps):
        p.grad = torch.ones_like(p)
        optimizer.step()
    return p.detach().float()


def test_lr_1e_6_moves_bf16_weights_only_with_stochastic_rounding():
    # Adam's step with a constant gradient is lr per step: 100 steps move the weight by 1e-4, 1/78
    # of bf16's spacing (2^-8 below 1.0): rounded to nearest every step, nothing moves.
    plain = _train(torch.optim.AdamW, weight_decay=0.0)
    assert torch.equal(plain, torch.ones_like(plain))
    ours = _train(BF16AdamW)
    assert abs(ours.mean().item() - (1 - 1e-4)) < 1e-5  # the exact value in expectation
    assert ours.max() == 1.0 and ours.min() >= 1 - 3 * 2 ** -8  # whole bf16 steps down, rarely more than one


def test_stochastic_rounding_by_hand():
    x = torch.tensor([1 + 2 ** -9] * 4)  # a quarter of the way from 1 to the next bf16 (1 + 2^-7)
    bits = torch.tensor([0, 2 ** 14 - 1, 2 ** 14 * 3, 65535], dtype=torch.int32)
    # the low 16 bits of x are 2^14: adding b carries into the kept bits iff b >= 3 * 2^14
    assert round_stochastic(x, bits).float().tolist() == [1.0, 1.0, 1 + 2 ** -7, 1 + 2 ** -7]
    exact = torch.tensor([1.5, -2.0])  # representable: never moves
    assert round_stochastic(exact, torch.tensor([65535, 65535], dtype=torch.int32)).float().tolist() == [1.5, -2.0]
    b = random_bits(torch.arange(200000), torch.tensor(5))
    assert int(b.min()) >= 0 and int(b.max()) <= 65535 and abs(b.float().mean().item() / 65536 - 0.5) < 0.005
    assert torch.equal(b, random_bits(torch.arange(200000), torch.tensor(5)))  # a pure function: resumable
    assert not torch.equal(b, random_bits(torch.arange(200000), torch.tensor(6)))


def test_bf16_adamw_follows_fp32_adamw_and_is_deterministic():
    torch.manual_seed(0)
    w = torch.randn(64, 32).bfloat16().float()  # both start from the same (bf16) weights
    grads = [torch.randn(64, 32) for _ in range(5)]
    runs = []
    for cls, dtype in ((torch.optim.AdamW, torch.float32), (BF16AdamW, torch.bfloat16), (BF16AdamW, torch.bfloat16)):
        p = torch.nn.Parameter(w.clone().to(dtype))
        optimizer = cls([p], lr=1e-2, weight_decay=0.1)
        for g in grads:
            p.grad = g.to(dtype)
            optimizer.step()
        runs.append(p.detach().float())
        if cls is BF16AdamW:
            assert optimizer.state[p]["exp_avg"].dtype == optimizer.state[p]["exp_avg_sq"].dtype == torch.bfloat16
    moved = (runs[0] - w).abs().mean()
    # 5 steps of ~1e-2 each; each rounding moves a weight by up to a bf16 spacing (2^-8 of it)
    assert (runs[1] - runs[0]).abs().mean() < 0.15 * moved
    assert torch.equal(runs[1], runs[2])
    with pytest.raises(TypeError, match="bf16 parameters"):
        p = torch.nn.Parameter(torch.ones(3))
        p.grad = torch.ones(3)
        BF16AdamW([p]).step()


def test_build_adamw_picks_the_optimizer_of_the_precision():
    p = torch.nn.Parameter(torch.ones(3))
    assert type(build_adamw([p], "fp32", lr=1e-3)) is torch.optim.AdamW
    assert type(build_adamw([p], "bf16-mixed", lr=1e-3)) is torch.optim.AdamW
    assert type(build_adamw([torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16))], "bf16", lr=1e-3)) is BF16AdamW


@pytest.mark.parametrize("precision, beta, lora, teacher, policy_dtype, reference_dtype", [
    ("fp32", 0.04, 0, False, torch.float32, torch.float32),
    ("bf16-mixed", 0.04, 0, False, torch.float32, torch.bfloat16),
    ("bf16", 0.04, 0, False, torch.bfloat16, torch.bfloat16),
    ("bf16-mixed", 0.0, 0, False, torch.float32, None),  # beta 0: no reference at all
    ("bf16-mixed", 0.04, 4, False, torch.float32, None),  # LoRA: the base with adapters off, no copy
    ("fp32", 0.04, 0, True, torch.float32, torch.float32),  # a teacher (reference_model) alike
    ("bf16-mixed", 0.04, 0, True, torch.float32, torch.bfloat16),
])
def test_the_reference_model_by_precision(tiny_model_dir, precision, beta, lora, teacher, policy_dtype,
                                          reference_dtype):
    config = GRPOConfig(model=str(tiny_model_dir), precision=precision, beta=beta, lora_r=lora,
                        ref_update_every=0, device="cpu", reference_model=str(tiny_model_dir) if teacher else "")
    policy, reference, _ = load_policy(config)
    assert {p.dtype for p in policy.parameters()} == {policy_dtype}
    if reference_dtype is None:
        assert reference is None
        return
    assert {p.dtype for p in reference.parameters()} == {reference_dtype}
    assert not any(p.requires_grad for p in reference.parameters()) and not reference.training
    for (name, p), q in zip(policy.named_parameters(), reference.parameters()):  # the same weights
        torch.testing.assert_close(q.float(), p.detach().to(reference_dtype).float(), msg=name)


def test_sft_in_each_precision(tiny_model_dir, tmp_path, monkeypatch):
    """`r1lab sft precision=...`: bf16-mixed tracks fp32's losses; bf16 trains bf16 weights (and
    saves them) with its losses moving as fp32's do."""
    import json

    from r1lab import cli
    from r1lab.files import write_jsonl
    from r1lab.models import precision

    monkeypatch.setattr(precision, "_cpu_has_bf16", lambda: True)  # emulated where missing: slower only
    write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"{a}+{b}=", "completion": str(a + b)}
                                           for a in range(4) for b in range(3)])
    losses = {}
    for name in ("fp32", "bf16-mixed", "bf16"):
        out = tmp_path / name
        assert cli.main(["sft", f"model={tiny_model_dir}", f"train_data={tmp_path / 'train.jsonl'}",
                         f"output_dir={out}", "max_tokens_per_batch=128", "max_length=32", "warmup_steps=0",
                         "log_every=1", "eval_every=0", "save_every=0", "template=micro", "threads=1",
                         "max_steps=4", "learning_rate=3e-3", f"precision={name}"]) == 0
        losses[name] = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    for name in ("bf16-mixed", "bf16"):
        assert losses[name][0] == pytest.approx(losses["fp32"][0], rel=0.02)  # the same model and batch
        assert losses[name][-1] < losses[name][0] - 0.1  # and it learns
    from safetensors.torch import load_file  # the saved weights themselves are bf16

    weights = load_file(next((tmp_path / "bf16" / "final").glob("*.safetensors")))
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}


def test_eval_takes_device_and_precision(tiny_model_dir, tmp_path, monkeypatch):
    from r1lab.evaluation.evaluate import EvalConfig, load_for_eval
    from r1lab.evaluation.evaluate import main as evaluate
    from r1lab.models import precision

    monkeypatch.setattr(precision, "_cpu_has_bf16", lambda: True)
    with pytest.raises(ValueError, match="unknown precision"):
        EvalConfig(precision="fp8")
    summaries = {}
    for name in ("fp32", "bf16-mixed", "bf16"):
        config = EvalConfig(model=str(tiny_model_dir), tasks=("addition",), num_problems=4, k=2, max_new_tokens=8,
                            output_dir=str(tmp_path / name), progress=False, device="cpu", precision=name)
        model, _ = load_for_eval(config)
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16 if name == "bf16" else torch.float32}
        summaries[name] = evaluate(config)
    assert all(s["addition"]["problems"] == 4 for s in summaries.values())


def test_shard_start_matches_torch_chunk():
    assert [shard_start(10, rank, 4) for rank in range(4)] == [0, 3, 6, 9]  # pieces of 3, the last 1
    assert shard_start(2, 3, 4) == 2  # more processes than rows: an empty piece at the end
    for rows in range(1, 12):
        for world in range(1, 5):
            pieces = torch.arange(rows).chunk(world)
            starts = [int(p[0]) if len(p) else rows for p in pieces] + [rows] * (world - len(pieces))
            assert [shard_start(rows, r, world) for r in range(world)] == starts, (rows, world)


def test_bf16_adamw_steps_fsdp_sharded_parameters(tiny_model_dir):
    """FSDP2 holds parameters as DTensors: BF16AdamW steps their shards in place, with the moments
    sharded alike (so sharded checkpoints hold them), exactly as it steps the unsharded model."""
    from torch.distributed.tensor import DTensor
    from transformers import AutoModelForCausalLM

    from r1lab.training import fsdp

    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    sharded = fsdp.shard(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16), "bf16")
    try:
        sharded(input_ids=torch.tensor([[5, 9, 17, 30, 4]])).logits.float().logsumexp(-1).sum().backward()
        for p, q in zip(sharded.parameters(), plain.parameters()):
            assert isinstance(p, DTensor) and p.grad.dtype == torch.bfloat16
            q.grad = p.grad.full_tensor()  # the same gradients for both
        optimizers = [BF16AdamW(m.parameters(), lr=1e-3, weight_decay=0.1) for m in (sharded, plain)]
        for _ in range(2):
            for optimizer in optimizers:
                optimizer.step()
        for (name, p), q in zip(sharded.named_parameters(), plain.parameters()):
            assert torch.equal(p.full_tensor(), q.detach()), name
            assert isinstance(optimizers[0].state[p]["exp_avg"], DTensor)
        start = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
        assert any(not torch.equal(p.detach(), q) for p, q in zip(plain.parameters(), start.parameters()))
    finally:
        torch.distributed.destroy_process_group()  # shard's group of one


@pytest.mark.parametrize("precision_name, sharding", [("bf16", "ddp"), ("bf16", "fsdp"), ("bf16-mixed", "fsdp")])
def test_bf16_grpo_resumes_exactly(precision_name, sharding, tiny_model_dir, tmp_path, monkeypatch):
    """A run resumed from its step-2 checkpoint ends where the straight run ended, to the bit:
    precision=bf16 (BF16AdamW's rounding is a hash of the step, not a generator's state), with
    sharding=fsdp (one process) through sharded checkpoints; the bf16 reference, refreshed from
    the policy at step 2 (float32 for bf16-mixed), comes back from its snapshot."""
    import shutil

    from safetensors.torch import load_file

    from r1lab.cli import main as cli_main
    from r1lab.files import read_jsonl
    from r1lab.models import precision
    from r1lab.training.checkpoint import checkpoint_dir

    monkeypatch.setattr(precision, "_cpu_has_bf16", lambda: True)  # emulated where missing: slower only
    data = tmp_path / "prompts.jsonl"
    pairs = [(a, b) for a in range(3) for b in (1, 2)]
    data.write_text("".join(f'{{"prompt": "Compute {a} + {b}.", "answer": "{a + b}"}}\n' for a, b in pairs))
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = ["grpo", f"model={tiny_model_dir}", f"data.train={data}", "template=micro", "num_generations=3",
            "prompts_per_step=2", "max_new_tokens=8", "beta=0.04", "learning_rate=1e-3", "warmup_steps=1",
            "eval_every=0", "sample_every=0", "progress=false", "threads=1", "max_steps=3", "save_every=2",
            "keep_checkpoints=0", "ref_update_every=2", f"precision={precision_name}", f"sharding={sharding}"]
    assert cli_main([*args, f"output_dir={straight}"]) == 0
    shutil.copytree(straight, resumed)
    shutil.rmtree(checkpoint_dir(resumed, 3))
    shutil.rmtree(resumed / "final")
    assert cli_main([*args, f"output_dir={resumed}", "resume=true"]) == 0
    timing = {"step_time", "rollout_s", "train_s", "tokens_per_s", "peak_memory_mb"}
    rows = [[{k: v for k, v in r.items() if k not in timing} for r in read_jsonl(out / "metrics.jsonl")]
            for out in (straight, resumed)]
    assert rows[1] == rows[0] and [r["step"] for r in rows[0]] == [1, 2, 3]
    weights = [load_file(out / "final" / "model.safetensors") for out in (straight, resumed)]
    assert {t.dtype for t in weights[0].values()} == {torch.bfloat16 if precision_name == "bf16" else torch.float32}
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])

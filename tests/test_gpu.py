"""What only a CUDA GPU can check: bf16 on the GPU, SDPA/flash attention, FSDP on one GPU (with
CPU offload), vLLM rollouts. Marked `gpu`, so they skip where CUDA is absent (conftest.py).

    bash benchmarks/gpu_check.sh          # these tests, then a Qwen2.5-0.5B-shape GRPO step
    pytest -m gpu tests                   # these tests alone
"""

import pytest
import torch
from test_grpo_train import _args
from transformers import AutoModelForCausalLM

from r1lab.cli import main as cli_main
from r1lab.files import read_jsonl
from r1lab.models.logprobs import sequence_logprobs
from r1lab.sampling.generate import SamplingParams, generate

pytestmark = pytest.mark.gpu
TIMING = {"step_time", "rollout_s", "train_s", "tokens_per_s", "peak_memory_mb"}


def batch(device):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 400, (6, 40), generator=gen)
    mask = torch.ones_like(ids)
    mask[:3, :5] = 0  # left-padded prompts
    return ids.to(device), mask.to(device)


def test_bf16_logprobs_and_greedy_sampling_on_gpu(tiny_model_dir, tokenizer):
    cpu = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    gpu = AutoModelForCausalLM.from_pretrained(tiny_model_dir).cuda()
    ids, mask = batch("cuda")
    with torch.no_grad():
        want = sequence_logprobs(cpu, ids.cpu(), mask.cpu(), prompt_len=10)
        fp32 = sequence_logprobs(gpu, ids, mask, prompt_len=10)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = sequence_logprobs(gpu, ids, mask, prompt_len=10)
    torch.testing.assert_close(fp32.cpu(), want, atol=1e-3, rtol=0)  # TF32 matmuls may be on
    torch.testing.assert_close(bf16.cpu(), want, atol=0.1, rtol=0)
    prompts = ["1+2=", "13+48=", "Compute 7 + 8."]
    ours = generate(gpu, tokenizer, prompts, SamplingParams(max_new_tokens=12, temperature=0))
    theirs = generate(cpu, tokenizer, prompts, SamplingParams(max_new_tokens=12, temperature=0))
    assert [c[0].token_ids for c in ours] == [c[0].token_ids for c in theirs]


@pytest.mark.parametrize("kernel", ["flash", "efficient"])
def test_sdpa_kernels_match_eager_attention(tiny_model_dir, kernel):
    """The model's own forward with SDPA (one kernel forced) against eager attention, in bf16."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION}[kernel]
    models = {name: AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=name,
                                                         dtype=torch.bfloat16).cuda()
              for name in ("sdpa", "eager")}
    ids = batch("cuda")[0]  # no padding: the flash kernel takes no mask
    with torch.no_grad():
        eager = models["eager"](input_ids=ids).logits.float()
        with sdpa_kernel(backend):
            fused = models["sdpa"](input_ids=ids).logits.float()
    torch.testing.assert_close(fused, eager, atol=0.05, rtol=0.02)


def grpo(model, data, out, *extra):
    assert cli_main(["grpo", *_args(model, data, out, "max_steps=2", "device=cuda", "save_every=1", *extra)]) == 0
    return [{k: v for k, v in row.items() if k not in TIMING} for row in read_jsonl(out / "metrics.jsonl")]


def test_fsdp_on_one_gpu_matches_unsharded(tiny_model_dir, prompts_jsonl, tmp_path):
    plain = grpo(tiny_model_dir, prompts_jsonl, tmp_path / "plain")
    for extra in (["sharding=fsdp"], ["sharding=fsdp", "fsdp_cpu_offload=true"]):
        sharded = grpo(tiny_model_dir, prompts_jsonl, tmp_path / "_".join(extra), *extra)
        for a, b in zip(plain, sharded):
            for key in ("loss", "kl", "grad_norm", "reward/mean"):
                assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-5), (extra, key)
    resumed = grpo(tiny_model_dir, prompts_jsonl, tmp_path / "sharding=fsdp", "sharding=fsdp", "max_steps=3",
                   "resume=true")
    assert [r["step"] for r in resumed] == [1, 2, 3]


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16"])
def test_bf16_fsdp_step_on_gpu(tiny_model_dir, prompts_jsonl, tmp_path, precision):
    rows = grpo(tiny_model_dir, prompts_jsonl, tmp_path / precision, "sharding=fsdp", f"precision={precision}")
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)


def test_vllm_rollouts(tiny_model_dir, prompts_jsonl, tmp_path):
    pytest.importorskip("vllm")
    rows = grpo(tiny_model_dir, prompts_jsonl, tmp_path / "vllm", "rollout_backend=vllm")
    assert [r["step"] for r in rows] == [1, 2]

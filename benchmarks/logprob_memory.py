"""Peak CPU memory of the log-prob pass: `sequence_logprobs` (chunked) vs a naive log_softmax gather.

    .venv/bin/python benchmarks/logprob_memory.py [--batch 4] [--length 1024] [--vocab 32000]

A random Qwen2 with a 32k vocabulary (hidden 64, 2 layers: the vocabulary, not the body, is what
costs memory here) scores `batch` x `length` tokens without gradients, as GRPO's reference and
old-policy passes do. Each variant runs in a fresh subprocess; its peak is the growth of the
process's maximum resident set (ru_maxrss) over the pass. The naive pass holds the float32
[B, L, V] logits and their log_softmax at once (2 x 4 x 1024 x 32000 x 4 bytes = 1 GiB); the
chunked one makes `chunk_size` rows of logits at a time. The parent checks the results agree.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def build(vocab: int, seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
                         tie_word_embeddings=True)
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config).eval()


def naive_logprobs(model, input_ids, attention_mask):
    """The textbook way: full logits, full log_softmax, gather. [B, L] -> [B, L-1]"""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.float()
    return torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)


def chunked_logprobs(model, input_ids, attention_mask):
    from r1lab.models.logprobs import sequence_logprobs

    return sequence_logprobs(model, input_ids, attention_mask)


VARIANTS = {"naive": naive_logprobs, "chunked": chunked_logprobs}


def run_variant(name: str, batch: int, length: int, vocab: int, out: Path) -> None:
    """Child process: one pass of one variant; writes its peak growth and result to `out`."""
    torch.set_num_threads(1)
    model = build(vocab)
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, vocab, (batch, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    with torch.no_grad():  # warm up kernels and allocator on a short input
        VARIANTS[name](model, input_ids[:1, :16], attention_mask[:1, :16])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with torch.no_grad():
        logps = VARIANTS[name](model, input_ids, attention_mask)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.save(logps, out.with_suffix(".pt"))
    out.write_text(json.dumps({"baseline_mib": before / 1024, "peak_growth_mib": (peak - before) / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        run_variant(args.variant, args.batch, args.length, args.vocab, args.out)
        return
    results, tmp = {}, Path(tempfile.mkdtemp())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in VARIANTS:
        out = tmp / f"{name}.json"
        subprocess.run([sys.executable, __file__, "--variant", name, "--out", str(out), "--batch", str(args.batch),
                        "--length", str(args.length), "--vocab", str(args.vocab)], check=True, env=env)
        results[name] = {**json.loads(out.read_text()), "logps": torch.load(out.with_suffix(".pt"))}
    diff = (results["naive"]["logps"] - results["chunked"]["logps"]).abs().max().item()
    full = args.batch * (args.length - 1) * args.vocab * 4 / 2**20
    print(f"log-prob pass, {args.batch} x {args.length} tokens, vocab {args.vocab}, no grad, CPU "
          f"(float32 [B, L, V] logits = {full:.0f} MiB)")
    print(f"{'variant':<10}{'baseline MiB':>14}{'peak growth MiB':>17}")
    for name, r in results.items():
        print(f"{name:<10}{r['baseline_mib']:>14.0f}{r['peak_growth_mib']:>17.0f}")
    print(f"max |naive - chunked| = {diff:.2e}")


if __name__ == "__main__":
    main()

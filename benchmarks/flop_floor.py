"""The fastest a GRPO step of the benchmark's work could be on this CPU: its matmul FLOPs at the
bare matmul rate measured here, with nothing else (no attention, norms, sampling, optimiser).

    python benchmarks/flop_floor.py                     # micro template (~16-token prompts)
    python benchmarks/flop_floor.py --prompt-tokens 96  # the R1-Zero template

The work is `grpo_step.py`'s: the micro `small` model, G = 8 completions x 4 prompts, 64 new
tokens, beta > 0 (a reference pass), one inner iteration. Per completion token the linear layers
(the LM head included) cost 2N FLOPs to sample, 2N for the reference pass and 6N for the training
forward and backward, N = the linear layers' weights; each group's prompt counts once (r1lab runs
it once per group). The rates are bare `x @ w` products of the step's own shapes, one thread:
decoding multiplies G x P = 32 rows at a time, the training and reference passes all the rows of
a micro-batch of 16 sequences. Comparing the floor with TRL's measured step / 3 says whether a
3x speed-up is possible at all at that precision.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from r1lab.micro.sizes import build_model  # noqa: E402
from r1lab.micro.tokenizer import build_tokenizer, micro_corpus_sample  # noqa: E402


def matmul_rate(rows: int, shapes: list[tuple[int, int]], dtype: torch.dtype, seconds: float = 1.0) -> float:
    """GFLOP/s of `rows` x each (in, out) weight, the shapes taken in turn, best of 3 timings."""
    xs = [torch.randn(rows, i, dtype=dtype) for i, _ in shapes]
    ws = [torch.randn(i, o, dtype=dtype) for i, o in shapes]
    flops = sum(2 * rows * i * o for i, o in shapes)
    best = 0.0
    for _ in range(3):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            for x, w in zip(xs, ws):
                x @ w
            n += 1
        best = max(best, n * flops / (time.perf_counter() - start) / 1e9)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)

    model = build_model("small", build_tokenizer(micro_corpus_sample(seed=0), vocab_size=512))
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    n = sum(m.weight.numel() for m in linears)
    shapes = sorted({(m.in_features, m.out_features) for m in linears})
    rows = args.groups * args.group_size
    completion_tokens = rows * args.new_tokens
    prompt_tokens = args.groups * args.prompt_tokens  # once per group
    tokens = completion_tokens + prompt_tokens
    seq = args.prompt_tokens + args.new_tokens
    print(f"small model: {n / 1e6:.2f}M weights in linear layers; {tokens} tokens per step "
          f"({rows} x {args.new_tokens} new + {args.groups} x {args.prompt_tokens} prompt)")
    print(f"{'precision':<10}{'decode GFLOP/s':>16}{'train GFLOP/s':>15}{'sample s':>10}{'ref s':>8}{'train s':>9}"
          f"{'floor s/step':>14}")
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        decode = matmul_rate(rows, shapes, dtype)
        train = matmul_rate(16 * seq, shapes, dtype)
        sample_s = 2 * n * tokens / decode / 1e9
        ref_s = 2 * n * tokens / train / 1e9
        train_s = 6 * n * tokens / train / 1e9
        print(f"{name:<10}{decode:>16.0f}{train:>15.0f}{sample_s:>10.3f}{ref_s:>8.3f}{train_s:>9.3f}"
              f"{sample_s + ref_s + train_s:>14.3f}")


if __name__ == "__main__":
    main()

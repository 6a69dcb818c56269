"""One GRPO step of a Qwen2.5-0.5B-shape model on a GPU: peak GPU memory and tokens/s.

    python benchmarks/gpu_step.py                 # ~2-3 minutes on one H100; prints a table
    python benchmarks/gpu_step.py --runs fp32     # one configuration

The model: Qwen2's architecture at Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 query and 2
key-value heads, MLP 4864, vocabulary 151,936, tied embeddings: 494M parameters), random init,
built here and saved as a Hugging Face folder with a tokenizer of the same vocabulary (no
download). The step: 2 prompts x 4 completions x 256 new tokens (a random model rarely
samples EOS, so all 256 are made), beta 0.04, learning rate 1e-6, a reward for the text length.
Each configuration is a separate `r1lab grpo` process of 2 steps; the second step's
`step_time`, `tokens_per_s` and `peak_memory_mb` (torch.cuda.max_memory_allocated) are reported.
Without CUDA it prints that and exits 0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

RUNS = {  # name -> extra `r1lab grpo` settings (precisions: r1lab.models.precision)
    "fp32": [],
    "bf16-mixed": ["precision=bf16-mixed"],  # bf16 autocast, float32 weights and AdamW
    "bf16": ["precision=bf16"],  # bf16 weights, BF16AdamW
    "fsdp-bf16": ["sharding=fsdp", "precision=bf16-mixed"],
}
SHAPE = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
             intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=4096)
REWARD = "def chars(completions, **columns):\n    return [len(c) / 1000 for c in completions]\n"


def build(folder: Path, device: str = "cuda") -> None:
    """The random 0.5B-shape model and a tokenizer of its vocabulary, saved in `folder`: r1lab's
    micro byte-level BPE (prompts encode to real tokens) plus added tokens up to 151,936 (every id
    the model samples decodes)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from r1lab.micro.tokenizer import build_tokenizer, micro_corpus_sample

    tokenizer = build_tokenizer(micro_corpus_sample(400))
    tokenizer.add_tokens([f"<w{i}>" for i in range(len(tokenizer), SHAPE["vocab_size"])])
    ids = dict(bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(Qwen2Config(**SHAPE, **ids))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def run(name: str, root: Path) -> dict:
    out = root / name
    prompts = root / "prompts.jsonl"
    args = [sys.executable, "-m", "r1lab.cli", "grpo", f"model={root / 'model'}", f"data.train={prompts}",
            f"output_dir={out}", "template=raw", f"rewards=[{root / 'reward.py'}:chars]", "num_generations=4",
            "prompts_per_step=2", "max_new_tokens=256", "beta=0.04", "learning_rate=1e-6", "warmup_steps=0",
            "max_steps=2", "save_every=1000", "eval_every=0", "sample_every=0", "progress=false", "stop=[]",
            "micro_batch_size=8", *RUNS[name]]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        return {"run": name, "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    return {"run": name, "s/step": last["step_time"], "tokens/s": last["tokens_per_s"],
            "peak GPU MiB": last["peak_memory_mb"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_step: no CUDA GPU here, skipped")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = args.dir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        (root / "reward.py").write_text(REWARD)
        (root / "prompts.jsonl").write_text("".join(
            json.dumps({"prompt": f"Compute {i} + {7 * i} and then {3 * i} * {i + 2}.", "answer": "0"}) + "\n"
            for i in range(8)))
        if not (root / "model" / "config.json").exists():
            build(root / "model")
        results = [run(name, root) for name in args.runs]
    print(f"Qwen2.5-0.5B-shape GRPO step on {torch.cuda.get_device_name()} (2 prompts x 4 x 256 tokens):")
    for r in results:
        if "error" in r:
            print(f"  {r['run']:10s} FAILED: {r['error']}")
        else:
            print(f"  {r['run']:10s} {r['s/step']:7.2f} s/step  {r['tokens/s']:9.1f} tokens/s  "
                  f"{r['peak GPU MiB']:9.1f} MiB peak")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

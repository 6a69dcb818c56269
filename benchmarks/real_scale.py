"""One GRPO step of a real-size model: r1lab against TRL's GRPOTrainer, peak memory beside the floor.

    python benchmarks/real_scale.py --tiny             # a 2-layer, 64-wide toy, 16 tokens: every run works
    python benchmarks/real_scale.py --quick            # 2 layers, 32k vocabulary: a check in ~2 minutes, < 4 GB
    python benchmarks/real_scale.py                    # the Qwen2.5-0.5B shape (`make bench-real`): ~20 GB free
    python benchmarks/real_scale.py --shape 1.5b --runs "r1lab bf16" "r1lab LoRA"

The models are random-initialised Qwen2 models of the Qwen2.5-0.5B, 1.5B and 3B shapes, built
here (no download), with r1lab's micro tokenizer (built here too: ids past its 512 decode to
nothing) and micro addition prompts. The step: 2 prompts x 4 completions x 256 new tokens (a
random model over 151,936 tokens practically never samples the end token), beta 0.04,
one inner iteration, learning rate 1e-6, the reward `_workers.length_reward`. Each run is its own
process, one at a time (two 0.5B trainers at once would need ~25 GB): its peak RSS (on a GPU, its
peak `max_memory_allocated`) and its median seconds per step after one warm-up step. Without
TRL installed (`pip install -e ".[bench]"`, which `make bench-real` does) its run is skipped, and
so are the bf16 runs where the CPU has no native bf16. `--tiny` checks that every run works, not
how fast: its numbers mean nothing about real sizes.

The floor is what the step must hold whatever the trainer does: weights, gradients, AdamW's two
moments and the frozen reference. fp32: 4 + 4 + 8 + 4 = 20 bytes per parameter; r1lab's
`precision: bf16`: 2 + 2 + 4 + 2 = 10; LoRA: the base weights alone (the reference is the base).
"Fits in 24 GB" for the shapes not run is estimated as the floor plus the overhead measured here
(peak - floor, scaled by the activations' size: hidden x layers), and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

from grpo_step import Worker

QWEN25 = {"vocab_size": 151936, "tie_word_embeddings": True, "rms_norm_eps": 1e-6, "rope_theta": 1e6,
          "max_position_embeddings": 32768, "hidden_act": "silu"}
SHAPES = {  # the Qwen2.5 configs' shapes (hidden, layers, heads, key/value heads, MLP width)
    "0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864),
    "1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                 intermediate_size=8960),
    "3b": dict(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
               intermediate_size=11008),
}
SCALES = {  # --quick: same widths, a fraction of the bytes; --tiny: a toy of the same architecture
    "full": {},
    "quick": {"num_hidden_layers": 2, "vocab_size": 32768},
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "intermediate_size": 128, "vocab_size": 1024},
}
STEP = {"G": 4, "P": 2, "T": 256}
TINY_STEP = {"G": 4, "P": 2, "T": 16}
GB = 1e9
# name -> (worker, spec, bytes of floor per parameter: None = LoRA, the base weights' bytes)
RUNS = {
    "TRL fp32": ("trl", {"gradient_checkpointing": True}, 20),  # TRL's default: checkpointing on
    "r1lab fp32": ("r1lab", {"precision": "fp32", "gradient_checkpointing": True}, 20),
    "r1lab bf16": ("r1lab", {"precision": "bf16", "gradient_checkpointing": True}, 10),
    "r1lab LoRA": ("r1lab", {"precision": "bf16", "gradient_checkpointing": True, "lora_r": 16, "lora_alpha": 32,
                             "ref_update_every": 0}, None),
}
BUDGET_GB = 24


def build(workdir: Path, shape: str, scale: str) -> tuple[Path, Path, int]:
    """The model folder (random weights, word-level tokenizer) and prompts JSONL; (folder, data, params)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from r1lab.micro import tasks
    from r1lab.micro.tokenizer import build_tokenizer, micro_corpus_sample

    config = Qwen2Config(**{**QWEN25, **SHAPES[shape], **SCALES[scale]})
    folder = workdir / (shape + ("" if scale == "full" else f"-{scale}"))
    data = workdir / "prompts.jsonl"
    if not (folder / "config.json").exists():
        tokenizer = build_tokenizer(micro_corpus_sample())
        config.pad_token_id = config.eos_token_id = tokenizer.eos_token_id
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        del model
    if not data.exists():
        rows = [p.to_row() for p in tasks.generate("addition", "train", 64, seed=0)]
        data.write_text("".join(json.dumps({"prompt": r["prompt"], "answer": r["answer"]}) + "\n" for r in rows))
    with torch.device("meta"):
        params = sum(p.numel() for p in Qwen2ForCausalLM(config).parameters())
    return folder, data, params


def run(name: str, model: Path, data: Path, workdir: Path, steps: int, threads: int, step: dict) -> dict:
    """One trainer in its own process: warm-up + `steps` steps; its peak memory and step times."""
    import torch

    kind, extra, _ = RUNS[name]
    cuda = torch.cuda.is_available()
    spec = {"model": str(model), "data": str(data), "out": str(workdir / name.replace(" ", "_")), **step,
            "max_steps": steps + 1, "threads": threads, "micro_batch_size": step["G"] * step["P"], **extra}
    spec.update({"use_cpu": not cuda} if kind == "trl" else {"device": "cuda" if cuda else "cpu"})
    worker = Worker(name, kind, spec, workdir, threads)
    if worker.read() != "ready":
        raise RuntimeError(f"{name}: unexpected first message")
    for k in range(steps + 1):
        seconds = worker.step()
        print(f"  {name:<12s} step {k + 1}: {seconds:7.1f} s{'  (warm-up)' if k == 0 else ''}", flush=True)
    cuda_peak = _finish(worker)
    peak = cuda_peak or worker.peak_rss_mb * 2**20
    return {"s_per_step": statistics.median(worker.times[1:]), "peak_gb": peak / GB,
            "memory": "GPU max_memory_allocated" if cuda_peak else "peak RSS"}


def _finish(worker: Worker) -> float | None:
    """Stop the worker; its GPU peak in bytes if it reported one (then wait4 reads its RSS)."""
    worker.proc.stdin.write("quit\n")
    worker.proc.stdin.flush()
    line = worker.proc.stdout.readline()
    peak = float(line.split()[-1]) if line.startswith("@bench cuda_peak") else None
    worker.finish()
    return peak


def floor_gb(name: str, params: int, shape: str) -> float:
    """Bytes that the run must hold (module doc); LoRA: the bf16 base weights."""
    per_param = RUNS[name][2]
    return params * (per_param if per_param is not None else 2) / GB


def runnable(names: list[str]) -> list[str]:
    """`names` less the runs this machine can't do, each skip said in one line: TRL where it isn't
    installed, bf16 where neither the CPU nor a GPU has native bf16."""
    import importlib.util

    import torch

    from r1lab.errors import R1labError
    from r1lab.models.precision import check_supported

    keep = []
    for name in names:
        kind, extra, _ = RUNS[name]
        if kind == "trl" and importlib.util.find_spec("trl") is None:
            print(f"note: skipping '{name}': TRL is not installed (pip install -e \".[bench]\")")
            continue
        try:
            check_supported(extra.get("precision", "fp32"), "cuda" if torch.cuda.is_available() else "cpu")
        except R1labError as error:
            print(f"note: skipping '{name}': {error}")
            continue
        keep.append(name)
    return keep


def fit_estimates(results: dict, measured_shape: str, scale: str) -> dict:
    """Per shape and r1lab run: (estimated peak GB, within the budget?) from the measured overhead."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    base = SHAPES[measured_shape]
    out = {}
    for shape, dims in SHAPES.items():
        with torch.device("meta"):
            params = sum(p.numel() for p in Qwen2ForCausalLM(Qwen2Config(**{**QWEN25, **dims})).parameters())
        scale = dims["hidden_size"] * dims["num_hidden_layers"] / (base["hidden_size"] * base["num_hidden_layers"])
        for name, r in results.items():
            if not name.startswith("r1lab") or scale != "full":
                continue
            overhead = r["peak_gb"] - r["floor_gb"]
            estimate = floor_gb(name, params, shape) + overhead * (1 if shape == measured_shape else scale)
            out[f"{shape} {name}"] = {"peak_gb": estimate, "fits": estimate <= BUDGET_GB,
                                      "measured": shape == measured_shape}
    return out


def report(results: dict, estimates: dict, params: int, args, step: dict) -> None:
    trl = results.get("TRL fp32")
    scale = "" if args.scale == "full" else f" (--{args.scale})"
    print(f"\n{args.shape}{scale}: {params / 1e6:.2f}M parameters; step: "
          f"{step['P']} prompts x {step['G']} completions x {step['T']} tokens, beta 0.04; {machine(args.threads)}")
    print(f"{'run':<12}{'peak GB':>9}{'floor GB':>10}{'peak/floor':>12}{'s/step':>9}{'peak/TRL':>10}{'speed/TRL':>11}")
    for name, r in results.items():
        vs = (f"{r['peak_gb'] / trl['peak_gb']:>10.2f}{trl['s_per_step'] / r['s_per_step']:>10.2f}x"
              if trl and name != "TRL fp32" else "")
        print(f"{name:<12}{r['peak_gb']:>9.2f}{r['floor_gb']:>10.2f}{r['peak_gb'] / r['floor_gb']:>12.2f}"
              f"{r['s_per_step']:>9.1f}{vs}")
    if estimates:
        print(f"\nwithin {BUDGET_GB} GB (estimated: floor + the overhead measured on {args.shape}, scaled by "
              "hidden x layers; 'measured' where it ran):")
        for key, e in estimates.items():
            print(f"  {key:<22} {e['peak_gb']:6.1f} GB  {'fits' if e['fits'] else 'too big'}"
                  f"{'  (measured)' if e['measured'] else ''}")


def machine(threads: int) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"CPU {cpu}, {os.cpu_count()} cores, {threads} torch thread(s), torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="0.5b", choices=list(SHAPES))
    scales = parser.add_mutually_exclusive_group()
    scales.add_argument("--quick", dest="scale", action="store_const", const="quick", default="full",
                        help="2 layers and a 32,768-token vocabulary (< 4 GB)")
    scales.add_argument("--tiny", dest="scale", action="store_const", const="tiny",
                        help="a 64-wide, 2-layer toy and 16 new tokens: checks that every run works")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--steps", type=int, default=None,
                        help="measured steps per run, after one warm-up step (default 2; --tiny: 1)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--workdir", default="runs/bench-real")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    step = TINY_STEP if args.scale == "tiny" else STEP
    steps = args.steps if args.steps is not None else (1 if args.scale == "tiny" else 2)
    model, data, params = build(workdir, args.shape, args.scale)
    results = {}
    for name in runnable(args.runs):
        results[name] = run(name, model, data, workdir, steps, args.threads, step)
        results[name]["floor_gb"] = floor_gb(name, params, args.shape)
    estimates = fit_estimates(results, args.shape, args.scale)
    report(results, estimates, params, args, step)
    out = workdir / f"results-{args.shape}{'' if args.scale == 'full' else '-' + args.scale}.json"
    out.write_text(json.dumps({"shape": args.shape, "scale": args.scale, "params": params, "step": step,
                               "machine": machine(args.threads), "results": results, "estimates": estimates},
                              indent=2))
    print(f"\n(numbers in {out}; worker logs in {workdir})")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()

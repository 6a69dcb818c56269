"""The child processes of benchmarks/grpo_step.py: one GRPO trainer (r1lab or TRL) or the sampler race.

    python benchmarks/_workers.py r1lab '<json spec>'     # spoken to over stdin/stdout by grpo_step.py

A trainer worker runs the framework's own training loop and stops at the start of every step
until the parent writes "go"; it then reports the seconds since the previous "go", i.e. one whole
step of that loop (sampling, rewards, reference pass, update, logging). The parent alternates
the workers step by step, so load from other jobs falls on both alike, and each worker is its
own process, so its peak RSS is its own. Protocol lines start with "@bench "; anything else a
library prints goes to the worker's log.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

TAG = "@bench "
# GRPOConfig keys a spec may set (benchmarks/real_scale.py); the defaults otherwise
R1LAB_OPTIONAL = ("gradient_checkpointing", "max_tokens_per_micro_batch", "lora_r", "lora_alpha", "ref_update_every",
                  "device")


def length_reward(completions: list[str], **columns) -> list[float]:
    """The benchmark's reward: highest at 40 characters. Any deterministic, varied reward would do;
    this one is cheap and gives non-zero advantages on a random model, so updates really happen.

    >>> length_reward(["x" * 40, "x" * 20])
    [1.0, 0.5]
    """
    return [1.0 - min(abs(len(c) - 40) / 40, 1.0) for c in completions]


def _send(message: str) -> None:
    sys.__stdout__.write(TAG + message + "\n")
    sys.__stdout__.flush()


class Gate:
    """Called at the start of every step: reports the previous step's seconds, waits for "go"."""

    def __init__(self):
        self.started: float | None = None

    def __call__(self) -> None:
        _send("ready" if self.started is None else f"step {time.perf_counter() - self.started:.6f}")
        if sys.stdin.readline().strip() != "go":
            _send_cuda_peak()
            os._exit(0)  # the parent has its numbers; peak RSS is read by the parent (wait4)
        self.started = time.perf_counter()


def _send_cuda_peak() -> None:
    """On a GPU: the peak of allocated GPU memory, in bytes (what RSS is on a CPU)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        _send(f"cuda_peak {torch.cuda.max_memory_allocated()}")


def run_r1lab(spec: dict) -> None:
    from r1lab.grpo import collect as grpo_collect, train
    from r1lab.grpo.config import GRPOConfig, GRPOData

    config = GRPOConfig(
        model=spec["model"], data=GRPOData(train=spec["data"]), output_dir=spec["out"], template="raw",
        rewards=(f"{Path(__file__).resolve()}:length_reward",), num_generations=spec["G"],
        prompts_per_step=spec["P"], max_new_tokens=spec["T"], temperature=1.0, beta=0.04, num_iterations=1,
        aggregation="token_mean", stop=(), rollout_backend="native", seed=0, learning_rate=1e-6, warmup_steps=0,
        max_steps=spec["max_steps"], eval_every=0, sample_every=0, save_every=10**9, progress=False,
        threads=spec["threads"], micro_batch_size=spec["micro_batch_size"], precision=spec.get("precision", "fp32"),
        **{k: spec[k] for k in R1LAB_OPTIONAL if k in spec})
    gate, collect = Gate(), grpo_collect.collect

    def gated_collect(*args, **kwargs):
        gate()
        return collect(*args, **kwargs)

    grpo_collect.collect = gated_collect  # collect_step looks it up in its module at each step
    train.main(config)
    gate()  # report the last step


def run_trl(spec: dict) -> None:
    import torch
    from datasets import load_dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(spec["threads"])
    gate = Gate()

    class GateCallback(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            gate()

    args = GRPOConfig(
        output_dir=spec["out"], per_device_train_batch_size=spec["G"] * spec["P"], gradient_accumulation_steps=1,
        num_generations=spec["G"], max_completion_length=spec["T"], temperature=1.0, top_p=1.0, top_k=0, beta=0.04,
        num_iterations=1, learning_rate=1e-6, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
        gradient_checkpointing=spec["gradient_checkpointing"], use_cpu=spec.get("use_cpu", True),
        bf16=spec.get("bf16", False),
        report_to="none",
        logging_steps=1, save_strategy="no", seed=0, disable_tqdm=True, dataloader_num_workers=0,
        max_steps=spec["max_steps"])
    dataset = load_dataset("json", data_files=spec["data"], split="train")
    trainer = GRPOTrainer(model=spec["model"], reward_funcs=[length_reward], args=args, train_dataset=dataset,
                          callbacks=[GateCallback()])
    trainer.train()
    gate()


def run_sampler(spec: dict) -> None:
    """r1lab.sampling.generate against model.generate on the same 32 sequences, taking turns, each
    in fp32 and in bf16: r1lab under its bf16 autocast (r1lab.models.precision, as `precision: bf16-mixed`
    runs it), model.generate under torch.autocast and with a bf16 copy of the model."""
    import copy
    import statistics

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r1lab.models.precision import autocast
    from r1lab.sampling.generate import SamplingParams, generate

    torch.set_num_threads(spec["threads"])
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"]).eval()
    model_bf16 = copy.deepcopy(model).to(torch.bfloat16)
    rows = [json.loads(line) for line in Path(spec["data"]).read_text().splitlines()[:spec["P"]]]
    prompts = [tokenizer(r["prompt"], add_special_tokens=False)["input_ids"] for r in rows]
    G, T, eos = spec["G"], spec["T"], tokenizer.eos_token_id

    def ours(rep: int, precision: str) -> int:
        with autocast(precision, "cpu"):
            groups = generate(model, tokenizer, prompts, SamplingParams(max_new_tokens=T, n=G, seed=rep))
        return sum(len(c.token_ids) for group in groups for c in group)

    def theirs(rep: int, precision: str) -> int:
        batch = [p for p in prompts for _ in range(G)]
        width = max(len(p) for p in batch)
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        torch.manual_seed(rep)
        with torch.inference_mode(), autocast("bf16" if precision == "autocast" else "fp32", "cpu"):
            out = (model_bf16 if precision == "bf16" else model).generate(
                input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                max_new_tokens=T)
        # the tokens it generated: up to and including each row's first EOS (as r1lab counts)
        return sum(next((i + 1 for i, t in enumerate(row) if t == eos), len(row)) for row in out[:, width:].tolist())

    racers = {"r1lab": (ours, "fp32"), "r1lab bf16": (ours, "bf16"), "generate": (theirs, "fp32"),
              "generate autocast": (theirs, "autocast"), "generate bf16": (theirs, "bf16")}
    seconds: dict[str, list[float]] = {name: [] for name in racers}
    tokens: dict[str, list[int]] = {name: [] for name in racers}
    for rep in range(spec["warmup"] + spec["reps"]):
        for name in (list(racers) if rep % 2 == 0 else list(racers)[::-1]):
            fn, precision = racers[name]
            start = time.perf_counter()
            n = fn(rep, precision)
            if rep >= spec["warmup"]:
                seconds[name].append(time.perf_counter() - start)
                tokens[name].append(n)
    result = {name: {"tokens_per_s": sum(tokens[name]) / sum(seconds[name]),
                     "median_s": statistics.median(seconds[name]),
                     "tokens_per_call": sum(tokens[name]) / len(tokens[name])} for name in seconds}
    result["matmul_gflops"] = _matmul_gflops(model.config, G * len(prompts))
    result["matmul_gflops_bf16"] = _matmul_gflops(model.config, G * len(prompts), torch.bfloat16)
    result["model_gflop_per_token"] = 2 * _matmul_params(model) / 1e9
    _send("result " + json.dumps(result))


def _matmul_params(model) -> int:
    """Weights that a decode step multiplies by (the linear layers, incl. the output head)."""
    import torch

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def _matmul_gflops(config, rows: int, dtype=None) -> float:
    """GFLOP/s of F.linear (fp32, or `dtype`) on this machine for one decode step's shapes (rows x
    hidden -> MLP width), best of 5: what the hardware allows a decode step's matrix multiplies."""
    import torch
    import torch.nn.functional as F

    x = torch.randn(rows, config.hidden_size, dtype=dtype)
    w = torch.randn(config.intermediate_size, config.hidden_size, dtype=dtype)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(50):
            F.linear(x, w)
        best = min(best, (time.perf_counter() - start) / 50)
    return 2 * rows * config.hidden_size * config.intermediate_size / best / 1e9


WORKERS = {"r1lab": run_r1lab, "trl": run_trl, "sampler": run_sampler}

if __name__ == "__main__":
    name, spec = sys.argv[1], json.loads(sys.argv[2])
    sys.stdout = sys.stderr  # library prints go to the log; the protocol uses sys.__stdout__
    WORKERS[name](spec)

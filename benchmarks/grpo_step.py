"""GRPO step time of r1lab against TRL's GRPOTrainer on the same work, in one run (`make bench`).

    python benchmarks/grpo_step.py                      # ~6 minutes on 2 cores; results in runs/bench
    python benchmarks/grpo_step.py --steps 20 --threads 2 --no-scaling
    python benchmarks/grpo_step.py --template r1_zero   # long prompts (97 tokens instead of ~15)

The work: the micro `small` model (Qwen2, 4.3M parameters, random init) saved once as an HF
folder; micro addition prompts as JSONL (`prompt`, `answer`); one reward function
(`_workers.length_reward`); G = 8 completions x 4 prompts per step, 64 new tokens, temperature
1.0, beta 0.04, one inner iteration, learning rate 1e-6, seed 0, no stop strings (TRL has none).
Each trainer runs its own loop in its own process (so peak RSS is its own), and the parent lets
them take steps in turn, so load from other jobs on the machine falls on both alike. Reported:
median seconds per step after warm-up, their ratio, peak RSS, the sampler's tokens/s against
`model.generate` on the same 32 sequences (also taking turns), and how r1lab's step time grows
as G, prompts per step and new tokens double.

TRL runs twice: with gradient checkpointing off (the same FLOPs as r1lab; the ratio is taken
against this one) and with TRL's own default (on: one more forward per step, less memory).
Both also run in bf16 (`--no-bf16` skips it): r1lab with `precision: bf16-mixed` (bf16 autocast,
fp32 weights), TRL with `bf16=True` (accelerate's bf16 autocast on CPU, fp32 weights); the
sampler race adds r1lab under bf16 autocast and model.generate under autocast and in bf16.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TAG = "@bench "
BASE = {"G": 8, "P": 4, "T": 64}
# r1lab's memory knob (sequences per forward/backward; the gradient is the same): two groups of 8
# at a time holds half the activations of all 32 rows and measured no slower. TRL's is gradient
# checkpointing, measured both ways below.
R1LAB_MICRO_BATCH = 16
SCALING = [BASE, {**BASE, "G": 16}, {**BASE, "P": 8}, {**BASE, "T": 128}, {"G": 16, "P": 8, "T": 128}]


class Worker:
    """A child process from _workers.py that takes one step each time it is told to."""

    def __init__(self, name: str, kind: str, spec: dict, log_dir: Path, threads: int):
        self.name = name
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
        log = log_dir / f"{name.replace(' ', '_').replace('/', '')}.log"
        self.log = open(log, "w")  # noqa: SIM115 (the worker's stderr for its whole life; close() closes it)
        self.proc = subprocess.Popen([sys.executable, str(HERE / "_workers.py"), kind, json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env=env)
        self.times: list[float] = []
        self.peak_rss_mb = float("nan")

    def read(self) -> str:
        for line in self.proc.stdout:
            if line.startswith(TAG):
                return line[len(TAG):].strip()
        self.log.flush()
        raise RuntimeError(f"{self.name} worker exited (code {self.proc.wait()}); see {self.log.name}:\n"
                           + Path(self.log.name).read_text()[-3000:])

    def step(self) -> float:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        message = self.read()
        seconds = float(message.split()[1])
        self.times.append(seconds)
        return seconds

    def finish(self) -> None:
        """Stop the worker and read its peak RSS (ru_maxrss of this child alone, via wait4)."""
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        _, _, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = 0
        self.peak_rss_mb = usage.ru_maxrss / 1024  # Linux: kilobytes
        self.log.close()


def run_in_turns(workers: list[Worker], warmup: int, steps: int) -> None:
    """Each worker takes warmup + steps steps; turn order alternates so neither always goes first."""
    for w in workers:
        if w.read() != "ready":
            raise RuntimeError(f"{w.name}: unexpected first message")
    for k in range(warmup + steps):
        order = workers if k % 2 == 0 else workers[::-1]
        for w in order:
            seconds = w.step()
            print(f"  step {k + 1:2d} {w.name:<34s} {seconds:6.3f} s{'  (warm-up)' if k < warmup else ''}",
                  flush=True)
    for w in workers:
        w.times = w.times[warmup:]
        w.finish()


def prepare(workdir: Path, template: str) -> tuple[Path, Path, int]:
    """The model folder and the JSONL, built once and reused; returns (model, data, params)."""
    from r1lab.micro import tasks
    from r1lab.micro.sizes import build_model
    from r1lab.models.loading import count_parameters
    from r1lab.templates import render_prompt
    from r1lab.micro.tokenizer import build_tokenizer, micro_corpus_sample

    model_dir, data = workdir / "small", workdir / f"train_{template}.jsonl"
    if not (model_dir / "config.json").exists():
        tokenizer = build_tokenizer(micro_corpus_sample())
        model = build_model("small", tokenizer, seed=0)
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    if not data.exists():
        rows = [p.to_row() for p in tasks.generate("addition", "train", 2000, seed=0)]
        data.write_text("".join(json.dumps({"prompt": render_prompt(template, r["prompt"]), "answer": r["answer"]})
                                + "\n" for r in rows))
    from transformers import AutoConfig, AutoModelForCausalLM

    params = count_parameters(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir)))
    return model_dir, data, params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="measured steps per trainer (after warm-up)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per worker (1: steadiest on a shared 2-core machine)")
    parser.add_argument("--template", default="micro", choices=("micro", "r1_zero"))
    parser.add_argument("--scaling-steps", type=int, default=6)
    parser.add_argument("--no-scaling", action="store_true")
    parser.add_argument("--no-trl-default", action="store_true", help="skip TRL with gradient checkpointing on")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 runs of both trainers")
    parser.add_argument("--workdir", default="runs/bench")
    args = parser.parse_args()

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if not args.no_bf16:
        from r1lab.errors import R1labError
        from r1lab.models.precision import check_supported

        try:
            check_supported("bf16-mixed", "cpu")
        except R1labError as error:
            print(f"note: {error}: skipping the bf16 trainer runs")
            args.no_bf16 = True
    model_dir, data, params = prepare(workdir, args.template)
    common = {"model": str(model_dir.resolve()), "data": str(data.resolve()), "threads": args.threads,
              "max_steps": args.warmup + args.steps + 2, "micro_batch_size": R1LAB_MICRO_BATCH}
    results: dict = {"machine": machine(args.threads), "params": params, "template": args.template, **BASE}

    print(f"GRPO step: micro `small` model ({params / 1e6:.1f}M params), G={BASE['G']} x {BASE['P']} prompts, "
          f"{BASE['T']} new tokens, T=1.0, beta=0.04, mu=1, template {args.template}, {args.threads} thread(s)")
    trainers = [Worker("r1lab", "r1lab", {**common, **BASE, "out": str(workdir / "r1lab")}, workdir, args.threads),
                Worker("TRL GRPOTrainer", "trl", {**common, **BASE, "out": str(workdir / "trl"),
                                                  "gradient_checkpointing": False}, workdir, args.threads)]
    if not args.no_trl_default:
        trainers.append(Worker("TRL GRPOTrainer (grad. checkpointing)", "trl",
                               {**common, **BASE, "out": str(workdir / "trl_gc"), "gradient_checkpointing": True},
                               workdir, args.threads))
    if not args.no_bf16:
        trainers += [Worker("r1lab bf16", "r1lab", {**common, **BASE, "out": str(workdir / "r1lab_bf16"),
                                                    "precision": "bf16-mixed"}, workdir, args.threads),
                     Worker("TRL GRPOTrainer bf16", "trl", {**common, **BASE, "out": str(workdir / "trl_bf16"),
                                                            "gradient_checkpointing": False, "bf16": True},
                            workdir, args.threads)]
    run_in_turns(trainers, args.warmup, args.steps)
    results["trainers"] = {w.name: {"median_s": statistics.median(w.times), "min_s": min(w.times),
                                    "max_s": max(w.times), "peak_rss_mb": w.peak_rss_mb} for w in trainers}

    print("sampler race: r1lab.sampling.generate vs model.generate ...", flush=True)
    sampler = Worker("sampler", "sampler", {**common, **BASE, "warmup": 2, "reps": 10}, workdir, args.threads)
    results["sampler"] = json.loads(sampler.read().removeprefix("result "))
    sampler.finish()

    if not args.no_scaling:
        print("scaling: r1lab step time as G, prompts per step and new tokens double ...", flush=True)
        scaled = [Worker(f"r1lab G={c['G']} P={c['P']} T={c['T']}", "r1lab",
                         {**common, **c, "out": str(workdir / f"scale_{c['G']}_{c['P']}_{c['T']}"),
                          "max_steps": 2 + args.scaling_steps + 2}, workdir, args.threads) for c in SCALING]
        run_in_turns(scaled, 2, args.scaling_steps)
        results["scaling"] = [{**c, "median_s": statistics.median(w.times)} for c, w in zip(SCALING, scaled)]

    report(results)
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\n(numbers in {workdir / 'results.json'}; worker logs in {workdir})")


def report(results: dict) -> None:
    print(f"\nmachine: {results['machine']}")
    trainers = results["trainers"]
    print(f"\n{'trainer':<40s} {'median s/step':>13s} {'min-max':>13s} {'peak RSS MB':>12s}")
    for name, r in trainers.items():
        print(f"{name:<40s} {r['median_s']:13.3f} {r['min_s']:6.2f}-{r['max_s']:<6.2f} {r['peak_rss_mb']:12.0f}")
    for ours in ("r1lab", "r1lab bf16"):
        for name, r in trainers.items():
            if ours in trainers and not name.startswith("r1lab"):
                print(f"{ours + ' speed-up over ' + name:<64s} {r['median_s'] / trainers[ours]['median_s']:5.2f}x")
    s = results["sampler"]
    print(f"\nsampler, {results['G'] * results['P']} sequences x {results['T']} new tokens "
          f"(temperature 1.0, tokens counted up to each EOS):")
    labels = {"r1lab": "r1lab.sampling.generate", "r1lab bf16": "r1lab, bf16 autocast", "generate": "model.generate",
              "generate autocast": "model.generate, bf16 autocast", "generate bf16": "model.generate, bf16 model"}
    for name, label in labels.items():
        print(f"  {label:<30s} {s[name]['tokens_per_s']:8.0f} tokens/s  ({s[name]['median_s']:.3f} s per call, "
              f"{s[name]['tokens_per_call']:.0f} tokens)")
    for ours in ("r1lab", "r1lab bf16"):
        ratios = ", ".join(f"{s[ours]['tokens_per_s'] / s[name]['tokens_per_s']:.2f}x {labels[name]}"
                           for name in ("generate", "generate autocast", "generate bf16"))
        achieved = s[ours]["tokens_per_s"] * s["model_gflop_per_token"]
        print(f"  {labels[ours]}: {ratios}; matmuls at {achieved:.0f} GFLOP/s")
    print(f"  one bare matmul of a decode step's shape here: {s['matmul_gflops']:.0f} GFLOP/s fp32, "
          f"{s['matmul_gflops_bf16']:.0f} GFLOP/s bf16")
    if "scaling" in results:
        base = results["scaling"][0]
        print(f"\nscaling (r1lab): {'G':>3s} {'P':>3s} {'T':>4s} {'s/step':>8s} {'work':>6s} {'time':>6s} "
              f"{'time/work':>10s}")
        for r in results["scaling"]:
            work = r["G"] * r["P"] * r["T"] / (base["G"] * base["P"] * base["T"])
            time_ratio = r["median_s"] / base["median_s"]
            print(f"{'':17s}{r['G']:3d} {r['P']:3d} {r['T']:4d} {r['median_s']:8.3f} {work:5.0f}x {time_ratio:5.2f}x "
                  f"{time_ratio / work:10.2f}")


def machine(threads: int) -> str:
    import torch
    import transformers

    try:
        import trl

        trl_version = trl.__version__
    except ImportError:
        trl_version = "not installed"
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, {threads} torch thread(s); python {platform.python_version()}, "
            f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl_version}")


if __name__ == "__main__":
    main()

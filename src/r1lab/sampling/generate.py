"""Batched sampling with a KV cache for any Hugging Face causal LM.

Used for evaluation and for GRPO rollouts, where generation is most of the time on a CPU:

    params = SamplingParams(max_new_tokens=128, temperature=1.0, n=8, stop=("</answer>",), seed=3)
    groups = generate(model, tokenizer, prompts, params)       # [len(prompts)][n] Completions

How it works: prompts are left-padded with explicit position ids (so a padded row computes what
it would alone), each distinct prompt is prefilled once and its KV cache is shared by its n
samples (copied n times for short prompts), and finished sequences leave the decode batch.
Qwen2, Qwen3, Llama and Mistral models decode through r1lab.models.fast_decoder (a hand-written
forward with a pre-allocated KV cache and oneDNN-packed weights, equal to the model's own up to
float rounding); any other model through its own forward and a transformers cache. Log-probs are
those of the temperature-scaled distribution *before* top-k/top-p truncation, the convention of
TRL and verl for training log-probs, so `r1lab.models.logprobs.sequence_logprobs(...,
temperature=T)` (the training forward) reproduces them. Sampling follows the caller's autocast
(r1lab.models.precision): under bf16 autocast the matmuls run in bf16 and the output projection
in float32, so log-probs always come from float32 logits.

Measured (benchmarks/README.md, 1 thread of a 2-core EPYC, 4.3M Qwen2, 32 sequences x 64
tokens): 1.5x the tokens/s of `model.generate` on the same batch in fp32, 1.9x under bf16
autocast (3.2x with 95-token prompts).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from r1lab.errors import R1labError
from r1lab.models.conventions import position_ids
from r1lab.models.fast_decoder import LeanModel
from r1lab.models.logprobs import gather_logprobs
from r1lab.models.precision import autocast_dtype

# Finished rows leave the decode batch once they are this fraction of it: each drop copies the KV
# cache, so dropping one row at a time costs more than it saves (measured: 0.125-0.5 all within
# noise, never dropping 3x slower on ragged lengths).
DROP_FRACTION = 0.25
# Prompts at least this long keep one copy of their keys and values for their n samples instead
# of n (kv_cache.KVCache.share_prefix). Measured per generate call (32 rows = 4 prompts x 8, 64 new
# tokens, 1 thread): 95-token prompts 15-18% faster, 16-token prompts 4% slower (the per-step
# stacking costs more than the short prefix saves); the crossover, interpolated, is ~28 tokens.
SHARE_PREFIX_MIN = 32
# New tokens the decode cache has room for at first (a model's own cache grows as it likes). A
# long max_new_tokens (32k for a reasoning model) would otherwise reserve keys and values for the
# longest sequence allowed, most of it never written when samples stop early.
INITIAL_NEW_TOKENS = 1024
DEFAULT_BATCH_SIZE = 256  # sequences decoded together; more rows per step amortise per-step overhead


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    n: int = 1  # samples per prompt
    stop: tuple[str, ...] = ()  # stop strings, kept in the output text (e.g. "</answer>")
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.stop, str):
            raise ValueError(f"stop must be a tuple of strings, e.g. ({self.stop!r},), not a string")
        object.__setattr__(self, "stop", tuple(self.stop))
        checks = [
            (_is_int(self.max_new_tokens) and self.max_new_tokens >= 1, "max_new_tokens must be an integer >= 1"),
            (math.isfinite(self.temperature) and self.temperature >= 0, "temperature must be >= 0 (0 = greedy)"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (_is_int(self.top_k) and self.top_k >= 0, "top_k must be an integer >= 0 (0 = off)"),
            (_is_int(self.n) and self.n >= 1, "n must be an integer >= 1"),
            (all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings"),
            (_is_int(self.seed), "seed must be an integer"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"SamplingParams: {message} (got {self})")


@dataclass(frozen=True)
class Completion:
    prompt_index: int
    text: str  # decode(token_ids, skip_special_tokens=True)
    token_ids: tuple[int, ...]  # generated tokens, including the EOS token if it stopped on one
    logprobs: tuple[float, ...]  # per generated token: log_softmax(logits / temperature) of the token
    finish_reason: str  # "eos" | "stop" | "length"
    forced: tuple[int, ...] = ()  # indices of tokens a token_hook wrote instead of the sampled one


def generate(model, tokenizer, prompts: Sequence[str] | Sequence[Sequence[int]], params: SamplingParams,
             batch_size: int | None = None, progress: bool = False,
             seeds: Sequence[int] | None = None,
             token_hook: Callable[[list[int], int], int | None] | None = None) -> list[list[Completion]]:
    """[len(prompts)][params.n] completions.

    Strings are tokenized without special tokens; token id lists are used as they are. Prompts are
    decoded in length-sorted chunks of about `batch_size` sequences (prompts x n). The same call
    (prompts, params, batch_size) gives the same samples; a prompt's samples depend on the other
    prompts in its chunk, as in any batched sampler. The model is put in eval mode for the call.

    `seeds` (one per prompt) gives each prompt its own random stream instead (params.seed is then
    unused): its samples no longer depend on the other prompts, the chunking or `batch_size`, up to
    float rounding in the batched forward. Data-parallel GRPO relies on it: a prompt samples the
    same completions whichever process it lands on.

    `token_hook(ids so far, sampled token)` may return a token to write instead (an environment
    acting on the text, e.g. r1lab.micro.step_noise.StepNoise); the model continues from it, its
    log-prob is the model's for the written token, and `Completion.forced` lists its index.
    """
    prompt_ids = encode_prompts(tokenizer, prompts)
    if seeds is not None and len(seeds) != len(prompt_ids):
        raise ValueError(f"seeds has {len(seeds)} entries for {len(prompt_ids)} prompts")
    # Greedy samples are all the same: decode each prompt once and copy it n times.
    n_decode = 1 if params.temperature == 0 else params.n
    per_chunk = max(1, (batch_size or DEFAULT_BATCH_SIZE) // n_decode)
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))  # less padding per chunk
    decoder = _Decoder(model, tokenizer, params, n_decode, token_hook)
    results: list[list[Completion]] = [[] for _ in prompt_ids]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), tqdm(total=len(prompt_ids) * params.n, disable=not progress,
                                          desc="generate", unit="seq") as bar:
            def on_finish(finished: int) -> None:
                bar.update(finished * params.n // n_decode)

            for start in range(0, len(order), per_chunk):
                chunk = order[start:start + per_chunk]
                sequences = decoder.run([prompt_ids[i] for i in chunk], on_finish,
                                        None if seeds is None else [seeds[i] for i in chunk])
                texts = tokenizer.batch_decode([s[0] for s in sequences], skip_special_tokens=True)
                for j, ((ids, logps, reason), text) in enumerate(zip(sequences, texts)):
                    index = chunk[j // n_decode]
                    completion = Completion(index, text, tuple(ids), tuple(logps), reason, tuple(decoder.forced[j]))
                    results[index].extend([completion] * (params.n // n_decode))
    finally:
        model.train(was_training)
    return results


class _Decoder:
    """The decode loop for one chunk of prompts; holds what stays fixed across chunks."""

    def __init__(self, model, tokenizer, params: SamplingParams, n: int, token_hook=None):
        self.model, self.tokenizer, self.params, self.n = model, tokenizer, params, n
        self.token_hook = token_hook
        self.forced: list[list[int]] = []  # per sequence of the last run: indices the hook wrote
        self.device = _model_device(model)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = _eos_ids(model, tokenizer)
        # A new stop string must end in the newest token; every token decodes to >= 1 byte, so the
        # last (longest stop in bytes + margin) tokens hold it. Decoding only that tail keeps it cheap.
        self.stop_window = max((len(s.encode()) for s in params.stop), default=0) + 3
        self._end_cache: dict[int, bool] = {}
        self.generator = torch.Generator(device=self.device).manual_seed(params.seed)
        self.forward_kwargs = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
        # Under the caller's bf16 autocast (r1lab.models.precision) the packed weights are bf16 copies,
        # made here, once per call: after every GRPO update. None: the model's own forward.
        self.lean = LeanModel.from_model(model, packed=True, dtype=autocast_dtype(self.device))

    def run(self, prompts: list[list[int]], on_finish,
            seeds: list[int] | None = None) -> list[tuple[list[int], list[float], str]]:
        """(token ids, log-probs, finish reason) per sequence, n consecutive sequences per prompt.

        With `seeds` (one per prompt), sequence s draws its t-th token with uniforms[s, t]."""
        uniforms = None if seeds is None else self._uniforms(seeds)
        input_ids, mask = _left_pad(prompts, self.pad_id, self.device)
        positions = position_ids(mask)
        width = input_ids.shape[1]
        # Room for INITIAL_NEW_TOKENS new tokens; the cache grows (doubling) if rows run longer.
        stepper = self._stepper(len(prompts), capacity=width + min(self.params.max_new_tokens, INITIAL_NEW_TOKENS))
        logits = stepper.forward(input_ids, mask, positions)
        if self.n > 1:  # prefill once; each prompt's n samples continue its cache
            expand = torch.arange(len(prompts), device=self.device).repeat_interleave(self.n)
            if width >= SHARE_PREFIX_MIN:
                stepper.share(expand, self.n)
            else:
                stepper.select(expand)
            logits, mask, positions = logits[expand], mask[expand], positions[expand]
        # Generated tokens are never padding: the mask of step t is a prefix of this one. [B, W + T]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], self.params.max_new_tokens)], dim=1)
        next_pos = positions[:, -1:] + 1  # [B, 1]
        sequences = [([], [], "length") for _ in range(len(prompts) * self.n)]
        self.forced = [[] for _ in sequences]
        rows: list[int | None] = list(range(len(sequences)))  # sequence of each batch row; None: finished
        for step in range(self.params.max_new_tokens):
            u = None if uniforms is None else uniforms[[r or 0 for r in rows], step]  # finished rows: any u
            tokens, logps = _sample(logits, self.params, self.generator, u)
            if self.token_hook is not None:
                tokens, logps = self._apply_hook(tokens, logps, logits, rows, sequences)
            running = self._record(tokens.tolist(), logps.tolist(), rows, sequences)
            last = step + 1 == self.params.max_new_tokens
            on_finish(sum(r is not None for r in rows) - (0 if last else len(running)))
            if not running or last:
                break
            if len(running) < len(rows):
                still = set(running)
                rows = [r if i in still else None for i, r in enumerate(rows)]
            if len(rows) - len(running) >= max(1, int(DROP_FRACTION * len(rows))):
                # Drop finished rows: a copy of the KV cache now, cheaper steps from then on.
                keep = torch.tensor(running, device=self.device)
                stepper.select(keep)
                mask, next_pos, tokens = mask[keep], next_pos[keep], tokens[keep]
                rows = [rows[i] for i in running]
            logits = stepper.forward(tokens[:, None], mask[:, :width + step + 1], next_pos)
            next_pos = next_pos + 1
        return sequences

    def _uniforms(self, seeds: list[int]) -> Tensor:
        """[len(seeds) * n, max_new_tokens] uniforms, n rows per prompt, each prompt from its own
        seeded CPU generator (so also the same on any device)."""
        shape = (self.n, self.params.max_new_tokens)
        draws = [torch.rand(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
        return torch.cat(draws).to(self.device)

    def _apply_hook(self, tokens: Tensor, logps: Tensor, logits: Tensor, rows: list[int | None],
                    sequences) -> tuple[Tensor, Tensor]:
        """Let the token hook overwrite sampled tokens [B]; their log-probs become the model's for
        the written token (logits [B, V]) and their indices are kept in self.forced."""
        changed = {}
        for row, (seq, token) in enumerate(zip(rows, tokens.tolist())):
            if seq is not None:
                new = self.token_hook(sequences[seq][0], token)
                if new is not None:
                    changed[row] = new
                    self.forced[seq].append(len(sequences[seq][0]))
        if not changed:
            return tokens, logps
        index = torch.tensor(list(changed), device=tokens.device)
        tokens, logps = tokens.clone(), logps.clone()
        tokens[index] = torch.tensor(list(changed.values()), device=tokens.device)
        scale = self.params.temperature or 1.0
        logps[index] = gather_logprobs(logits[index] / scale, tokens[index])
        return tokens, logps

    def _stepper(self, batch: int, capacity: int):
        if self.lean is not None:
            return _LeanStepper(self.lean, batch, capacity)
        return _ModelStepper(self.model, capacity, self.forward_kwargs)

    def _record(self, tokens: list[int], logps: list[float], rows: list[int | None], sequences) -> list[int]:
        """Append each running row's new token; return the batch rows still running."""
        running = []
        for row, (seq, token, logp) in enumerate(zip(rows, tokens, logps)):
            if seq is None:  # finished earlier, still in the batch until the next compaction
                continue
            ids, logprobs, _ = sequences[seq]
            ids.append(token)
            logprobs.append(logp)
            if token in self.eos_ids:
                sequences[seq] = (ids, logprobs, "eos")
            elif self.params.stop and self._may_end_stop(token) and self._hits_stop(ids):
                sequences[seq] = (ids, logprobs, "stop")
            else:
                running.append(row)
        return running

    def _may_end_stop(self, token: int) -> bool:
        """False when `token` can't be the one that completes a stop string, so the tail decode is
        skipped (it was ~7% of a decode step). A new occurrence ends inside the new token's text,
        so that text holds the stop's last character, unless the token is a partial UTF-8 byte
        sequence (decodes to U+FFFD alone) or the stop ends in whitespace (decoders move spaces)."""
        may = self._end_cache.get(token)
        if may is None:
            text = self.tokenizer.decode([token], skip_special_tokens=True)
            may = "\ufffd" in text or any(s[-1].isspace() or s[-1] in text for s in self.params.stop)
            self._end_cache[token] = may
        return may

    def _hits_stop(self, ids: list[int]) -> bool:
        tail = self.tokenizer.decode(ids[-self.stop_window:], skip_special_tokens=True)
        return any(s in tail for s in self.params.stop)


class _ModelStepper:
    """Decode steps through the model's own forward and a DynamicCache (any causal LM)."""

    def __init__(self, model, capacity: int, forward_kwargs: dict):
        self.model, self.forward_kwargs = model, forward_kwargs
        self.cache = _new_cache(model, capacity)
        # transformers 5.25 renamed the forward's `past_key_values` to `cache` (the old name warns)
        self.cache_argument = "cache" if _accepts(model, "cache") else "past_key_values"

    def forward(self, input_ids: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        """Logits of the last position, [B, V] float32; the cache grows by input_ids' length."""
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                         use_cache=True, **{self.cache_argument: self.cache}, **self.forward_kwargs)
        return out.logits[:, -1].float()

    def select(self, rows: Tensor) -> None:
        self.cache.reorder_cache(rows)

    def share(self, rows: Tensor, per_prompt: int) -> None:
        self.select(rows)  # a copy per row: transformers' attention reads one cache per row


class _LeanStepper:
    """Decode steps through r1lab.models.fast_decoder's forward of a known architecture (same logits, less overhead)."""

    def __init__(self, lean: LeanModel, batch: int, capacity: int):
        self.lean, self.cache = lean, lean.new_cache(batch, capacity)

    def forward(self, input_ids: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        return self.lean.forward(input_ids, positions, mask, self.cache).float()

    def select(self, rows: Tensor) -> None:
        self.cache.select(rows)

    def share(self, rows: Tensor, per_prompt: int) -> None:
        self.cache.share_prefix(rows, per_prompt)  # the prompt's keys and values stay once per prompt


def _sample(logits: Tensor, params: SamplingParams, generator: torch.Generator,
            uniforms: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Next token and its log-prob for each row. logits: [B, V] float32 -> ([B], [B]).
    `uniforms` [B]: each row's draw in [0, 1), instead of drawing from `generator`."""
    if params.temperature == 0:
        tokens = logits.argmax(dim=-1)
        return tokens, gather_logprobs(logits, tokens)
    scaled = logits / params.temperature
    probs = _truncate(scaled, params.top_k, params.top_p).softmax(dim=-1)
    tokens = _inverse_cdf_sample(probs, generator, uniforms)
    return tokens, gather_logprobs(scaled, tokens)


def _inverse_cdf_sample(probs: Tensor, generator: torch.Generator, uniforms: Tensor | None = None) -> Tensor:
    """One draw per row of probs [B, V] -> [B]: the first token whose cumulative mass exceeds u.

    Same distribution as torch.multinomial, which draws V exponentials per row: on a 32 x 454
    batch that was 0.3 ms of a ~6 ms decode step; this draws one uniform per row. u is scaled by,
    and kept strictly below, the row's total, so float rounding in the cumsum can't push it past
    the end; a token with zero probability adds nothing to the cumsum, so it is never the first
    to exceed u.
    """
    cdf = probs.cumsum(dim=-1)
    total = cdf[:, -1:]
    if uniforms is None:
        uniforms = torch.rand(probs.shape[0], generator=generator, device=probs.device, dtype=probs.dtype)
    u = uniforms.to(probs.dtype)[:, None] * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True).squeeze(1)


def _truncate(logits: Tensor, top_k: int, top_p: float) -> Tensor:
    """Set logits outside the top-k, then outside the top-p nucleus of what is left, to -inf.

    Same order as transformers' and vLLM's samplers: top-p is taken over the top-k renormalised.
    The nucleus is the smallest set of most likely tokens whose mass reaches top_p (at least one).
    """
    vocab = logits.shape[-1]
    if (top_k == 0 or top_k >= vocab) and top_p >= 1:
        return logits
    if top_p >= 1:  # top-k alone: no sort needed
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        return logits.masked_fill(logits < kth, float("-inf"))
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    if 0 < top_k < vocab:
        sorted_logits[:, top_k:] = float("-inf")
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)



def _new_cache(model, capacity: int) -> DynamicCache:
    """A DynamicCache for `model`; its plain full-attention layers write into buffers of `capacity`
    positions instead of concatenating every step (other layer kinds are kept as they are)."""
    cache = DynamicCache(config=model.config)
    cache.layers = [_BufferedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


class _BufferedLayer(DynamicLayer):
    """A DynamicLayer that writes into a buffer preallocated for the whole generation.

    `keys`/`values` are views of the first `length` positions, so the attention code sees what a
    DynamicLayer gives it, without a [B, H, L, D] copy per token.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        B, H, _, _ = key_states.shape
        self.key_buffer = key_states.new_empty(B, H, self.capacity, key_states.shape[-1])
        self.value_buffer = value_states.new_empty(B, H, self.capacity, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:  # rows ran longer than the room made at first: double it
            self.capacity = max(end, 2 * self.capacity)
            self.key_buffer = _regrown(self.key_buffer, self.capacity, self.length)
            self.value_buffer = _regrown(self.value_buffer, self.capacity, self.length)
        self.key_buffer[:, :, self.length:end] = key_states
        self.value_buffer[:, :, self.length:end] = value_states
        self.length = end
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def reorder_cache(self, beam_idx: Tensor) -> None:
        """Keep (or repeat) batch rows `beam_idx`, copying only the positions filled so far."""
        if self.is_initialized:
            self.key_buffer = _select_rows(self.key_buffer, beam_idx, self.length)
            self.value_buffer = _select_rows(self.value_buffer, beam_idx, self.length)
            self.keys, self.values = self.key_buffer[:, :, :self.length], self.value_buffer[:, :, :self.length]


def _regrown(buffer: Tensor, capacity: int, length: int) -> Tensor:
    """buffer [B, H, C, D] copied into a [B, H, capacity, D] one, its first `length` positions."""
    out = buffer.new_empty(*buffer.shape[:2], capacity, buffer.shape[3])
    out[:, :, :length] = buffer[:, :, :length]
    return out


def _select_rows(buffer: Tensor, rows: Tensor, length: int) -> Tensor:
    """A new [len(rows), H, capacity, D] buffer holding buffer[rows, :, :length]."""
    out = buffer.new_empty(len(rows), *buffer.shape[1:])
    out[:, :, :length] = buffer[:, :, :length].index_select(0, rows)
    return out


def encode_prompts(tokenizer, prompts) -> list[list[int]]:
    """Token ids of each prompt: strings tokenised without special tokens, or id lists as given; an
    empty prompt is an R1labError (a model needs a token to continue from)."""
    if len(prompts) == 0:
        return []
    if all(isinstance(p, str) for p in prompts):
        ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    elif any(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be all strings or all token id lists, not a mix")
    else:
        ids = [[int(t) for t in p] for p in prompts]
    for i, p in enumerate(ids):
        if not p:
            raise R1labError(f"prompt {i} is empty: a model needs at least one token to continue from")
    return ids


def _left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[Tensor, Tensor]:
    """Left-padded input ids and attention mask, both [B, max_len] long."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device)



def _eos_ids(model, tokenizer) -> frozenset[int]:
    ids = {tokenizer.eos_token_id}
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(config_eos if isinstance(config_eos, (list, tuple)) else [config_eos])
    return frozenset(i for i in ids if i is not None)


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _accepts(model, argument: str) -> bool:
    try:
        return argument in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

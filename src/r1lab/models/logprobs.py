"""The training forward: per-token log-probs of sequences under a causal LM.

    logp = sequence_logprobs(model, input_ids, attention_mask)            # [B, L-1] float32
    logp = sequence_logprobs(policy, ids, mask, completion_mask, temperature=1.0, prompt_len=P)  # GRPO

Any Hugging Face causal LM goes through its own forward, the logits made `chunk_size` tokens at a
time; for a GRPO batch (`prompt_len`) on an architecture r1lab.models.fast_decoder knows, each
distinct prompt runs once for all the completions that share it. Log-probs are those of the
temperature-scaled distribution before top-k/top-p truncation, the sampler's convention (TRL's and
verl's for training log-probs). Under the caller's bf16 autocast (r1lab.models.precision) the
matmuls run in bf16 and the output projection in float32, so log-probs come from float32 logits.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel

from r1lab.models import fast_decoder
from r1lab.models.conventions import LOGIT_POSTPROCESSING, position_ids
from r1lab.models.precision import float32_head

# Log-prob chunks: at most this many float32 logits at once (128 MB: 220 rows of a 151,936-token
# vocabulary), and recomputed in the backward from this many logits per forward (64 MB).
LOGIT_CHUNK_ELEMENTS = 1 << 25
LOGIT_RECOMPUTE_MIN = 1 << 24

# Log-prob chunks: at most this many float32 logits at once (128 MB: 220 rows of a 151,936-token
# vocabulary), and recomputed in the backward from this many logits per forward (64 MB).
LOGIT_CHUNK_ELEMENTS = 1 << 25
LOGIT_RECOMPUTE_MIN = 1 << 24


def gather_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log_softmax(logits)[..., token] without materialising the log_softmax. [..., V], [...] -> [...]"""
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(dim=-1)

def sequence_logprobs(model, input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor | None = None,
                      temperature: float = 1.0, chunk_size: int = 1024, prompt_len: int | None = None,
                      with_entropy: bool = False, entropy_grad: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Per-token log-probs of input_ids[:, 1:] under the model: [B, L] -> [B, L-1] float32.

    Batches are left-padded (attention_mask [B, L]); positions come from the mask, so a padded row
    gives what it would alone. Logits are divided by `temperature` (0 means 1: greedy sampling used
    the raw logits). `completion_mask` [B, L-1] (1 where the target is a completion token) skips the
    output projection for the columns before the first completion token and zeroes masked entries.
    Logits are made `chunk_size` tokens at a time, so no float32 [B, L, V] tensor exists at once on
    models whose head is a plain linear layer. No inference_mode inside: gradients flow if enabled.

    `prompt_len`: columns [0, prompt_len) hold left-padded prompts and the rest right-padded
    completions (a GRPO rollout). Rows with equal prompts then share one run of their prompt on
    architectures r1lab.models.fast_decoder knows (G completions per prompt: the prompt's share of the work is
    done once, not G times); prompt columns and padding targets get log-prob 0.

    `with_entropy`: also return the entropy [B, L-1] float32 of each position's (tempered)
    distribution, H = logsumexp(z) - sum_v softmax(z)_v z_v, made chunk by chunk from the same
    logits (0 where the log-prob is 0 by the rules above). It has a gradient only with
    `entropy_grad` (an entropy bonus); otherwise it costs no autograd memory.
    """
    B, L = input_ids.shape
    if completion_mask is not None and completion_mask.shape != (B, L - 1):
        raise ValueError(f"completion_mask must have shape {(B, L - 1)} (targets), got {tuple(completion_mask.shape)}")
    scale = 1.0 if temperature == 0 else temperature
    entropy = _EntropyMode(with_entropy, entropy_grad)
    rollout = prompt_len is not None and 0 < prompt_len < L
    if rollout and fast_decoder.supports(model):
        logps, ent = _shared_prompt_logprobs(model, input_ids, attention_mask, prompt_len, scale, chunk_size, entropy)
    else:
        logps, ent = _full_logprobs(model, input_ids, attention_mask, completion_mask, scale, chunk_size, entropy)
    if rollout:  # the same zeros whichever path ran: prompt columns and padding targets
        logps = logps.masked_fill(attention_mask[:, 1:] == 0, 0.0)
        logps[:, :prompt_len - 1] = 0.0
    if completion_mask is not None:
        logps = logps.masked_fill(~completion_mask.bool(), 0.0)
        ent = ent.masked_fill(~completion_mask.bool(), 0.0) if with_entropy else ent
    return (logps, ent) if with_entropy else logps


class _EntropyMode(NamedTuple):
    wanted: bool = False  # compute the entropy alongside the log-probs
    grad: bool = False  # with autograd (an entropy bonus), else under no_grad


def _padded(pieces: Tensor | None, B: int, left: int) -> Tensor | None:
    """[B, T] -> [B, left + T] with `left` zero columns in front (None stays None)."""
    return None if pieces is None else torch.cat([pieces.new_zeros(B, left), pieces], dim=1)

def _full_logprobs(model, input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor | None, scale: float,
                   chunk_size: int, entropy: _EntropyMode) -> tuple[Tensor, Tensor | None]:
    """sequence_logprobs through the model's own forward (any causal LM). [B, L] -> [B, L-1] (x2)"""
    B, L = input_ids.shape
    start = 0
    if completion_mask is not None:
        columns = completion_mask.bool().any(dim=0).nonzero()
        start = int(columns[0]) if len(columns) else L - 1
    hidden, head = _hidden_and_head(model, input_ids, attention_mask)  # hidden [B, L, H] or logits if head is None
    logps, ent = _chunked_logprobs(hidden[:, start:L - 1], input_ids[:, start + 1:], head, scale, chunk_size, entropy)
    return _padded(logps, B, start), _padded(ent, B, start)


def _shared_prompt_logprobs(model, input_ids: Tensor, attention_mask: Tensor, prompt_len: int, scale: float,
                            chunk_size: int, entropy: _EntropyMode) -> tuple[Tensor, Tensor | None]:
    """sequence_logprobs with each distinct prompt run once (see there). [B, L] -> [B, L-1] (x2)"""
    B, L = input_ids.shape
    prompt_mask = attention_mask[:, :prompt_len]
    prompts = input_ids[:, :prompt_len].masked_fill(prompt_mask == 0, -1)  # pad ids don't make prompts differ
    distinct, owner = torch.unique(prompts, dim=0, return_inverse=True)
    first = torch.full((len(distinct),), B, dtype=torch.long, device=owner.device)
    first = first.scatter_reduce(0, owner, torch.arange(B, device=owner.device), reduce="amin")
    # Prompts numbered in order of first appearance: a batch of whole groups then has owner 0,..,0,1,..
    first, order = first.sort()
    owner = torch.empty_like(order).scatter_(0, order, torch.arange(len(order), device=order.device))[owner]
    prompt_mask = prompt_mask[first]
    lo = int(prompt_mask.any(dim=0).long().argmax())  # columns that are padding in every prompt: skip
    completions = input_ids[:, prompt_len:]
    last, hidden = fast_decoder.LeanModel(model).shared_prompt_hidden(
        input_ids[first, lo:prompt_len], prompt_mask[:, lo:], completions[:, :-1], owner)
    features = torch.cat([last[owner][:, None], hidden], dim=1)  # [B, L - prompt_len, H]: predicts completions
    logps, ent = _chunked_logprobs(features, completions, model.get_output_embeddings(), scale, chunk_size, entropy)
    padding = attention_mask[:, prompt_len:] == 0
    logps = logps.masked_fill(padding, 0.0)
    ent = None if ent is None else ent.masked_fill(padding, 0.0)
    return _padded(logps, B, prompt_len - 1), _padded(ent, B, prompt_len - 1)

def _chunked_logprobs(features: Tensor, targets: Tensor, head: nn.Module | None, scale: float,
                      chunk_size: int, entropy: _EntropyMode = _EntropyMode()) -> tuple[Tensor, Tensor | None]:
    """log_softmax(head(features) / scale)[target], up to `chunk_size` rows of logits at a time, and
    the entropy of each row's distribution if `entropy.wanted` (else None): no [B*T, V] tensor exists.
    features [B, T, H] (or logits [B, T, V] when head is None), targets [B, T] -> [B, T] float32 (x2).

    With a large vocabulary a chunk has fewer rows (its float32 logits stay under
    LOGIT_CHUNK_ELEMENTS), and under autograd each chunk's logits are recomputed in the backward
    instead of kept (torch.utils.checkpoint): the backward then holds one chunk's [rows, V] at a
    time, not every chunk's. Small heads (the micro models) keep theirs: recomputing costs time
    and saves nothing that matters."""
    B, T = targets.shape
    flat, targets = features.reshape(B * T, -1), targets.reshape(-1)
    rows = flat.shape[0]
    vocab = head.weight.shape[0] if head is not None else flat.shape[-1]
    chunk_size = max(1, min(chunk_size, LOGIT_CHUNK_ELEMENTS // vocab))
    recompute = head is not None and torch.is_grad_enabled() and rows * vocab >= LOGIT_RECOMPUTE_MIN
    pieces, entropies = [], []
    for s in range(0, rows, chunk_size):
        args = (flat[s:s + chunk_size], targets[s:s + chunk_size], head, scale, entropy)
        logp, ent = checkpoint(_token_logprobs, *args, use_reentrant=False) if recompute else _token_logprobs(*args)
        pieces.append(logp)
        entropies.append(ent)
    empty = flat.new_zeros(B, T, dtype=torch.float32)
    logps = torch.cat(pieces).reshape(B, T) if pieces else empty
    return logps, (torch.cat(entropies).reshape(B, T) if entropies else empty) if entropy.wanted else None


def _token_logprobs(features: Tensor, targets: Tensor, head: nn.Module | None, scale: float,
                    entropy: _EntropyMode) -> tuple[Tensor, Tensor | None]:
    """log_softmax(head(features) / scale)[target] of one chunk, and its rows' entropies if
    `entropy.wanted`: [n, H] (or logits [n, V]), [n] -> [n], [n] or None."""
    logits = (float32_head(head, features) if head is not None else features).float()
    logits = logits / scale if scale != 1.0 else logits
    if not entropy.wanted:
        return gather_logprobs(logits, targets), None
    # without an entropy bonus the entropy is only measured: no graph (none recomputed either)
    return gather_logprobs(logits, targets), token_entropy(logits if entropy.grad else logits.detach())


def token_entropy(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) per row: logsumexp(z) - sum_v softmax(z)_v z_v. [..., V] -> [...]

    Written through logsumexp so a -inf logit (a masked token) adds 0 instead of 0 * inf = NaN.
    """
    lse = logits.logsumexp(dim=-1, keepdim=True)
    probs = torch.exp(logits - lse)
    weighted = torch.where(probs > 0, probs * logits, torch.zeros_like(probs))
    return lse.squeeze(-1) - weighted.sum(-1)


def _hidden_and_head(model, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, nn.Module | None]:
    """(last hidden states [B, L, H], output projection), or (logits [B, L, V], None) for models
    whose logits are not a plain projection of the base model's output."""
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                  use_cache=False)
    head = model.get_output_embeddings() if isinstance(model, PreTrainedModel) else None
    config = model.config.get_text_config() if isinstance(model, PreTrainedModel) else None
    # A sharded model's root gathers the embeddings and head in its own forward: call that one.
    plain = (isinstance(head, nn.Linear) and model.base_model is not model and not isinstance(model, FSDPModule)
             and all(getattr(config, a, None) in (None, 1, 1.0) for a in LOGIT_POSTPROCESSING))
    if plain:
        return model.base_model(**kwargs).last_hidden_state, head
    return model(**kwargs).logits, None

"""A lean forward pass for Llama-family decoders (Qwen2, Qwen3, Llama, Mistral): sampling and GRPO log-probs.

    lean = LeanModel.from_model(model, packed=True)   # None: an architecture this module doesn't know
    cache = lean.new_cache(batch=4, capacity=96)
    logits = lean.forward(input_ids, positions, key_mask, cache)    # [B, V]: the last position's

    hidden = LeanModel(model).shared_prompt_hidden(prompt_ids, prompt_mask, completion_ids, owner)

Why it exists: at micro sizes a transformers forward spends as much time in Python (module
calls, mask construction, cache bookkeeping) as in matrix multiplies. This module reads the
weights out of the model and runs the same maths as plain tensor ops: one fused QKV and one fused
gate/up projection per layer, rotary tables computed once by the model's own rotary module (so
scaled RoPE variants come for free), keys and values in a pre-allocated cache. For sampling
(`packed=True`, inference only) the weights are also repacked for oneDNN. For the GRPO forward
(`packed=False`) it is differentiable, and `shared_prompt_hidden` runs each distinct prompt once
for all the completions that continue it (G of them in GRPO) instead of once per completion,
and keeps its keys and values once: the prompt's part of attention is a matmul over the G rows
of each prompt, not over G gathered copies. In decoding, `KVCache.share_prefix` does the same
for the G samples of a prompt (r1lab.sampling.generate uses it for prompts of 32+ tokens). Under a
caller's bf16 autocast (r1lab.models.precision) the packed weights and the shared keys and values are
bf16 copies, and the output projection stays float32.

Its outputs equal the model's own forward up to float rounding: tests/test_sampling.py checks
greedy tokens against transformers' generate, and log-probs and gradients against the model's
forward within 1e-5, for Qwen2, Qwen3 and Llama with grouped-query attention. Anything it doesn't
know (sliding windows, logit soft-capping, mixture-of-experts layers, other architectures, dynamic
RoPE, attention dropout, weights neither all float32 nor all bf16, adapters other than plain LoRA, hooks) makes
`supports` false and logs one line saying why; callers then use the model's own forward.
tests/test_architectures.py runs every common architecture through both paths.
A LeanModel holds the weights as they were when it was built: build a new one after they change.

PEFT LoRA models (r1lab.models.lora) are read without gradients only (sampling, reference log-probs):
each adapted projection as its merged weight W + scale * B @ A, or W alone inside PEFT's
`disable_adapter()`. The model is not changed (no merge_adapter/unmerge round trip, whose
rounding would drift the base weights). With gradients on, a merged weight would cost a full
weight-sized gradient per layer, which LoRA exists to avoid: those forwards use PEFT's own.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule
from torch.utils.checkpoint import checkpoint

from r1lab.models.conventions import LOGIT_POSTPROCESSING, position_ids
from r1lab.models.attention import attention, attention_bias
from r1lab.models.kv_cache import GrowingCache, KVCache, SharedPrefix
from r1lab.models.lora import is_lora
from r1lab.models.precision import float32_head

logger = logging.getLogger(__name__)

# model_type -> whether attention has per-head RMSNorms on queries and keys (Qwen3)
_ARCHITECTURES = {"qwen2": False, "llama": False, "qwen3": True, "mistral": False}
# RoPE variants whose tables depend only on the position (not on the sequence length)
_STATIC_ROPE = ("default", "linear", "llama3", "yarn")


def supports(model) -> bool:
    """Whether LeanModel reproduces `model`'s forward: a float32 (or all-bf16) Qwen2/Qwen3/Llama/Mistral
    causal LM of the plain structure (see `unsupported_reason`). When it doesn't, one line per
    architecture and reason is logged (logger "r1lab.models.fast_decoder"), and callers use the model's own forward.

    A PEFT LoRA model counts only while gradients are off (see the module doc)."""
    reason = unsupported_reason(model)
    if reason is not None:
        log_fallback(getattr(getattr(model, "config", None), "model_type", type(model).__name__), reason)
    return reason is None


def unsupported_reason(model) -> str | None:
    """Why LeanModel can't reproduce `model`'s forward (a short phrase), or None if it can."""
    model = unwrap(model)
    if model is None:
        return "a PEFT method other than LoRA"
    config = getattr(model, "config", None)
    if config is None:
        return "not a Hugging Face model (no config)"
    if isinstance(model, FSDPModule):
        return "FSDP-sharded weights (gathered by the model's own forward)"
    if _sliding_window(config):
        return "sliding-window attention"
    postprocessing = [a for a in LOGIT_POSTPROCESSING if getattr(config, a, None) not in (None, 1, 1.0)]
    if postprocessing:
        return f"logit post-processing ({postprocessing[0]})"
    if getattr(config, "num_experts", None) or getattr(config, "num_local_experts", None):
        return "mixture-of-experts layers (token routing)"
    if config.model_type not in _ARCHITECTURES:
        return f"architecture '{config.model_type}' (the fast path knows {', '.join(_ARCHITECTURES)})"
    return _structure_reason(model, config)


def _structure_reason(model, config) -> str | None:
    """What in a known architecture's modules or settings LeanModel doesn't compute, or None."""
    base = getattr(model, "model", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if base is None or type(head) is not nn.Linear or not hasattr(base, "rotary_emb"):
        return "an output head or base model of another kind"
    if type(getattr(base, "embed_tokens", None)) is not nn.Embedding:  # e.g. an adapted embedding
        return "an adapted or non-standard input embedding"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act} (the fast path computes silu)"
    if getattr(config, "attention_dropout", 0.0):
        return "attention dropout"
    if getattr(base.rotary_emb, "rope_type", None) not in _STATIC_ROPE:
        return f"RoPE type {base.rotary_emb.rope_type}"
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes not in ({torch.float32}, {torch.bfloat16}):
        return f"weights in {', '.join(sorted(map(str, dtypes)))} (the fast path runs all-float32 or all-bf16 weights)"
    if model._forward_hooks or model._forward_pre_hooks or base._forward_hooks or base._forward_pre_hooks:
        return "forward hooks on the model"
    qk_norm = _ARCHITECTURES[config.model_type]
    if not all(_plain_layer(layer, qk_norm) for layer in base.layers):
        return "decoder layers with other modules, hooks, or LoRA layers that take gradients"
    return None


def _sliding_window(config) -> bool:
    """Whether any layer attends within a window: `layer_types` says so per layer where the config
    has it (Qwen2 derives it from `use_sliding_window`); otherwise a `sliding_window` applies to
    every layer (Mistral, whose later releases set it to null)."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return any(t != "full_attention" for t in layer_types)
    return getattr(config, "sliding_window", None) is not None


@functools.lru_cache(maxsize=None)
def log_fallback(model_type: str, reason: str) -> None:
    """One line per (architecture, reason) and process: the forward is right either way, only slower."""
    logger.warning("r1lab: %s runs through its own transformers forward, not r1lab's fast path: %s",
                   model_type, reason)


def unwrap(model):
    """The transformers model inside a PEFT LoRA model (adapter layers in place), `model` itself if
    it is no PEFT model, None for other PEFT methods (prompt tuning etc.: not reproduced here)."""
    if not is_lora(model):
        return model
    if any(c.peft_type != "LORA" for c in model.peft_config.values()):  # PeftType is a str enum
        return None
    return model.get_base_model()


class _Linear:
    """x @ W.T + b; with `packed`, W in oneDNN's blocked layout where torch has oneDNN (CPU).

    Measured on 2-core AVX-512 (decode: 32 rows x a 4-layer model whose 17 MB of weights don't
    stay in cache): the prepacked matmul took 0.77 ms per layer against 1.26 ms for F.linear.
    Packing costs ~1 ms per million weights. A packed layer has no autograd: inference only.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, packed: bool, dtype: torch.dtype | None = None):
        self.weight, self.bias, self.packed = weight, bias, None
        self.dtype = dtype or weight.dtype  # of the packed copy: bf16 under the sampler's autocast
        if packed and weight.device.type == "cpu" and _onednn_available():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(self.dtype), 32)
            self.bias = None if bias is None else bias.detach().to(self.dtype)

    def __call__(self, x: Tensor) -> Tensor:
        if self.packed is None:
            return F.linear(x, self.weight, self.bias)  # autocast, if on, casts here
        return torch.ops.mkldnn._linear_pointwise(x.to(self.dtype), self.packed, self.bias, "none", [None], "")


@dataclass(frozen=True)
class _Layer:
    norm_in: Tensor  # [hidden]
    qkv: _Linear  # hidden -> (H + 2K) * D
    o: _Linear  # H * D -> hidden
    norm_post: Tensor
    gate_up: _Linear  # hidden -> 2 * I
    down: _Linear  # I -> hidden
    q_norm: Tensor | None  # [D] (Qwen3)
    k_norm: Tensor | None


class LeanModel:
    """The decoder stack of a Qwen2/Qwen3/Llama/Mistral causal LM as plain tensor ops (see module doc)."""

    def __init__(self, model, packed: bool = False, dtype: torch.dtype | None = None):
        """`dtype`: of the packed weights' copies (bf16 for a sampler under bf16 autocast); the
        output projection stays float32, so logits and log-probs are float32 either way."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not packed):
            self._read(unwrap(model), packed, dtype)

    def _read(self, model, packed: bool, dtype: torch.dtype | None) -> None:
        config = model.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        base = model.model
        self.embed = base.embed_tokens.weight
        self.final_norm = base.norm.weight
        head = model.get_output_embeddings()
        self.head = _Linear(head.weight, head.bias, packed)
        self.layers = [_read_layer(layer, packed, dtype) for layer in base.layers]
        self.rotary = base.rotary_emb
        # the model's own gradient checkpointing setting (r1lab.training.loop.enable_gradient_checkpointing)
        self.checkpointing = bool(getattr(base, "gradient_checkpointing", False)) and model.training
        self._cos = self._sin = torch.empty(0, self.head_dim, dtype=self.embed.dtype, device=self.embed.device)

    @staticmethod
    def from_model(model, packed: bool = False, dtype: torch.dtype | None = None) -> LeanModel | None:
        """A LeanModel of `model`, or None if its architecture isn't one this module reproduces."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not packed):  # packed: inference only
            return LeanModel(model, packed, dtype) if supports(model) else None

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        self._rope_tables(capacity)
        return KVCache(len(self.layers), batch, self.kv_heads, capacity, self.head_dim, self.embed.dtype,
                       self.embed.device)

    def forward(self, input_ids: Tensor, positions: Tensor, key_mask: Tensor, cache: KVCache) -> Tensor:
        """Run input_ids [B, S] at positions [B, S] after the cache's contents; return the last
        position's logits [B, V]. key_mask [B, >= cache.length + S]: 1 real token, 0 padding."""
        hidden = self._decoder(input_ids, positions, key_mask, cache)
        return float32_head(self.head, F.rms_norm(hidden[:, -1], hidden.shape[-1:], self.final_norm, self.eps))

    def shared_prompt_hidden(self, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                             owner: Tensor) -> tuple[Tensor, Tensor]:
        """Final-normed hidden states of completions that continue shared prompts, each prompt run once.

        prompt_ids, prompt_mask [P, Tp] (left-padded); completion_ids [N, Tc]; owner [N]: the
        prompt row each completion continues. Returns ([P, hidden] at each prompt's last position,
        [N, Tc, hidden] at each completion position): what a forward of the N concatenated rows
        gives there, with the prompts' work done P times instead of N.
        """
        P, Tp = prompt_ids.shape
        N, Tc = completion_ids.shape
        self._rope_tables(Tp + Tc)
        cache = GrowingCache(len(self.layers))
        prompt_pos = position_ids(prompt_mask)
        prompt_hidden = self._decoder(prompt_ids, prompt_pos, prompt_mask, cache)
        cache.share_prefix(owner)  # each completion row reads its prompt's keys and values
        positions = prompt_pos[owner, -1:] + 1 + torch.arange(Tc, device=owner.device)  # [N, Tc]
        key_mask = torch.cat([prompt_mask[owner], prompt_mask.new_ones(N, Tc)], dim=1)
        hidden = self._decoder(completion_ids, positions, key_mask, cache)
        norm = lambda h: F.rms_norm(h, h.shape[-1:], self.final_norm, self.eps)  # noqa: E731
        return norm(prompt_hidden[:, -1]), norm(hidden)

    def _decoder(self, input_ids: Tensor, positions: Tensor, key_mask: Tensor, cache) -> Tensor:
        """The decoder layers on input_ids [B, S] after the cache's `length` positions: [B, S, hidden]
        before the final norm. A padding query attends to itself only, so no softmax row is empty."""
        start, end = cache.length, cache.length + input_ids.shape[1]
        if self._cos.shape[0] < end:
            self._rope_tables(end)
        cos, sin = self._cos[positions][:, :, None], self._sin[positions][:, :, None]  # [B, S, 1, D]
        bias = attention_bias(key_mask[:, :end], start, self.embed.dtype)  # [B, 1, S, end]
        x = F.embedding(input_ids, self.embed)  # [B, S, hidden]
        recompute = self.checkpointing and torch.is_grad_enabled()
        prefix = cache.prefix  # as it is now: a layer recomputed in the backward must see the same
        for i in range(len(self.layers)):
            if recompute:  # keep only each layer's input for the backward; run the layer again there
                x = checkpoint(self._layer, i, x, cos, sin, bias, cache, prefix, use_reentrant=False)
            else:
                x = self._layer(i, x, cos, sin, bias, cache, prefix)
        cache.length = end
        return x

    def _layer(self, i: int, x: Tensor, cos: Tensor, sin: Tensor, bias: Tensor, cache,
               prefix: SharedPrefix | None) -> Tensor:
        """Decoder layer i on x [B, S, hidden] (see `_decoder`); `prefix`: the cache's shared one."""
        B, S, hidden = x.shape
        H, K, D = self.heads, self.kv_heads, self.head_dim
        layer = self.layers[i]
        h = F.rms_norm(x, (hidden,), layer.norm_in, self.eps)
        qkv = layer.qkv(h).view(B, S, H + 2 * K, D)
        qk = qkv[:, :, :H + K]
        if layer.q_norm is not None:
            qk = torch.cat([F.rms_norm(qk[:, :, :H], (D,), layer.q_norm, self.eps),
                            F.rms_norm(qk[:, :, H:], (D,), layer.k_norm, self.eps)], dim=2)
        qk = qk * cos + _rotate_half(qk) * sin
        keys, values = cache.update(i, qk[:, :, H:].transpose(1, 2), qkv[:, :, H + K:].transpose(1, 2))
        shared = None if prefix is None else (prefix, i)
        out = attention(qk[:, :, :H].transpose(1, 2), keys, values, bias, shared)  # [B, H, S, D]
        x = x + layer.o(out.transpose(1, 2).reshape(B, S, H * D))
        h = F.rms_norm(x, (hidden,), layer.norm_post, self.eps)
        return x + layer.down(_swiglu(layer.gate_up(h)))

    def _rope_tables(self, capacity: int) -> None:
        """cos/sin [capacity, D] for positions 0..capacity-1, from the model's rotary module."""
        if self._cos.shape[0] >= capacity:
            return
        positions = torch.arange(capacity, device=self.embed.device)[None]
        with torch.no_grad():
            cos, sin = self.rotary(self.embed[:1][None].detach(), positions)
        self._cos, self._sin = cos[0].to(self.embed.dtype), sin[0].to(self.embed.dtype)


def _plain_layer(layer, qk_norm: bool) -> bool:
    """A decoder layer with exactly the structure LeanModel computes (no extra modules or hooks)."""
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    linears = [getattr(attn, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
    linears += [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
    if not all(type(m) is nn.Linear or _plain_lora(m) for m in linears):  # e.g. quantised layers aren't
        return False
    if {n for n, _ in layer.named_children()} != {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"}:
        return False
    if qk_norm != (hasattr(attn, "q_norm") and hasattr(attn, "k_norm")):
        return False
    return not any(m._forward_hooks or m._forward_pre_hooks for m in layer.modules())


def _plain_lora(module) -> bool:
    """A PEFT LoRA linear layer that `_effective` can fold into one weight: unmerged, vanilla LoRA
    (no DoRA or other variant, no adapter bias), no dropout in effect, read without gradients."""
    if type(module).__module__ != "peft.tuners.lora.layer" or type(module).__name__ != "Linear":
        return False
    if torch.is_grad_enabled() or module.merged or type(module.base_layer) is not nn.Linear:
        return False
    if module.disable_adapters:
        return True
    return all(a in module.lora_A and a not in module.lora_variant and not module.lora_bias.get(a, False)
               and (type(module.lora_dropout[a]) is nn.Identity or not module.training)
               for a in module.active_adapters)


def _effective(module) -> nn.Linear | _Weights:
    """What a linear layer computes, as something with `weight` and `bias`: the layer itself, or a
    LoRA layer's base with its active adapters' scale * B @ A added (the base when they are off)."""
    if type(module) is nn.Linear:
        return module
    base = module.base_layer
    if module.disable_adapters:
        return base
    weight = base.weight + sum(module.get_delta_weight(a) for a in module.active_adapters)
    return _Weights(weight, base.bias, base.out_features)


@dataclass(frozen=True)
class _Weights:
    weight: Tensor
    bias: Tensor | None
    out_features: int


def _read_layer(layer, packed: bool, dtype: torch.dtype | None = None) -> _Layer:
    attn, mlp = layer.self_attn, layer.mlp

    def linear(*modules: nn.Module) -> _Linear:  # projections of one input: one matmul
        parts = [_effective(m) for m in modules]
        weight = torch.cat([m.weight for m in parts]) if len(parts) > 1 else parts[0].weight
        if all(m.bias is None for m in parts):
            return _Linear(weight, None, packed, dtype)
        biases = [m.bias if m.bias is not None else m.weight.new_zeros(m.out_features) for m in parts]
        return _Linear(weight, torch.cat(biases) if len(parts) > 1 else biases[0], packed, dtype)

    norm = getattr(attn, "q_norm", None)
    return _Layer(
        norm_in=layer.input_layernorm.weight, qkv=linear(attn.q_proj, attn.k_proj, attn.v_proj),
        o=linear(attn.o_proj), norm_post=layer.post_attention_layernorm.weight,
        gate_up=linear(mlp.gate_proj, mlp.up_proj), down=linear(mlp.down_proj),
        q_norm=None if norm is None else norm.weight, k_norm=None if norm is None else attn.k_norm.weight)


def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class _SwiGLU(torch.autograd.Function):
    """silu(gate) * up from the fused [..., 2I] projection, keeping only that input for backward.

    Autograd's own version also keeps silu(gate) ([B, L, I] per layer: 8 MB of the ~56 MB a
    layer holds for a 32 x 64-token GRPO batch of the micro `small` model); recomputing it in
    backward is one silu. The gradient is written into one [..., 2I] tensor (no concatenation),
    the gate's half by torch's own silu_backward.
    """

    @staticmethod
    def forward(ctx, gate_up: Tensor) -> Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        ctx.save_for_backward(gate_up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (gate_up,) = ctx.saved_tensors
        gate, up = gate_up.chunk(2, dim=-1)
        d_gate_up = torch.empty_like(gate_up)
        d_gate, d_up = d_gate_up.chunk(2, dim=-1)
        torch.mul(grad, F.silu(gate), out=d_up)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=d_gate)
        return d_gate_up


def _swiglu(gate_up: Tensor) -> Tensor:
    if torch.is_grad_enabled() and gate_up.requires_grad:
        return _SwiGLU.apply(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

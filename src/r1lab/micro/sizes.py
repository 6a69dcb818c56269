"""Named model sizes for the micro world: the standard Qwen2 architecture with random init.

    model = build_model("micro", tokenizer, max_positions=512, seed=0)

So a micro model is an ordinary Hugging Face model, saved and loaded like any other.
"""

from __future__ import annotations

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from r1lab.errors import R1labError

# Sizes measured on a 2-core CPU (batch 32 x 128 tokens, 2026-11): a hidden-128 4-layer Qwen2 (micro)
# trains at ~12k tokens/s, hidden 256 (small) at ~4.7k.
MODEL_SIZES: dict[str, dict[str, int]] = {
    # students for the micro pipeline: nano has a third of micro's parameters, mini a little over half
    "nano": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                 intermediate_size=256),
    "mini": dict(hidden_size=96, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                 intermediate_size=384),
    "micro": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                  intermediate_size=512),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                  intermediate_size=1024),
}


def build_model(size: str, tokenizer, max_positions: int = 1024, seed: int = 0) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 model of a named size for `tokenizer`'s vocabulary."""
    if size not in MODEL_SIZES:
        raise R1labError(f"unknown model size '{size}' (sizes: {', '.join(MODEL_SIZES)})")
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **MODEL_SIZES[size],
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model

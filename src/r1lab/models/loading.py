"""Named model sizes for the micro world, and loading any Hugging Face causal LM.

Micro models are the standard Qwen2 architecture with random init, so everything r1lab saves
is an ordinary checkpoint folder: ``AutoModelForCausalLM.from_pretrained(folder)`` and
``AutoTokenizer.from_pretrained(folder)`` load it with no r1lab code.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
from transformers.utils import logging as hf_logging

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

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer of a model folder (or hub name), with a pad token, as a one-line error if absent."""
    path = str(path)
    if not Path(path).exists() and _looks_local(path):
        raise R1labError(f"{path}: model folder not found")
    if Path(path).is_dir() and not any((Path(path) / f).exists() for f in
                                        ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise R1labError(f"{path}: model folder has no tokenizer (tokenizer.json or tokenizer_config.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise R1labError(f"{path}: cannot load tokenizer ({_first_line(e)})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str | os.PathLike, dtype: str = "float32", device: str = "cpu"):
    """A causal LM from a checkpoint folder (or hub name), in eval mode."""
    path = str(path)
    if not Path(path).exists() and _looks_local(path):
        raise R1labError(f"{path}: model folder not found")
    if Path(path).is_dir() and not (Path(path) / "config.json").exists():
        raise R1labError(f"{path}: not a model folder (no config.json)")
    if dtype not in DTYPES:
        raise R1labError(f"unknown dtype '{dtype}' (dtypes: {', '.join(DTYPES)})")
    hf_logging.disable_progress_bar()  # r1lab shows its own progress; a bar per load is noise
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
    except (OSError, ValueError) as e:
        raise R1labError(f"{path}: cannot load model ({_first_line(e)})") from None
    return model.to(device).eval()


def load_model_and_tokenizer(path: str | os.PathLike, dtype: str = "float32", device: str = "cpu"):
    tokenizer = load_tokenizer(path)  # first: a folder without a tokenizer is the common mistake
    return load_model(path, dtype, device), tokenizer


def _looks_local(path: str) -> bool:
    """A path, not a hub name ("org/name"): absolute, relative with ./ or ../, or deeper than org/name."""
    return path.startswith(("/", ".", "~")) or path.count("/") > 1 or path.endswith(("/",))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__

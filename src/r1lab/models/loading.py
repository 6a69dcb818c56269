"""Loading any Hugging Face causal LM and its tokenizer (a local folder or a hub name).

Everything r1lab saves is an ordinary checkpoint folder: ``AutoModelForCausalLM.from_pretrained(folder)``
and ``AutoTokenizer.from_pretrained(folder)`` load it with no r1lab code. The micro world's model
sizes are in `r1lab.micro.sizes`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from r1lab.errors import R1labError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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

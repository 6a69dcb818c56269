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
from r1lab.files import hub_offline, is_hub_name

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def load_tokenizer(path: str | os.PathLike, revision: str = "", trust_remote_code: bool = False):
    """The tokenizer of a model folder (or hub name), with a pad token, as a one-line error if absent."""
    path = _check_source(str(path))
    if Path(path).is_dir() and not any((Path(path) / f).exists() for f in
                                        ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise R1labError(f"{path}: model folder has no tokenizer (tokenizer.json or tokenizer_config.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision or None, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise R1labError(f"{path}: cannot load tokenizer ({_first_line(e)})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str | os.PathLike, dtype: str = "float32", device: str = "cpu", revision: str = "",
               trust_remote_code: bool = False, attn_implementation: str = ""):
    """A causal LM from a checkpoint folder (or hub name), in eval mode.

    `revision` (a hub branch, tag or commit), `trust_remote_code` (run the model's own code from
    the hub) and `attn_implementation` (eager | sdpa | flash_attention_2; empty: transformers'
    choice) go to ``from_pretrained``."""
    path = _check_source(str(path))
    if Path(path).is_dir() and not (Path(path) / "config.json").exists():
        raise R1labError(f"{path}: not a model folder (no config.json)")
    if dtype not in DTYPES:
        raise R1labError(f"unknown dtype '{dtype}' (dtypes: {', '.join(DTYPES)})")
    hf_logging.disable_progress_bar()  # r1lab shows its own progress; a bar per load is noise
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], revision=revision or None,
                                                     trust_remote_code=trust_remote_code, **extra)
    except (OSError, ValueError, ImportError) as e:
        raise R1labError(f"{path}: cannot load model ({_first_line(e)})") from None
    return model.to(device).eval()


def load_model_and_tokenizer(path: str | os.PathLike, dtype: str = "float32", device: str = "cpu", **options):
    """`options`: revision, trust_remote_code (both), attn_implementation (the model only)."""
    tok_options = {k: v for k, v in options.items() if k in ("revision", "trust_remote_code")}
    tokenizer = load_tokenizer(path, **tok_options)  # first: a folder without a tokenizer is the common mistake
    return load_model(path, dtype, device, **options), tokenizer


def _check_source(path: str) -> str:
    """`path` itself when it is a local folder (always tried first) or a hub name the hub may be
    asked for; otherwise a one-line error naming it."""
    if Path(path).expanduser().exists():
        return str(Path(path).expanduser())
    if not is_hub_name(path):
        raise R1labError(f"{path}: model folder not found")
    if hub_offline():
        raise R1labError(f"{path}: no such local folder, and the hub is offline (HF_HUB_OFFLINE=1): "
                         "give the path of a downloaded model folder")
    return path


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__

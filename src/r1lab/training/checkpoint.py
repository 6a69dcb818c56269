"""Training checkpoints: a Hugging Face model folder plus what it takes to resume exactly.

A checkpoint lives at ``OUTPUT_DIR/checkpoints/step-000123/`` and holds:

- the model and tokenizer (``save_pretrained``, safetensors): load it with plain transformers;
- ``optimizer.pt`` and ``scheduler.pt`` (state dicts), when given;
- ``trainer_state.json``: step, data position and whatever else the trainer passes;
- ``rng_state.pt``: the Python, NumPy (if installed) and torch random states.

Each is written into a temporary folder that is renamed into place only when complete, so a
crash mid-save leaves the previous checkpoint as it was; `latest_checkpoint` only ever sees
complete ones. SFT, pretraining and GRPO all use these functions.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from r1lab.errors import R1labError
from r1lab.files import atomic_dir, write_json

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step-{step:06d}"


def save_checkpoint(path: str | Path, model, tokenizer, optimizer=None, scheduler=None,
                    trainer_state: dict[str, Any] | None = None, rng: bool = True, shards: Path | None = None) -> Path:
    """Write a checkpoint folder at `path` atomically (a failure leaves any old one intact).

    `shards` (sharding=fsdp, r1lab.training.fsdp.save_sharded): a torch.distributed.checkpoint folder of
    the model and optimizer state, moved in as ``sharded/`` in place of the model folder (`model`
    None) and ``optimizer.pt``."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        if model is not None:
            save_model(tmp, model, tokenizer)
        elif tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if shards is not None:
            os.replace(shards, tmp / "sharded")
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if rng:
            torch.save(_rng_state(), tmp / "rng_state.pt")
        # Written last: a folder with this file is complete even if copied by hand.
        write_json(tmp / STATE_FILE, dict(trainer_state or {}))
    return path


def save_model(path: str | Path, model, tokenizer) -> None:
    """A plain Hugging Face folder (safetensors); not atomic by itself, see `save_final`."""
    with _no_hf_progress_bar():  # its "Writing model shards" bar would cut into the training bar
        model.save_pretrained(path, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def save_final(path: str | Path, model, tokenizer) -> Path:
    """The finished model as a Hugging Face folder at `path`, replaced atomically."""
    with atomic_dir(path) as tmp:
        save_model(tmp, model, tokenizer)
    return Path(path)


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints under `output_dir/checkpoints`, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir() and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def prune_checkpoints(output_dir: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (keep <= 0 keeps all)."""
    if keep <= 0:
        return
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old)


def load_checkpoint(path: str | Path, model, optimizer=None, scheduler=None, rng: bool = True) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG from `path`; return its trainer state.
    `model` None: not the weights (a sharded checkpoint's go through r1lab.training.fsdp.load_sharded)."""
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise R1labError(f"{path}: not a complete checkpoint (no {STATE_FILE})")
    if model is not None:
        if (path / "sharded").is_dir() and not any(path.glob("*.safetensors")):
            raise R1labError(f"{path}: written with sharding=fsdp (sharded/ state); resume it with sharding=fsdp")
        load_weights(path, model)
    if optimizer is not None:
        optimizer.load_state_dict(_load(path / "optimizer.pt"))
    if scheduler is not None:
        scheduler.load_state_dict(_load(path / "scheduler.pt"))
    if rng and (path / "rng_state.pt").is_file():
        _set_rng_state(_load(path / "rng_state.pt"))
    return json.loads((path / STATE_FILE).read_text(encoding="utf-8"))


def load_weights(path: str | Path, model) -> None:
    """Load every ``*.safetensors`` file of a folder into `model` in place (shards included).

    Keys the files lack must be tied to keys they have (``lm_head`` tied to the embeddings):
    ``save_pretrained`` writes a tied tensor once. A LoRA checkpoint holds the adapters alone.
    """
    adapter = Path(path) / "adapter_model.safetensors"
    if adapter.is_file():
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_file(adapter))
        if result.unexpected_keys:
            raise R1labError(f"{path}: adapter weights do not match the model ({result.unexpected_keys[:3]})")
        return
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise R1labError(f"{path}: no .safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(file))  # on CPU; load_state_dict copies onto each parameter's device
    missing, unexpected = model.load_state_dict(state, strict=False)
    own = model.state_dict()
    loaded_ptrs = {own[k].data_ptr() for k in state if k in own}
    untied = [k for k in missing if own[k].data_ptr() not in loaded_ptrs]
    if untied or unexpected:
        raise R1labError(f"{path}: weights do not match the model (missing: {untied[:3]}, unexpected: {unexpected[:3]})")


@contextmanager
def _no_hf_progress_bar() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _load(file: Path) -> Any:
    if not file.is_file():
        raise R1labError(f"{file}: missing from checkpoint")
    return torch.load(file, map_location="cpu", weights_only=True)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
    except ImportError:
        return state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    # As a tensor and plain numbers, so the file loads with torch.load(weights_only=True).
    state["numpy"] = (kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached)
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))

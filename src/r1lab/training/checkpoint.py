"""Training checkpoints: a Hugging Face model folder plus what it takes to resume exactly.

A checkpoint lives at ``OUTPUT_DIR/checkpoints/step-000123/`` and holds:

- the model and tokenizer (``save_pretrained``, safetensors): load it with plain transformers;
- ``optimizer.pt`` and ``scheduler.pt`` (state dicts), when given;
- ``trainer_state.json``: step, data position and whatever else the trainer passes;
- ``rng_state.pt``: the Python, NumPy (if installed) and torch random states.

Each is written into a temporary folder, fsynced, and renamed into place only when complete, so
a crash mid-save leaves the previous checkpoint as it was; `latest_checkpoint` only ever sees
complete ones. At the start of a run `start_run` finishes what a crash interrupted (`io.recover`)
and refuses to start afresh over another run's checkpoints; `resume_latest` loads the newest
checkpoint that loads, falling back to the one before (with a warning) if the newest is damaged.
SFT, pretraining and GRPO all use these functions; docs/checkpoints.md tells the whole story.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from r1lab.errors import R1labError
from r1lab.files import atomic_dir, recover, remove_dir, write_json

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")
# the folders of a run whose writes `start_run` recovers: the run, its checkpoints, GRPO's references
_RUN_FOLDERS = (".", "checkpoints", "reference")


class CheckpointError(R1labError):
    """A checkpoint folder that is damaged or incomplete (a file missing, truncated or unreadable)."""


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


def prune_checkpoints(output_dir: str | Path, keep: int, step: int | None = None) -> None:
    """Delete all but the newest `keep` checkpoints (keep <= 0 keeps all).

    With `step` (the one just saved), checkpoints of later steps go too: they are damaged ones
    that `resume_latest` skipped, left from before the run fell back to an earlier one."""
    found = list_checkpoints(output_dir)
    if step is not None:
        later = [p for p in found if _step_of(p) > step]
        found = [p for p in found if _step_of(p) <= step]
        for path in later:
            remove_dir(path)
    if keep > 0:
        for old in found[:-keep]:
            remove_dir(old)


def _step_of(path: Path) -> int:
    return int(_STEP_DIR.match(path.name).group(1))


def load_checkpoint(path: str | Path, model, optimizer=None, scheduler=None, rng: bool = True) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG from `path`; return its trainer state.

    Every file is read and checked before anything is restored, so a damaged checkpoint
    (`CheckpointError`: a file missing, truncated or unreadable) leaves `model` and the rest as
    they were, except that weights whose files read but do not fit the model raise midway.
    `model` None: not the weights (a sharded checkpoint's go through r1lab.training.fsdp.load_sharded)."""
    path = Path(path)
    state = read_state(path)
    sharded = (path / "sharded").is_dir() and not any(path.glob("*.safetensors"))
    if model is not None and sharded:
        raise R1labError(f"{path}: written with sharding=fsdp (sharded/ state); resume it with sharding=fsdp")
    weights = read_weights(path) if model is not None else None
    wanted = (("optimizer", optimizer is not None), ("scheduler", scheduler is not None), ("rng_state", rng))
    pieces = {name: _load(path / f"{name}.pt") for name, on in wanted if on}
    if model is not None:
        apply_weights(path, model, weights)
    if optimizer is not None:
        optimizer.load_state_dict(pieces["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(pieces["scheduler"])
    if rng:
        _set_rng_state(pieces["rng_state"])
    return state


def resume_latest(output_dir: str | Path, model, optimizer=None, scheduler=None) -> tuple[Path, dict[str, Any]] | None:
    """(path, trainer state) of the newest checkpoint that loads, or None when there is none.

    A damaged newest checkpoint is skipped with a warning and the one before it is tried; if none
    loads, the error names each one and why."""
    found = list_checkpoints(output_dir)
    failures = []
    for path in reversed(found):
        try:
            return path, load_checkpoint(path, model, optimizer, scheduler)
        except CheckpointError as e:
            failures.append(str(e))
            print(f"warning: {e}; trying the checkpoint before it", file=sys.stderr)
    if failures:
        raise R1labError(f"{output_dir}: no checkpoint loads ({'; '.join(failures)}); pass overwrite=true to "
                         "start afresh")
    return None


def start_run(output_dir: str | Path, resume: bool, overwrite: bool, extra: tuple[str, ...] = ()) -> None:
    """Get `output_dir` ready for a run (call it on the writing process, before any other write).

    Writes a crash interrupted are finished or undone (`io.recover`). A fresh run (not `resume`)
    into a folder that holds checkpoints is refused unless `overwrite`: then the checkpoints and
    the folders named in `extra` (under `output_dir`) are deleted first."""
    output_dir = Path(output_dir)
    for sub in _RUN_FOLDERS:
        for action in recover(output_dir / sub):
            print(f"warning: {output_dir / sub}: after an interrupted write, {action}", file=sys.stderr)
    found = latest_checkpoint(output_dir)
    if found is None or resume:
        return
    if not overwrite:
        raise R1labError(f"{output_dir} already has checkpoints (newest: {found.name}); pass resume=true to "
                         "continue, overwrite=true to delete them and start afresh, or choose another output_dir")
    for name in ("checkpoints", *extra):
        if (output_dir / name).exists():
            remove_dir(output_dir / name)
    print(f"{output_dir}: overwrite=true: deleted the previous run's checkpoints", file=sys.stderr)


def load_weights(path: str | Path, model) -> None:
    """Load every ``*.safetensors`` file of a folder into `model` in place (shards included).

    Keys the files lack must be tied to keys they have (``lm_head`` tied to the embeddings):
    ``save_pretrained`` writes a tied tensor once. A LoRA checkpoint holds the adapters alone.
    """
    apply_weights(path, model, read_weights(path))


def read_weights(path: str | Path) -> tuple[bool, dict[str, torch.Tensor]]:
    """(is a LoRA adapter, tensors) of a folder's safetensors files, on CPU; unreadable files are a
    `CheckpointError` naming the file."""
    adapter = Path(path) / "adapter_model.safetensors"
    files = [adapter] if adapter.is_file() else sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no .safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            state.update(load_file(file))
        except Exception as e:  # safetensors raises its own error types for a truncated or garbled file
            raise CheckpointError(f"{file}: unreadable ({_first_line(e)})") from None
    return adapter.is_file(), state


def apply_weights(path: str | Path, model, weights: tuple[bool, dict[str, torch.Tensor]]) -> None:
    """Copy `read_weights`'s tensors into `model` (load_state_dict copies onto each parameter's device)."""
    is_adapter, state = weights
    if is_adapter:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, state)
        if result.unexpected_keys:
            raise R1labError(f"{path}: adapter weights do not match the model ({result.unexpected_keys[:3]})")
        return
    missing, unexpected = model.load_state_dict(state, strict=False)
    own = model.state_dict()
    loaded_ptrs = {own[k].data_ptr() for k in state if k in own}
    untied = [k for k in missing if own[k].data_ptr() not in loaded_ptrs]
    if untied or unexpected:
        raise R1labError(f"{path}: weights do not match the model (missing: {untied[:3]}, "
                         f"unexpected: {unexpected[:3]})")


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


def read_state(path: Path) -> dict[str, Any]:
    """A checkpoint's trainer_state.json; `CheckpointError` if missing or unreadable."""
    file = path / STATE_FILE
    if not file.is_file():
        raise CheckpointError(f"{path}: not a complete checkpoint (no {STATE_FILE})")
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: unreadable ({_first_line(e)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{file}: not a JSON object")
    return state


def _load(file: Path) -> Any:
    if not file.is_file():
        raise CheckpointError(f"{file}: missing from checkpoint")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many kinds for a truncated or garbled file
        raise CheckpointError(f"{file}: unreadable ({_first_line(e)})") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


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

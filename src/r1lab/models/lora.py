"""LoRA adapters through PEFT (``pip install 'r1lab[peft]'``): ``r1lab sft ... lora_r=16``.

`apply_lora` freezes the base model and adds low-rank adapters to the named linear layers; the
training loop then only sees the adapter parameters (it optimises those with requires_grad).
A PeftModel's ``save_pretrained`` writes the adapters alone (``adapter_model.safetensors`` and
``adapter_config.json``), which is what checkpoints and ``final/`` hold for a LoRA run;
`save_merged` writes the base with the adapters folded in, a plain Hugging Face folder.

For GRPO the reference policy is the base model: `disabled_adapters` gives its log-probs from
the same weights, so no second copy of the model is needed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from r1lab.training.checkpoint import save_final
from r1lab.errors import R1labError


# Every projection of a Qwen2 / Llama decoder layer; "all-linear" also works (every linear but the head).
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def check_lora_settings(r: int, alpha: float, dropout: float, target_modules) -> None:
    """The checks of a stage config's lora_* fields (r = 0: LoRA off)."""
    if r < 0 or alpha <= 0 or not 0 <= dropout < 1:
        raise ValueError("need lora_r >= 0, lora_alpha > 0 and lora_dropout in [0, 1)")
    if r > 0 and not target_modules:
        raise ValueError("lora_target_modules is empty")


def apply_lora(model, r: int, alpha: float, dropout: float = 0.0,
               target_modules: Sequence[str] | str = ("q_proj", "k_proj", "v_proj", "o_proj"), seed: int = 0):
    """`model` as a PeftModel with rank-`r` adapters on `target_modules`; base weights frozen.

    `target_modules` may be the string "all-linear" (every linear layer but the output head).
    The adapters' random init (A; B starts at zero) is drawn from `seed` alone, on a forked torch
    RNG: before, it came from whatever state the global RNG was in, so two runs of one config in
    one process (tests, a pipeline) started from different A and diverged from step 2 on (B = 0
    makes step 1 the same), which looked like checkpointing perturbing training (issue #7).
    """
    peft = _peft()
    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    if targets == ["all-linear"]:
        targets = "all-linear"
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                             bias="none", task_type="CAUSAL_LM")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return peft.get_peft_model(model, config)
    except ValueError as e:  # e.g. "Target modules {...} not found in the base model"
        raise R1labError(f"cannot add LoRA adapters: {str(e).splitlines()[0]}") from None


def is_lora(model) -> bool:
    """True for a PeftModel (without importing peft when it isn't installed)."""
    return any(cls.__module__.startswith("peft.") and cls.__name__ == "PeftModel" for cls in type(model).__mro__)


def save_merged(model, tokenizer, path: str | Path) -> Path:
    """The base model with the adapters merged in, as a plain Hugging Face folder at `path` (atomic).

    Merges in place (``merge_and_unload``): call it when training is over.
    """
    return save_final(path, model.merge_and_unload(), tokenizer)


@contextmanager
def disabled_adapters(model) -> Iterator[None]:
    """Run `model` as its base model (adapters off) inside the block; a plain model is left as is.

    GRPO's reference log-probs for a LoRA policy: the reference is the base model.
    """
    if not is_lora(model):
        yield
        return
    with model.disable_adapter():
        yield


def merged_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every weight under its plain Hugging Face name, a LoRA model's with the
    adapters folded in (base + B A * alpha / r), without touching the model (a copy per LoRA
    weight). What a vLLM engine loads after each step (sampling/vllm.py)."""
    if not is_lora(model):
        yield from ((name, p.detach()) for name, p in model.named_parameters())
        return
    base = model.get_base_model()
    for name, p in base.named_parameters():
        if "lora_" in name:
            continue
        if ".base_layer." not in name:
            yield name, p.detach()
            continue
        path, leaf = name.rsplit(".base_layer.", 1)
        layer = base.get_submodule(path)
        weight = p.detach()
        if leaf == "weight" and not layer.disable_adapters:
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A:
                    weight = weight + layer.get_delta_weight(adapter).to(weight.dtype)
        yield f"{path}.{leaf}", weight


def adapter_parameters(model) -> dict[str, torch.Tensor]:
    """The trainable (adapter) parameters by name."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _peft():
    try:
        import peft
    except ImportError:
        raise R1labError("LoRA needs the peft package: pip install 'r1lab[peft]' (or: pip install peft)") from None
    return peft

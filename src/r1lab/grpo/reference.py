"""GRPO's reference model: the policy's starting weights (the paper's KL anchor), or a teacher.

With ``reference_model`` a teacher the KL term pulls the policy toward the teacher on the policy's
own samples: on-policy distillation (``advantage=zero kl_estimator=k2 ref_update_every=0``; beta is
the teacher's weight). The teacher must share the policy's tokenizer: the KL compares the two
models' log-probs of the same token ids.
"""

from __future__ import annotations

import copy

from r1lab.errors import R1labError
from r1lab.models.loading import load_model, load_tokenizer
from r1lab.models.lora import is_lora


def check_reference_tokenizer(config, tokenizer) -> None:
    """One line when `config.reference_model`'s tokenizer is not the policy's (a no-op without one)."""
    if not config.reference_model:
        return
    teacher = load_tokenizer(config.reference_model, "", config.trust_remote_code)
    if teacher.get_vocab() != tokenizer.get_vocab():
        raise R1labError(f"reference_model={config.reference_model}: its tokenizer ({len(teacher)} tokens) is not "
                         f"{config.model}'s ({len(tokenizer)} tokens); the KL compares log-probs of the same "
                         "token ids, so teacher and policy need one vocabulary")


def frozen_copy(model):
    """`model`'s copy in eval mode with no gradients."""
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref


def load_reference(policy, config, device):
    """The frozen reference: None when beta is 0 or the policy is LoRA (its reference is the base
    model, adapters disabled), the teacher `reference_model`, else a copy of `policy`."""
    if config.beta == 0 or is_lora(policy):
        return None
    if not config.reference_model:
        return frozen_copy(policy)
    teacher = load_model(config.reference_model, device=device, trust_remote_code=config.trust_remote_code,
                         attn_implementation=config.attn_implementation)
    teacher.requires_grad_(False)
    return teacher.eval()

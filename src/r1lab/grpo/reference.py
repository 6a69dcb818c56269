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
from r1lab.models.precision import reference_dtype, weights_dtype


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
    model, adapters disabled), the teacher `reference_model`, else the policy's weights. It is held
    in `reference_dtype`: bf16 unless the run is fp32 (it takes no gradient, so it needs no float32
    master weights). The policy's weights are a copy where the dtypes agree; otherwise they are
    loaded again in the reference's dtype, which never holds a float32 copy of the model on the way."""
    if config.beta == 0 or is_lora(policy):
        return None
    dtype = reference_dtype(config.precision)
    if not config.reference_model and dtype == weights_dtype(config.precision):
        return frozen_copy(policy)
    source, revision = (config.reference_model, "") if config.reference_model else (config.model, config.revision)
    reference = load_model(source, dtype, device=device, revision=revision, trust_remote_code=config.trust_remote_code,
                           attn_implementation=config.attn_implementation)
    reference.requires_grad_(False)
    return reference.eval()

"""Conventions every forward in r1lab shares (the sampler's, the fast decoder's, the training
forward's), kept in one place so that they cannot drift apart."""

from __future__ import annotations

from torch import Tensor

# Config fields of models that change logits after the output projection: such models are not run
# by the fast decoder, and the training forward takes their full logits from their own forward.
LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def position_ids(attention_mask: Tensor) -> Tensor:
    """0, 1, 2, ... over the real tokens of each left-padded row; 0 on left padding (as transformers
    does). [B, L] -> [B, L]"""
    positions = attention_mask.long().cumsum(dim=-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)

"""Truncated importance sampling (grpo/importance.py) against numbers worked by hand."""

import math

import pytest
import torch

from r1lab.grpo.importance import importance_weights

# Row 0: log-weights ln 3 (w = 3, over the cap 2), ln 0.5 (w = 0.5), then padding holding -inf.
# Row 1: log-weight 0 (w = 1), then a token outside the mask whose difference must not count.
TRAINER = torch.tensor([[math.log(3.0), math.log(0.5), float("-inf")], [-1.0, -2.0, 0.0]])
SAMPLER = torch.tensor([[0.0, 0.0, 0.0], [-1.0, -7.0, 0.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


@pytest.mark.parametrize("mode, expected", [
    ("tis", [[2.0, 0.5, 0.0], [1.0, 0.0, 0.0]]),   # 3 truncated to the cap 2
    ("mask", [[0.0, 0.5, 0.0], [1.0, 0.0, 0.0]]),  # 3 > 2: the token gets weight 0
    ("none", [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]),
])
def test_weights_by_hand(mode, expected):
    weights, _ = importance_weights(TRAINER, SAMPLER, MASK, mode, cap=2.0)
    torch.testing.assert_close(weights, torch.tensor(expected))


def test_mismatch_by_hand():
    _, m = importance_weights(TRAINER, SAMPLER, MASK, "tis", cap=2.0)
    # |ln 3| + |ln 0.5| + 0 over 3 tokens; the masked-out difference 5 and the -inf padding don't count
    assert float(m.abs_diff_sum) == pytest.approx(math.log(3.0) + math.log(2.0))
    assert float(m.abs_diff_max) == pytest.approx(math.log(3.0))
    assert float(m.over_cap) == 1.0 and float(m.tokens) == 3.0


def test_weights_carry_no_gradient():
    trainer = TRAINER.clone().requires_grad_(True)
    weights, _ = importance_weights(trainer, SAMPLER, MASK, "tis", cap=2.0)
    assert not weights.requires_grad


def test_unknown_mode():
    with pytest.raises(KeyError):
        importance_weights(TRAINER, SAMPLER, MASK, "sequence", cap=2.0)


def test_grpo_loss_weights_the_policy_term_by_hand():
    from r1lab.grpo.losses import grpo_loss

    logp = torch.zeros(1, 2)  # ratio 1: the per-token policy term is -A = -1
    weights = torch.tensor([[2.0, 0.5]])
    loss, _ = grpo_loss(logp, logp, None, torch.tensor([1.0]), torch.ones(1, 2), eps_low=0.2, eps_high=0.2,
                        beta=0.0, aggregation="seq_mean", token_weights=weights)
    assert float(loss) == pytest.approx(-(2.0 + 0.5) / 2)  # seq_mean: mean over the row's 2 tokens

"""Pure-maths tests for r1lab.grpo.losses: every expected number is worked by hand in a comment."""

import math

import pytest
import torch

from r1lab.grpo.advantages import ADVANTAGES, zero_variance_groups
from r1lab.grpo.losses import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    clipped_surrogate,
    count_normalisers,
    grpo_loss,
    masked_mean,
    soft_overlong_penalty,
)

E = math.e


def close(actual, expected, tol=1e-4):
    actual, expected = torch.as_tensor(actual).float(), torch.as_tensor(expected).float()
    torch.testing.assert_close(actual, expected, atol=tol, rtol=0)


# ---------------------------------------------------------------------------- advantages

REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])


def test_group_advantages_hand_example():
    # group 0: mean 0.5, unbiased std = sqrt(4 * 0.25 / 3) = 0.57735 -> A = +-0.5 / 0.57735 = +-0.8660
    # group 1: all equal -> exactly 0
    adv = ADVANTAGES["group"](REWARDS, eps=0.0)
    close(adv[0], [0.8660, -0.8660, -0.8660, 0.8660])
    assert torch.equal(adv[1], torch.zeros(4))
    # default eps=1e-4: 0.5 / 0.57745 = 0.86588
    close(ADVANTAGES["group"](REWARDS)[0, 0], 0.86588, tol=1e-5)


def test_batch_advantages_hand_example():
    # all 8 rewards: six 1s, two 0s, mean 0.75; unbiased var = (6*0.0625 + 2*0.5625) / 7 = 0.2142857
    # std = 0.46291; group 0 centred +-0.5 -> +-0.5 / 0.46291 = +-1.0801; group 1 -> 0
    adv = ADVANTAGES["batch"](REWARDS, eps=0.0)
    close(adv[0], [1.0801, -1.0801, -1.0801, 1.0801])
    assert torch.equal(adv[1], torch.zeros(4))


def test_none_advantages_is_centred_only():
    # Dr. GRPO: r - mean = [0.5, -0.5, -0.5, 0.5]; group 1 -> 0
    adv = ADVANTAGES["none"](REWARDS)
    close(adv, [[0.5, -0.5, -0.5, 0.5], [0.0, 0.0, 0.0, 0.0]], tol=0)


@pytest.mark.parametrize("mode", sorted(ADVANTAGES))
def test_equal_rewards_give_exact_zero(mode):
    # 0.1 * 3 / 3 need not round back to exactly 0.1: the zero must still be exact, and no NaN
    rewards = torch.full((3, 5), 0.1)
    assert torch.equal(ADVANTAGES[mode](rewards), torch.zeros(3, 5))


@pytest.mark.parametrize("mode", sorted(set(ADVANTAGES) - {"reinforce_pp"}))  # it has no group baseline
def test_single_completion_groups(mode):
    # G = 1: a one-sample std is undefined (torch gives NaN); every group is zero-variance -> 0
    adv = ADVANTAGES[mode](torch.tensor([[1.0], [0.0], [3.0]]))
    assert torch.equal(adv, torch.zeros(3, 1))
    # P = 1, G = 1: also the batch std has a single value
    assert torch.equal(ADVANTAGES[mode](torch.tensor([[2.0]])), torch.zeros(1, 1))


def test_zero_variance_groups():
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [2.0, 2.0, 2.5]])
    assert zero_variance_groups(rewards).tolist() == [True, False, True, False]


# ---------------------------------------------------------------------------- KL estimators


def test_kl_estimators_hand_values():
    # logp - ref = [1, -1, 0]
    logp = torch.tensor([[0.0, -2.0, -0.5]])
    ref = torch.tensor([[-1.0, -1.0, -0.5]])
    # k1 = logp - ref = [1, -1, 0]
    close(KL_ESTIMATORS["k1"](logp, ref), [[1.0, -1.0, 0.0]], tol=0)
    # k2 = 0.5 * d^2 = [0.5, 0.5, 0]
    close(KL_ESTIMATORS["k2"](logp, ref), [[0.5, 0.5, 0.0]], tol=0)
    # k3 with x = ref - logp = [-1, 1, 0]: e^-1 + 1 - 1 = 0.36788; e - 1 - 1 = 0.71828; 0
    close(KL_ESTIMATORS["k3"](logp, ref), [[0.36788, 0.71828, 0.0]], tol=1e-5)


def test_k3_nonnegative_and_zero_when_equal():
    gen = torch.Generator().manual_seed(0)
    logp = -torch.rand(64, 50, generator=gen) * 10
    ref = logp + torch.randn(64, 50, generator=gen) * torch.logspace(-9, 1, 50)  # tiny to large gaps
    assert (KL_ESTIMATORS["k3"](logp, ref) >= 0).all()
    assert torch.equal(KL_ESTIMATORS["k3"](logp, logp), torch.zeros(64, 50))


def test_k3_does_not_overflow():
    # ref - logp = 1000 is clamped to 20: e^20 - 20 - 1 = 4.85165e8, finite
    k3 = KL_ESTIMATORS["k3"](torch.tensor([[-1000.0]]), torch.tensor([[0.0]]))
    assert torch.isfinite(k3).all()
    close(k3, [[math.exp(20) - 21]], tol=1e3)


# ---------------------------------------------------------------------------- clipped surrogate


def test_surrogate_ratio_one_on_first_inner_step():
    # logp == old_logp -> ratio 1, nothing clipped, loss = -A on every token
    logp = torch.tensor([[-1.0, -2.0], [-0.3, -0.7]])
    loss, ratio, clipped = clipped_surrogate(logp, logp.clone(), torch.tensor([2.0, -0.5]), 0.2, 0.2)
    assert torch.equal(ratio, torch.ones(2, 2))
    close(loss, [[-2.0, -2.0], [0.5, 0.5]], tol=0)
    assert not clipped.any()


def test_surrogate_clipping_both_sides():
    # rows: (log-ratio, A) = (1, +1), (1, -1), (-1, -1), (-1, +1); eps = 0.2
    logp = torch.tensor([[1.0], [1.0], [-1.0], [-1.0]])
    old = torch.zeros(4, 1)
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0])
    loss, ratio, clipped = clipped_surrogate(logp, old, adv, 0.2, 0.2)
    close(ratio, [[E], [E], [1 / E], [1 / E]], tol=1e-5)
    # ratio e, A=+1: min(2.718, 1.2) = 1.2 -> loss -1.2, clipped
    # ratio e, A=-1: min(-2.718, -1.2) = -2.718 -> loss 2.718, not clipped (no upper clip for A<0)
    # ratio 1/e, A=-1: min(-0.368, -0.8) = -0.8 -> loss 0.8, clipped
    # ratio 1/e, A=+1: min(0.368, 0.8) = 0.368 -> loss -0.368, not clipped
    close(loss, [[-1.2], [E], [0.8], [-1 / E]], tol=1e-5)
    assert clipped[:, 0].tolist() == [True, False, True, False]


def test_surrogate_clip_higher_is_asymmetric():
    # DAPO: eps_low 0.2, eps_high 0.28; ratios 1.25 (A=+1) and 0.75 (A=-1)
    logp = torch.log(torch.tensor([[1.25], [0.75]]))
    loss, _, clipped = clipped_surrogate(logp, torch.zeros(2, 1), torch.tensor([1.0, -1.0]), 0.2, 0.28)
    # 1.25 < 1.28 -> not clipped, loss -1.25 (symmetric eps 0.2 would clip it to -1.2)
    # 0.75 < 0.8 with A<0 -> clipped to 0.8, loss 0.8
    close(loss, [[-1.25], [0.8]], tol=1e-5)
    assert clipped[:, 0].tolist() == [False, True]
    sym_loss, _, _ = clipped_surrogate(logp, torch.zeros(2, 1), torch.tensor([1.0, -1.0]), 0.2, 0.2)
    close(sym_loss[0], [-1.2], tol=1e-5)


# ---------------------------------------------------------------------------- aggregations

PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
RAGGED = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])  # 2, 1 and 0 tokens


def test_masked_mean():
    # (1 + 2 + 4) / 3 = 2.3333; per row: 1.5, 4, 0 (empty row -> 0, not NaN)
    close(masked_mean(PER_TOKEN, RAGGED), 7 / 3)
    close(masked_mean(PER_TOKEN, RAGGED, dim=1), [1.5, 4.0, 0.0], tol=0)
    # padding holding inf/NaN must not leak through
    dirty = PER_TOKEN.clone()
    dirty[2] = float("nan")
    dirty[0, 2] = float("inf")
    close(masked_mean(dirty, RAGGED), 7 / 3)


def test_seq_mean_hand():
    # row means 1.5, 4, 0 (empty row counts as a sequence with loss 0): (1.5 + 4 + 0) / 3 = 1.8333
    close(AGGREGATIONS["seq_mean"](PER_TOKEN, RAGGED), 5.5 / 3)


def test_token_mean_hand():
    # (1 + 2 + 4) / 3 tokens = 2.3333
    close(AGGREGATIONS["token_mean"](PER_TOKEN, RAGGED), 7 / 3)


def test_constant_hand():
    # 7 / (3 rows * max_len 4) = 0.58333
    close(AGGREGATIONS["constant"](PER_TOKEN, RAGGED, max_len=4), 7 / 12)
    with pytest.raises(ValueError, match="max_len"):
        AGGREGATIONS["constant"](PER_TOKEN, RAGGED)


@pytest.mark.parametrize("name", sorted(AGGREGATIONS))
def test_all_masked_is_zero_not_nan(name):
    loss = AGGREGATIONS[name](PER_TOKEN, torch.zeros(3, 3), max_len=4)
    assert torch.equal(loss, torch.tensor(0.0))


@pytest.mark.parametrize("name", sorted(AGGREGATIONS))
def test_aggregation_chunk_invariance(name):
    # whole-batch loss and gradient == sum over chunks, each given the batch-wide normalisers
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(7, 6, generator=gen, requires_grad=True)
    lengths = torch.tensor([6, 1, 0, 4, 3, 5, 2])
    mask = (torch.arange(6)[None, :] < lengths[:, None]).int()

    whole = AGGREGATIONS[name](x, mask, max_len=8)
    (grad_whole,) = torch.autograd.grad(whole, x)

    # chunks of 4 and 3 rows; the second trimmed to its own longest row, 5 (padding differs per chunk)
    chunks = [(x[:4], mask[:4]), (x[4:, :5], mask[4:, :5])]
    norm = count_normalisers([m for _, m in chunks])
    # 7 rows, 6+1+0+4+3+5+2 = 21 tokens
    assert norm.num_sequences.item() == 7 and norm.num_tokens.item() == 21
    total = sum(
        AGGREGATIONS[name](cx, cm, num_sequences=norm.num_sequences, num_tokens=norm.num_tokens, max_len=8)
        for cx, cm in chunks
    )
    (grad_chunks,) = torch.autograd.grad(total, x)
    close(total, whole.detach(), tol=1e-6)
    close(grad_chunks, grad_whole, tol=1e-6)
    # without the global normalisers the chunks would not add up (except by accident)
    local = sum(AGGREGATIONS[name](cx, cm, max_len=8) for cx, cm in chunks)
    assert abs(local.item() - whole.item()) > 1e-3


def test_seq_mean_chunk_invariance_trimmed_padding():
    # each chunk trimmed to its own width, given the global row count, still adds up to the whole
    x = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    whole = AGGREGATIONS["seq_mean"](x, mask)  # (1.5 + 3) / 2 = 2.25
    close(whole, 2.25, tol=0)
    parts = AGGREGATIONS["seq_mean"](x[:1, :2], mask[:1, :2], num_sequences=2) + AGGREGATIONS["seq_mean"](
        x[1:, :1], mask[1:, :1], num_sequences=2
    )
    close(parts, 2.25, tol=0)


# ---------------------------------------------------------------------------- grpo_loss


def test_grpo_loss_with_kl_hand_composition():
    # 2 rows x 2 tokens, logp == old -> ratio 1, A = [1, -1], beta = 0.1
    # ref - logp = 1 on token (0, 0) only -> k3 = e - 2 = 0.71828 there, 0 elsewhere
    logp = torch.zeros(2, 2, requires_grad=True)
    old = torch.zeros(2, 2)
    ref = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    adv = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 2)
    loss, stats = grpo_loss(
        logp, old, ref, adv, mask, eps_low=0.2, eps_high=0.2, beta=0.1, aggregation="seq_mean"
    )
    # per token: row 0 [-1 + 0.071828, -1] -> mean -0.964086; row 1 [1, 1] -> mean 1
    # seq_mean = (-0.964086 + 1) / 2 = 0.017957
    close(loss, 0.017957, tol=1e-5)
    close(stats.policy_loss, 0.0, tol=1e-6)  # (-1 + 1) / 2
    close(stats.kl, 0.71828 / 4, tol=1e-5)  # masked token mean 0.17957
    close(stats.ratio_mean, 1.0, tol=0)
    close(stats.clip_fraction, 0.0, tol=0)
    # d loss / d logp[0,0] = -A * ratio / (2 tokens * 2 rows) + beta * (1 - e^(ref-logp)) / 4
    #                      = -0.25 + 0.1 * (1 - 2.71828) / 4 = -0.25 - 0.042957 = -0.292957
    loss.backward()
    close(logp.grad[0, 0], -0.292957, tol=1e-5)
    close(logp.grad[1, 0], 0.25, tol=1e-6)  # -(-1) / 4


def test_grpo_loss_without_kl():
    logp = torch.tensor([[0.5, 0.0]])
    args = dict(eps_low=0.2, eps_high=0.2, aggregation="token_mean")
    far_ref = torch.full((1, 2), -5.0)
    a, sa = grpo_loss(logp, torch.zeros(1, 2), None, torch.ones(1), torch.ones(1, 2), beta=0.1, **args)
    b, sb = grpo_loss(logp, torch.zeros(1, 2), far_ref, torch.ones(1), torch.ones(1, 2), beta=0.0, **args)
    # ratios e^0.5 = 1.6487 -> clipped to 1.2 (A=+1), and 1 -> token mean of [-1.2, -1] = -1.1
    close(a, -1.1, tol=1e-6)
    close(b, -1.1, tol=1e-6)
    assert sa.kl.item() == 0.0 and sb.kl.item() == 0.0


def test_grpo_loss_clip_stats():
    # 4 tokens counted, 1 padding; eps 0.2
    # row 0 (A=+1) ratios [e, 1]; row 1 (A=-1) ratios [1/e, e, (padding) 1/e]
    logp = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 1.0, -1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    _, stats = grpo_loss(
        logp, torch.zeros(2, 3), None, torch.tensor([1.0, -1.0]), mask,
        eps_low=0.2, eps_high=0.2, beta=0.0, aggregation="token_mean",
    )
    # high-clipped: (0,0) -> 1/4; low-clipped: (1,0) -> 1/4; (1,1) ratio e with A<0 is not clipped
    close(stats.clip_high, 0.25, tol=0)
    close(stats.clip_low, 0.25, tol=0)
    close(stats.clip_fraction, 0.5, tol=0)
    # ratio mean over counted tokens: (e + 1 + 1/e + e) / 4 = 1.8513
    close(stats.ratio_mean, (2 * E + 1 + 1 / E) / 4, tol=1e-5)


# ---------------------------------------------------------------------------- overlong penalty


def test_soft_overlong_penalty_regions():
    # max_len 100, cache 20: free up to 80, linear to -1 at 100, -1 beyond
    lengths = torch.tensor([10, 80, 85, 90, 100, 130])
    # 85 -> (80 - 85) / 20 = -0.25; 90 -> -0.5; 100 -> -1
    close(soft_overlong_penalty(lengths, 100, 20), [0.0, 0.0, -0.25, -0.5, -1.0, -1.0], tol=1e-6)
    with pytest.raises(ValueError):
        soft_overlong_penalty(lengths, 100, 0)


# ---------------------------------------------------------------------------- toy bandit


def test_toy_bandit_learns_the_rewarded_arm():
    # policy = softmax(logits) over 4 one-token "completions"; arm 2 pays 1, the others 0
    torch.manual_seed(0)
    logits = torch.zeros(4, requires_grad=True)
    optimiser = torch.optim.Adam([logits], lr=0.1)
    ref_logits = logits.detach().clone()
    p_start = torch.softmax(logits, 0)[2].item()  # 0.25
    num_prompts, group = 4, 8
    for _ in range(15):
        with torch.no_grad():
            arms = torch.multinomial(torch.softmax(logits, 0), num_prompts * group, replacement=True)
        rewards = (arms == 2).float().reshape(num_prompts, group)
        adv = ADVANTAGES["group"](rewards).reshape(-1)
        logp = torch.log_softmax(logits, 0)[arms][:, None]  # [N, T=1]
        ref_logp = torch.log_softmax(ref_logits, 0)[arms][:, None]
        loss, _ = grpo_loss(
            logp, logp.detach(), ref_logp, adv, torch.ones_like(logp),
            eps_low=0.2, eps_high=0.28, beta=0.01, aggregation="seq_mean",
        )
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    p_end = torch.softmax(logits, 0)[2].item()
    assert p_end > p_start + 0.3, (p_start, p_end)

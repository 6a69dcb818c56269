"""Hand-worked tests for the GRPO variants users reach for: RLOO, REINFORCE++, pass@k advantages,
GSPO and CISPO surrogates, KL-Cov, the entropy bonus and the chunked entropy. Every expected number
is worked by hand in a comment."""

import math

import pytest
import torch

from r1lab.grpo.advantages import ADVANTAGES
from r1lab.grpo.config import GRPOConfig
from r1lab.grpo.losses import AGGREGATIONS, LOSS_TYPES, SURROGATES, grpo_loss, kl_cov_penalty
from r1lab.models.logprobs import sequence_logprobs, token_entropy


def close(actual, expected, tol=1e-4):
    actual, expected = torch.as_tensor(actual).float(), torch.as_tensor(expected).float()
    torch.testing.assert_close(actual, expected, atol=tol, rtol=0)


REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])


# ---------------------------------------------------------------------------- advantages


def test_rloo_hand_example():
    # group 0: r=1 -> others [0, 0, 1], mean 1/3 -> 2/3; r=0 -> others [1, 0, 1], mean 2/3 -> -2/3
    adv = ADVANTAGES["rloo"](REWARDS)
    close(adv[0], [2 / 3, -2 / 3, -2 / 3, 2 / 3], tol=1e-6)
    assert torch.equal(adv[1], torch.zeros(4))  # unanimous group: exactly 0


def test_reinforce_pp_hand_example():
    # all 8 rewards: mean 0.75, unbiased std 0.46291 (six 1s, two 0s)
    # 1 -> 0.25 / 0.46291 = 0.54006; 0 -> -0.75 / 0.46291 = -1.62019
    # no group baseline: the unanimous group 1 still gets 0.54006 (its prompt is easier than average)
    adv = ADVANTAGES["reinforce_pp"](REWARDS, eps=0.0)
    close(adv, [[0.54006, -1.62019, -1.62019, 0.54006], [0.54006] * 4])
    assert torch.equal(ADVANTAGES["reinforce_pp"](torch.full((2, 3), 0.1)), torch.zeros(2, 3))


def test_pass_at_k_binary_matches_the_papers_closed_form():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    adv = ADVANTAGES["pass_at_k"](rewards, eps=0.0, pass_k=2)
    # row 0, G=4, n_neg=3, k=2: E[R] = 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5, std = sqrt(0.5 * 0.5) = 0.5
    # right: (1 - 0.5) / 0.5 = 1; wrong: (1 - 0.5 - C(2,1)/C(3,1)) / 0.5 = (0.5 - 2/3) / 0.5 = -1/3
    close(adv[0], [1.0, -1 / 3, -1 / 3, -1 / 3], tol=1e-6)
    # row 1, n_neg=2: E[R] = 1 - C(2,2)/6 = 5/6, std = sqrt(5/36) = 0.372678
    # right: (1/6) / 0.372678 = 0.447214; wrong: (1/6 - C(1,1)/C(3,1)) / 0.372678 = -0.447214
    close(adv[1], [0.447214, 0.447214, -0.447214, -0.447214], tol=1e-5)


def test_pass_at_k_graded_rewards_and_limits():
    # rewards [2, 1, 0, 0], k=2: the 6 pairs' maxima 2, 2, 2, 1, 1, 0 -> E[R] = 8/6 = 4/3,
    # E[R^2] = (12 + 2) / 6 = 7/3, var = 7/3 - 16/9 = 5/9, std = 0.745356
    # reward 2: every pair holding it has max 2 -> (2 - 4/3) / 0.745356 = 0.894427
    # reward 1: partners 2, 0, 0 -> maxima 2, 1, 1, mean 4/3 -> 0
    # reward 0: partners 2, 1, 0 -> maxima 2, 1, 0, mean 1 -> (1 - 4/3) / 0.745356 = -0.447214
    graded = torch.tensor([[2.0, 1.0, 0.0, 0.0]])
    close(ADVANTAGES["pass_at_k"](graded, eps=0.0, pass_k=2), [[0.894427, 0.0, -0.447214, -0.447214]], tol=1e-5)
    # k=1 is GRPO with the population std: [1, 0, 0, 0] has mean 0.25, std sqrt(0.1875) = 0.433013
    # -> 0.75 / 0.433013 = 1.732051, -0.25 / 0.433013 = -0.577350
    one = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    close(ADVANTAGES["pass_at_k"](one, eps=0.0, pass_k=1), [[1.732051, -0.577350, -0.577350, -0.577350]], tol=1e-5)
    # k=G: the only subset is the whole group, always solved -> std 0 -> exactly 0; so is k=3 with
    # one wrong answer of four (every 3-subset holds a right one)
    assert torch.equal(ADVANTAGES["pass_at_k"](one, pass_k=4), torch.zeros(1, 4))
    assert torch.equal(ADVANTAGES["pass_at_k"](torch.tensor([[1.0, 1.0, 1.0, 0.0]]), pass_k=3), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="pass_k"):
        ADVANTAGES["pass_at_k"](one, pass_k=5)


# ---------------------------------------------------------------------------- surrogates


def test_gspo_sequence_ratio_and_clip_hand():
    # row 0: log-ratios [0.2, 0.4], A=+1 -> s = e^0.3 = 1.349859 > 1.2: clipped, loss -1.2 per token, no gradient
    # row 1: log-ratios [-0.1, (padding) 5.0], mask [1, 0] -> s = e^-0.1 = 0.904837, A=+1: not clipped
    old = torch.zeros(2, 2)
    logp = torch.tensor([[0.2, 0.4], [-0.1, 5.0]], requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0]])
    out = SURROGATES["gspo"](logp, old, torch.tensor([1.0, 1.0]), mask, 0.2, 0.2)
    close(out.ratio, [[1.349859, 1.349859], [0.904837, 0.904837]], tol=1e-5)
    close(out.per_token[0], [-1.2, -1.2], tol=1e-6)
    close(out.per_token[1, 0], -0.904837, tol=1e-5)
    assert out.clip_high[0].all() and not out.clip_high[1].any() and not out.clip_low.any()
    # seq_mean: (-1.2 + -0.904837) / 2 = -1.052419; d/d logp[1,0] = -s A / (1 token) / 2 rows = -0.452419
    loss = AGGREGATIONS["seq_mean"](out.per_token, mask)
    close(loss, -1.052419, tol=1e-5)
    loss.backward()
    close(logp.grad, [[0.0, 0.0], [-0.452419, 0.0]], tol=1e-5)


def test_gspo_token_gradient_equals_the_sequence_objective():
    # unclipped, GSPO-token + seq_mean has the gradient of -(1/N) sum_i s_i A_i, s_i = exp(mean_t log ratio)
    gen = torch.Generator().manual_seed(0)
    old = -torch.rand(3, 5, generator=gen)
    logp = (old + 0.01 * torch.randn(3, 5, generator=gen)).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    adv = torch.tensor([1.0, -0.5, 2.0])
    out = SURROGATES["gspo"](logp, old, adv, mask, 0.2, 0.2)
    (token_grad,) = torch.autograd.grad(AGGREGATIONS["seq_mean"](out.per_token, mask), logp)
    logp2 = logp.detach().clone().requires_grad_()
    s = torch.exp(((logp2 - old) * mask).sum(1) / mask.sum(1))
    (seq_grad,) = torch.autograd.grad(-(s * adv).mean(), logp2)
    close(token_grad, seq_grad, tol=1e-6)


def test_cispo_keeps_the_gradient_of_truncated_tokens():
    # ratios [1.5, 0.5] (old 0), A=+1, eps_high 0.28, no lower bound (eps_low 1):
    # weights sg[clip] = [1.28, 0.5]; loss_t = -w A logp = [-1.28 ln 1.5, -0.5 ln 0.5] = [-0.518995, 0.346574]
    logp = torch.log(torch.tensor([[1.5, 0.5]])).requires_grad_()
    out = SURROGATES["cispo"](logp, torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2), 1.0, 0.28)
    close(out.per_token, [[-0.518995, 0.346574]], tol=1e-5)
    assert out.clip_high.tolist() == [[True, False]] and not out.clip_low.any()
    # token_mean gradient: -w A / 2 = [-0.64, -0.25]; PPO's clip would give the first token 0
    AGGREGATIONS["token_mean"](out.per_token, torch.ones(1, 2)).backward()
    close(logp.grad, [[-0.64, -0.25]], tol=1e-6)
    # a lower bound eps_low 0.2 lifts the 0.5 weight to 0.8 and marks it clipped low
    low = SURROGATES["cispo"](logp.detach(), torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2), 0.2, 0.28)
    close(low.per_token[0, 1], 0.8 * math.log(2), tol=1e-6)
    assert low.clip_low.tolist() == [[False, True]]


@pytest.mark.parametrize("name", sorted(LOSS_TYPES))
def test_every_loss_type_on_policy_gives_minus_a_gradient(name):
    # on-policy (ratio 1): d loss / d logp_t = -A / (aggregation's count) for every surrogate
    logp = torch.tensor([[-0.5, -1.0]], requires_grad=True)
    loss, stats = grpo_loss(logp, logp.detach(), None, torch.tensor([2.0]), torch.ones(1, 2), eps_low=0.2,
                            eps_high=0.2, beta=0.0, aggregation=LOSS_TYPES[name].aggregation, loss_type=name,
                            max_len=4)
    loss.backward()
    # seq_mean and token_mean: -2 / 2 tokens = -1; constant: -2 / (1 row * max_len 4) = -0.5
    expected = -0.5 if LOSS_TYPES[name].aggregation == "constant" else -1.0
    close(logp.grad, [[expected, expected]], tol=1e-6)
    close(stats.ratio_mean, 1.0, tol=1e-6)


# ---------------------------------------------------------------------------- entropy and KL-Cov


def test_kl_cov_penalty_hand():
    # mean logp = (-0.1 - 2 - 0.5 - 1) / 4 = -0.9, mean A = 0 (A = [1, -1] per row)
    # cov = (logp + 0.9) * A = [[0.8, -1.1], [-0.4, 0.1]]
    logp = torch.tensor([[-0.1, -2.0], [-0.5, -1.0]], requires_grad=True)
    old = torch.tensor([[-0.3, -2.0], [-0.5, -1.5]])
    adv, mask = torch.tensor([1.0, -1.0]), torch.ones(2, 2)
    # ratio 0.5 -> 2 tokens: cov 0.8 at (0,0) and 0.1 at (1,1); penalty |logp - old| = 0.2 and 0.5
    penalty = kl_cov_penalty(logp, old, adv, mask, 0.5, 1.0)
    close(penalty, [[0.2, 0.0], [0.0, 0.5]], tol=1e-6)
    penalty.sum().backward()
    close(logp.grad, [[1.0, 0.0], [0.0, 1.0]], tol=0)  # d|x|/dx = sign(logp - old) = +1 on both
    # ratio 0.25 -> 1 token, coef 2: 2 * 0.2 at (0,0) only; masked-out tokens are never picked
    close(kl_cov_penalty(logp, old, adv, mask, 0.25, 2.0), [[0.4, 0.0], [0.0, 0.0]], tol=1e-6)
    only_row1 = torch.tensor([[0, 0], [1, 1]])
    # row 1 alone: mean logp -0.75, mean A -1 -> A - mean A = 0: every cov is 0, the first is picked
    assert kl_cov_penalty(logp, old, adv, only_row1, 0.5, 1.0)[0].eq(0).all()


def test_token_entropy_hand():
    # uniform over 2: ln 2 = 0.693147; p = [0.75, 0.25]: -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.562335;
    # a -inf logit adds 0 (not NaN): [0, -inf] -> 0
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [0.0, float("-inf")]])
    close(token_entropy(logits), [0.693147, 0.562335, 0.0], tol=1e-6)


def test_entropy_bonus_hand():
    # ratio 1, A = 0: the surrogate is 0; entropies [0.5, 1.0], coef 0.1, token_mean:
    # loss = -0.1 * (0.5 + 1.0) / 2 = -0.075, d loss / d H_t = -0.1 / 2 = -0.05
    logp = torch.tensor([[-1.0, -2.0]])
    entropy = torch.tensor([[0.5, 1.0]], requires_grad=True)
    loss, stats = grpo_loss(logp, logp, None, torch.zeros(1), torch.ones(1, 2), eps_low=0.2, eps_high=0.2,
                            beta=0.0, aggregation="token_mean", entropy=entropy, entropy_coef=0.1)
    close(loss, -0.075, tol=1e-7)
    close(stats.entropy, 0.75, tol=1e-7)
    loss.backward()
    close(entropy.grad, [[-0.05, -0.05]], tol=1e-7)


def test_chunked_entropy_equals_the_full_softmax(policy):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 200, (3, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # a left-padded row
    logp, ent = sequence_logprobs(policy, ids, mask, temperature=0.7, chunk_size=4, with_entropy=True)
    with torch.no_grad():
        logits = policy(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
    expected = torch.distributions.Categorical(logits=logits[:, :-1].float() / 0.7).entropy()
    close(ent[1:], expected[1:], tol=1e-4)
    close(ent[0, 3:], expected[0, 3:], tol=1e-4)
    assert torch.equal(logp, sequence_logprobs(policy, ids, mask, temperature=0.7, chunk_size=4))
    assert not ent.requires_grad  # measured only, unless a bonus asks for its gradient
    _, with_grad = sequence_logprobs(policy, ids, mask, with_entropy=True, entropy_grad=True)
    assert with_grad.requires_grad


# ---------------------------------------------------------------------------- config


def test_loss_type_picks_the_aggregation_and_keeps_explicit_keys():
    assert GRPOConfig().loss_aggregation == "seq_mean"
    assert GRPOConfig(loss_type="dapo").loss_aggregation == "token_mean"
    assert GRPOConfig(loss_type="dr_grpo").loss_aggregation == "constant"
    assert GRPOConfig(aggregation="token_mean").loss_aggregation == "token_mean"  # today's recipes
    assert GRPOConfig(loss_type="gspo", aggregation="token_mean").loss_aggregation == "token_mean"
    with pytest.raises(ValueError, match="loss_type=dapo"):
        GRPOConfig(loss_type="dapo", aggregation="seq_mean")
    with pytest.raises(ValueError, match="pass_k"):
        GRPOConfig(advantage="pass_at_k", pass_k=17)
    with pytest.raises(ValueError, match="eps_low"):
        GRPOConfig(eps_low=1.0)
    GRPOConfig(loss_type="cispo", eps_low=1.0)  # no lower bound
    with pytest.raises(ValueError, match="loss_type"):
        GRPOConfig(loss_type="ppo")


def test_entropy_of_the_shared_prompt_forward_equals_the_full_one(policy):
    # a GRPO batch: 2 prompts (one left-padded) x 2 completions (one right-padded); the entropy made
    # with each prompt run once must equal the model's own forward's on every completion position,
    # and its gradient (the entropy bonus) must reach the weights
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 200, (4, 10), generator=gen)
    mask = torch.ones_like(ids)
    mask[2:, :2] = 0  # prompt 1 is 2 tokens shorter
    ids[2:, :6] = ids[2, :6]  # rows 2-3 share prompt 1, rows 0-1 prompt 0
    ids[1, :6] = ids[0, :6]
    mask[1, 8:] = 0  # a completion ending early
    completion = torch.zeros(4, 9)
    completion[:, 5:] = mask[:, 6:].float()
    _, full = sequence_logprobs(policy, ids, mask, completion_mask=completion, with_entropy=True)
    _, shared = sequence_logprobs(policy, ids, mask, completion_mask=completion, prompt_len=6, with_entropy=True,
                                  entropy_grad=True)
    close(shared, full, tol=1e-4)
    assert shared[1, 7:].eq(0).all() and shared[:, :5].eq(0).all()  # padding and prompt positions
    shared.sum().backward()
    assert policy.lm_head.weight.grad is not None and policy.lm_head.weight.grad.abs().sum() > 0
    policy.zero_grad(set_to_none=True)


def _bandit_entropy_curve(kl_cov_ratio: float, seed: int, rollouts: int = 12, passes: int = 4) -> list[float]:
    """A softmax policy over 8 one-token "completions", arm 2 paid 1: the policy's entropy after each
    rollout of 4 groups x 8, trained with `passes` clipped passes per rollout (off-policy after the first)."""
    torch.manual_seed(seed)
    logits = torch.zeros(8, requires_grad=True)
    optimiser = torch.optim.Adam([logits], lr=0.05)
    curve = []
    for _ in range(rollouts):
        with torch.no_grad():
            arms = torch.multinomial(torch.softmax(logits, 0), 32, replacement=True)
            old = torch.log_softmax(logits, 0)[arms][:, None]
        adv = ADVANTAGES["group"]((arms == 2).float().reshape(4, 8)).reshape(-1)
        for _ in range(passes):
            logp = torch.log_softmax(logits, 0)[arms][:, None]
            loss, _ = grpo_loss(logp, old, None, adv, torch.ones_like(logp), eps_low=0.2, eps_high=0.2, beta=0.0,
                                aggregation="token_mean", kl_cov_ratio=kl_cov_ratio, kl_cov_coef=1.0)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        curve.append(float(token_entropy(logits.detach())))
    return curve


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_cov_slows_the_entropy_collapse_of_a_bandit(seed):
    # measured: without control the entropy falls from ln 8 = 2.08 to 0.68-0.74 in 12 rollouts (seeds
    # 0-2), with KL-Cov on 20% of the tokens to 0.79-0.85; both still learn the paid arm
    plain, controlled = _bandit_entropy_curve(0.0, seed), _bandit_entropy_curve(0.2, seed)
    assert controlled[-1] > plain[-1] + 0.05, (plain[-1], controlled[-1])
    assert controlled[-1] < 1.2 and plain[-1] < 1.2

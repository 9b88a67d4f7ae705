"""PPO's pure maths against values worked out by hand (in the comments)."""

import math

import pytest
import torch

from lightning_rlhf.kl_control import AdaptiveKLController, KLController
from lightning_rlhf.ops import (
    clipped_policy_loss,
    clipped_value_loss,
    completion_index,
    generalized_advantages,
    kl_estimate,
    masked_whiten,
    naive_logps,
    selective_logps_entropy,
)
from lightning_rlhf.rollout import penalise_missing_eos


def test_gae_by_hand():
    # gamma 1, lambda 0.5; V = [0.5, 0.4, 0.3], r = [0, 0, 1], episode ends after t=2:
    # t=2: delta = 1 + 0 - 0.3 = 0.7,     A2 = 0.7
    # t=1: delta = 0 + 0.3 - 0.4 = -0.1,  A1 = -0.1 + 0.5 * 0.7 = 0.25
    # t=0: delta = 0 + 0.4 - 0.5 = -0.1,  A0 = -0.1 + 0.5 * 0.25 = 0.025
    # returns = A + V = [0.525, 0.65, 1.0]
    rewards, values = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.4, 0.3]])
    advantages, returns = generalized_advantages(rewards, values, torch.ones(1, 3, dtype=torch.bool), gamma=1.0, lam=0.5)
    torch.testing.assert_close(advantages, torch.tensor([[0.025, 0.25, 0.7]]))
    torch.testing.assert_close(returns, torch.tensor([[0.525, 0.65, 1.0]]))


def test_gae_masks_prompt_and_padding_and_discounts():
    # The same episode at columns 1..2 of a row with a prompt column before and padding
    # after (values there are garbage and must not leak in): A = [0, 0.25, 0.7, 0].
    rewards = torch.tensor([[5.0, 0.0, 1.0, 5.0]])
    values = torch.tensor([[9.0, 0.4, 0.3, 9.0]])
    mask = torch.tensor([[False, True, True, False]])
    advantages, returns = generalized_advantages(rewards, values, mask, gamma=1.0, lam=0.5)
    torch.testing.assert_close(advantages, torch.tensor([[0.0, -0.1 + 0.5 * 0.7, 0.7, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[0.0, 0.65, 1.0, 0.0]]))
    # gamma 0.9, lambda 1, V = 0, r = [0, 1]: A1 = 1, A0 = 0.9 * 1 = 0.9 (discounted return).
    advantages, _ = generalized_advantages(torch.tensor([[0.0, 1.0]]), torch.zeros(1, 2), torch.ones(1, 2), gamma=0.9, lam=1.0)
    torch.testing.assert_close(advantages, torch.tensor([[0.9, 1.0]]))


def test_whitening_by_hand():
    # [1, 2, 3] (the 4th entry masked): mean 2, unbiased variance ((1 + 0 + 1) / 2) = 1.
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[True, True, True, False]])
    torch.testing.assert_close(masked_whiten(values, mask), torch.tensor([[-1.0, 0.0, 1.0, 0.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(masked_whiten(values, mask, shift_mean=False), torch.tensor([[1.0, 2.0, 3.0, 0.0]]), atol=1e-6, rtol=0)


def test_kl_estimators_by_hand():
    # log pi = -1, log pi_ref = -2: log r = -1; k1 = 1, k2 = 0.5, k3 = e^-1 - 1 + 1 = 0.3679.
    logp, ref = torch.tensor([-1.0, -0.5]), torch.tensor([-2.0, -0.5])
    torch.testing.assert_close(kl_estimate(logp, ref, "k1"), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(kl_estimate(logp, ref, "k2"), torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(kl_estimate(logp, ref, "k3"), torch.tensor([math.exp(-1.0), 0.0]))
    # log pi = -2, log pi_ref = -1: k1 = -1 (can be negative), k3 = e - 1 - 1 = 0.7183 (never).
    torch.testing.assert_close(kl_estimate(torch.tensor([-2.0]), torch.tensor([-1.0]), "k3"), torch.tensor([math.e - 2.0]))
    with pytest.raises(ValueError, match="k1, k2 or k3"):
        kl_estimate(logp, ref, "k4")


def test_clipped_policy_loss_by_hand():
    # ratio 1.5, A = +1: max(-1.5, -1.2) = -1.2 (clipped: no incentive to push further)
    # ratio 1.5, A = -1: max(1.5, 1.2) = 1.5    (unclipped: pessimistic bound)
    # ratio 0.5, A = +1: max(-0.5, -0.8) = -0.5 (unclipped)
    # ratio 0.5, A = -1: max(0.5, 0.8) = 0.8    (clipped)
    ratios = torch.tensor([1.5, 1.5, 0.5, 0.5])
    old = torch.zeros(4)
    new = ratios.log().requires_grad_(True)
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, clipped = clipped_policy_loss(new, old, advantages, clip=0.2)
    torch.testing.assert_close(loss, torch.tensor([-1.2, 1.5, -0.5, 0.8]))
    assert clipped.tolist() == [True, False, False, True]
    (grad,) = torch.autograd.grad(loss.sum(), new)
    # d(-A * ratio)/d log pi = -A * ratio where unclipped, 0 where clipped.
    torch.testing.assert_close(grad, torch.tensor([0.0, 1.5, -0.5, 0.0]))


def test_clipped_value_loss_by_hand():
    # old V = 0, clip 0.2 -> V_clip = 0.2 for new V = 1.
    # R = 2:   0.5 * max((1-2)^2 = 1, (0.2-2)^2 = 3.24) = 1.62   (clipped branch)
    # R = 0.5: 0.5 * max((1-0.5)^2 = 0.25, (0.2-0.5)^2 = 0.09) = 0.125
    loss, clipped = clipped_value_loss(torch.tensor([1.0, 1.0]), torch.zeros(2), torch.tensor([2.0, 0.5]), clip=0.2)
    torch.testing.assert_close(loss, torch.tensor([1.62, 0.125]))
    assert clipped.tolist() == [True, False]


def test_adaptive_kl_controller_by_hand():
    # beta' = beta * (1 + clip(KL/target - 1, -0.2, 0.2) * n / horizon)
    controller = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    controller.update(12.0, 100)  # error 1 -> 0.2: 0.1 * (1 + 0.2 * 0.01) = 0.1002
    assert controller.beta == pytest.approx(0.1002)
    controller.update(6.6 * 1.0, 1000)  # error 0.1: 0.1002 * (1 + 0.1 * 0.1) = 0.101202
    assert controller.beta == pytest.approx(0.101202)
    controller.update(0.0, 10000)  # error -1 -> -0.2: 0.101202 * 0.8
    assert controller.beta == pytest.approx(0.101202 * 0.8)
    restored = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    restored.load_state_dict(controller.state_dict())
    assert restored.beta == controller.beta
    fixed = KLController(0.05)
    fixed.update(100.0, 100)
    assert fixed.beta == 0.05


def test_logps_and_entropy_at_a_temperature_match_full_softmax():
    torch.manual_seed(0)
    n, t, h, v = 2, 5, 6, 9
    head = torch.nn.Linear(h, v, bias=False)
    hidden = torch.randn(n, t, h, requires_grad=True)
    ids = torch.randint(0, v, (n, t))
    mask = torch.zeros(n, t, dtype=torch.bool)
    mask[0, 2:] = True
    mask[1, 1:3] = True
    logps, entropy = selective_logps_entropy(hidden, ids, completion_index(mask), head, chunk_size=2, temperature=0.7)
    logits = head(hidden) / 0.7
    torch.testing.assert_close(logps, naive_logps(logits, ids, mask))
    full = torch.log_softmax(logits[:, :-1], -1)
    torch.testing.assert_close(entropy, -(full.exp() * full).sum(-1) * mask[:, 1:])
    (grad,) = torch.autograd.grad(entropy.sum() + logps.sum(), hidden)
    (grad_full,) = torch.autograd.grad((-(full.exp() * full).sum(-1) * mask[:, 1:]).sum() + naive_logps(logits, ids, mask).sum(), hidden)
    torch.testing.assert_close(grad, grad_full)


def test_missing_eos_penalty():
    scores = penalise_missing_eos(torch.tensor([0.5, 0.5]), torch.tensor([True, False]), penalty=1.0)
    torch.testing.assert_close(scores, torch.tensor([0.5, -0.5]))


def test_running_score_moments_and_clipping_by_hand():
    from lightning_rlhf_plugins.ppo import PPO, RunningMoments

    moments = RunningMoments()
    moments.update(torch.tensor([1.0, 2.0, 3.0]))
    moments.update(torch.tensor([4.0, 5.0]))
    # all five: mean 3, population variance (4 + 1 + 0 + 1 + 4) / 5 = 2
    assert moments.mean == pytest.approx(3.0) and moments.var == pytest.approx(2.0) and moments.count == 5
    ppo = PPO(normalize_scores=True, score_clip=1.0)
    # first batch [0, 2]: mean 1, std 1 -> [-1, 1]; then clipped to [-1, 1]
    torch.testing.assert_close(ppo._shape_scores(torch.tensor([0.0, 2.0])), torch.tensor([-1.0, 1.0]), atol=1e-5, rtol=0)
    # no update (validation): statistics unchanged, 5 -> (5 - 1) / 1 = 4 -> clipped to 1
    torch.testing.assert_close(ppo._shape_scores(torch.tensor([5.0]), update=False), torch.tensor([1.0]))
    assert ppo.score_moments.count == 2

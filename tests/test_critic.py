"""The critic beside the policy: each clipped by its own gradient norm, and a value head on
the policy's backbone read from the policy's own forward."""

import pytest
import torch

from lightning_rlhf.models.critic import CriticSettings
from tests.test_ppo import ppo_module


def set_gradients(params, scale: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator) * scale


def total_norm(params) -> float:
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))


@pytest.mark.parametrize("critic", [CriticSettings(max_grad_norm=0.5), CriticSettings(share_policy_backbone=True)],
                         ids=["value_model", "value_head"])
def test_a_huge_critic_gradient_leaves_the_policys_step_alone(tiny_tokenizer, one_thread, critic):
    """A critic gradient of norm over 1e4 beside a policy gradient of norm ~3: clipped
    together to 1.0 the policy's step would shrink 1e4 times more than alone; clipped apart, the policy's gradients are
    what clipping them alone gives, and the critic's norm is its own setting (0.5), else
    the policy's (online.max_grad_norm, 1.0)."""
    module = ppo_module(critic=critic)
    module.configure_model()
    policy = [p for p in module.policy.parameters() if p.requires_grad]
    critic_params = module.critic_parameters()
    set_gradients(policy, 0.01, seed=0)
    set_gradients(critic_params, 1e4, seed=1)
    norms_before = {"policy": total_norm(policy), "critic": total_norm(critic_params)}
    assert norms_before["policy"] > 1.0 and norms_before["critic"] > 1e4
    alone = [p.grad * (1.0 / (norms_before["policy"] + 1e-6)) for p in policy]  # clip_grad_norm_'s coefficient

    norms = module.clip_gradient_norms()

    for p, expected in zip(policy, alone):
        torch.testing.assert_close(p.grad, expected, rtol=1e-6, atol=0)
    assert total_norm(critic_params) == pytest.approx(critic.max_grad_norm or 1.0, rel=1e-5)
    assert {k: float(v) for k, v in norms.items()} == pytest.approx(norms_before, rel=1e-5)  # pre-clip, logged

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


def count_backbone_forwards(module) -> list[int]:
    """Wraps the policy's backbone so that every forward appends to the returned list."""
    from lightning_rlhf.models.loading import unwrap

    backbone = unwrap(module.policy).get_decoder()
    calls, forward = [], backbone.forward
    backbone.forward = lambda *args, **kwargs: calls.append(1) or forward(*args, **kwargs)
    return calls


def test_a_value_head_reads_the_policys_own_forward(tiny_tokenizer, one_thread):
    """PPO's loss with a value head on the policy's backbone runs the backbone once per
    micro-batch (log-probs and values from the same hidden states), and its loss and
    gradients are those of the two forwards it used to run (one for log-probs, one for
    values)."""
    from lightning_rlhf.testing import make_batch

    torch.manual_seed(0)
    module = ppo_module(critic=CriticSettings(share_policy_backbone=True), temperature=0.7)
    module.configure_model()
    experience = module.algorithm.rollout(module, make_batch("prompt", module.tokenizer))
    minibatch = experience.minibatch(list(range(len(experience))))
    params = [p for p in module.parameters() if p.requires_grad]
    calls = count_backbone_forwards(module)

    def loss_and_gradients():
        module.zero_grad()
        calls.clear()
        out = module.algorithm.loss(module, minibatch)
        out.loss.backward()
        return out, [p.grad.clone() for p in params], len(calls)

    out, grads, forwards = loss_and_gradients()
    module.policy_logps_and_values = lambda batch, **settings: (module.policy_logps(batch, **settings), module.values(batch))
    two_out, two_grads, two_forwards = loss_and_gradients()
    assert (forwards, two_forwards) == (1, 2)
    torch.testing.assert_close(out.loss, two_out.loss, rtol=0, atol=1e-6)
    assert out.metrics["loss/value"] > 0  # the values entered the loss
    torch.testing.assert_close(out.metrics["loss/value"], two_out.metrics["loss/value"], rtol=0, atol=1e-6)
    for a, b in zip(grads, two_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_value_head_reads_the_rollouts_forward_in_pieces(tiny_tokenizer, one_thread):
    """In a rollout (no grad, pieces of 2 rows) one forward per piece gives the log-probs,
    entropies and values that separate ``policy_logps`` and ``values`` calls give."""
    from lightning_rlhf.testing import make_batch

    torch.manual_seed(0)
    module = ppo_module(critic=CriticSettings(share_policy_backbone=True))
    module.configure_model()
    module.online_settings.rollout_batch_size = 2
    experience = module.algorithm.rollout(module, make_batch("prompt", module.tokenizer))
    batch = {k: v for k, v in experience.tensors.items() if k in ("input_ids", "attention_mask", "completion_mask")}
    assert len(experience) > 2
    calls = count_backbone_forwards(module)
    with torch.no_grad():
        logps, values = module.policy_logps_and_values(batch, temperature=0.7, entropy=True)
        assert len(calls) == -(-len(experience) // 2)  # one forward per piece
        expected_logps, expected_values = module.policy_logps(batch, temperature=0.7, entropy=True), module.values(batch)
    mask = logps.mask
    torch.testing.assert_close(logps.token_logps * mask, expected_logps.token_logps * mask, rtol=0, atol=1e-6)
    torch.testing.assert_close(logps.entropy * mask, expected_logps.entropy * mask, rtol=0, atol=1e-6)
    torch.testing.assert_close(values * mask, expected_values * mask, rtol=0, atol=1e-6)

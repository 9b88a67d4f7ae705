"""GRPO and its variants: advantages, penalties and each loss against hand arithmetic, and
the plugin on the tiny model."""

import math

import pytest
import torch

from lightning_rlhf import create_algorithm
from lightning_rlhf.algorithm import Experience
from lightning_rlhf_plugins.grpo import group_advantages, overlong_penalty
from tests.objective_fakes import GivenLogps

# Two completions (no group structure needed for the loss itself):
#   seq 0: new log-probs [-1.0, -2.0], old [-1.1, -1.8], A = +1.0 -> log-ratios [0.1, -0.2]
#          ratios [e^0.1, e^-0.2] = [1.105171, 0.818731] (inside [0.8, 1.2]: no clipping)
#   seq 1: new [-0.5], old [-0.5], A = -0.5 -> ratio 1
# token losses -min(rho A, clip(rho) A): seq 0 [-1.105171, -0.818731], seq 1 [0.5]
#   grpo     (mean(-1.105171, -0.818731) + 0.5) / 2                = -0.230975
#   dr_grpo  (-1.105171 - 0.818731 + 0.5) / (2 rows * 4 max tokens) = -0.177988
#   dapo     (-1.105171 - 0.818731 + 0.5) / 3 tokens                = -0.474634
#   gspo     s0 = exp(mean(0.1, -0.2)) = e^-0.05 = 0.951229: (-0.951229 + 0.5) / 2 = -0.225615
#   cispo    -sg(rho) A log pi: seq 0 [1.105171 * 1.0, 0.818731 * 2.0], seq 1 [-1 * 0.5 * 0.5]
#            (1.105171 + 1.637462 - 0.25) / 3                       = 0.830877
POLICY = [[-1.0, -2.0], [-0.5]]
OLD = torch.tensor([[-1.1, -1.8], [-0.5, 0.0]])
REFERENCE = [[-1.2, -2.0], [-0.7]]


def batch(**extra) -> dict:
    return {"old_logps": OLD, "advantages": torch.tensor([1.0, -0.5]), "loss_rows": torch.tensor(2),
            "loss_tokens": torch.tensor(3), **extra}


@pytest.mark.parametrize(("loss_type", "expected"), [
    ("grpo", -0.230975), ("dr_grpo", -0.177988), ("dapo", -0.474634), ("gspo", -0.225615), ("cispo", 0.830877),
])
def test_each_loss_by_hand(loss_type, expected):
    algorithm = create_algorithm("grpo", loss_type=loss_type, max_new_tokens=4)
    out = algorithm.loss(GivenLogps(POLICY), batch())
    assert out.loss.item() == pytest.approx(expected, abs=1e-5)
    assert out.metrics["clip_fraction"].item() == 0.0


def test_the_k3_term_and_no_reference_without_it():
    """beta 0.1, reference [-1.2, -2.0], [-0.7]: delta = ref - new = [-0.2, 0], [-0.2];
    k3 = e^d - d - 1 = [0.018731, 0], [0.018731].
    grpo: ((-1.105171 + 0.0018731 - 0.818731) / 2 + 0.5 + 0.0018731) / 2 = -0.229571;
    kl metric: mean over sequences of each one's token mean: (0.0093654 + 0.018731) / 2 = 0.014048."""
    algorithm = create_algorithm("grpo", beta=0.1)
    assert algorithm.needs_reference and not create_algorithm("grpo").needs_reference
    ref = torch.tensor([[-1.2, -2.0], [-0.7, 0.0]])
    out = algorithm.loss(GivenLogps(POLICY), batch(ref_logps=ref))
    assert out.loss.item() == pytest.approx(-0.229571, abs=1e-5)
    assert out.metrics["kl"].item() == pytest.approx(0.014048, abs=1e-5)


def test_clipping_stops_the_gradient_where_the_papers_say():
    """seq 0 token 0 at ratio e^0.5 = 1.6487 > 1.2 with A = +1: grpo clips it (no gradient
    there); dapo's clip-higher (1.28) still clips it; cispo (upper 5.0) keeps it, with weight 1.6487."""
    old = torch.tensor([[-1.5, -1.8], [-0.5, 0.0]])
    grads = {}
    for loss_type in ("grpo", "dapo", "cispo"):
        ctx = GivenLogps(POLICY)
        out = create_algorithm("grpo", loss_type=loss_type).loss(ctx, batch(old_logps=old))
        out.loss.backward()
        grads[loss_type] = ctx.grad[0, 0].item()
        if loss_type != "cispo":
            assert out.metrics["clip_fraction"].item() == pytest.approx(1 / 3)
    assert grads["grpo"] == 0.0 and grads["dapo"] == 0.0
    assert grads["cispo"] == pytest.approx(-math.exp(0.5) * 1.0 / 3, abs=1e-5)  # d/d logp of -w A logp / 3 tokens


def test_group_advantages_by_hand():
    """Two groups of 3: [1, 2, 3] -> mean 2, std 1 -> [-1, 0, 1] / (1 + 1e-4); [5, 5, 5] -> all equal."""
    rewards = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    scaled, flat = group_advantages(rewards, 3, divide_by_std=True)
    torch.testing.assert_close(scaled, torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]) / torch.tensor([1.0001] * 3 + [1.0001] * 3))
    assert flat.tolist() == [False, True]
    centred, _ = group_advantages(rewards, 3, divide_by_std=False)  # Dr. GRPO
    assert centred.tolist() == [-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]


def test_overlong_penalty_by_hand():
    """max 20 tokens, buffer 8: 0 up to 12 tokens, then -(L - 12) / 8: 16 -> -0.5, 20 -> -1."""
    lengths = torch.tensor([5, 12, 16, 20])
    assert overlong_penalty(lengths, 20, 8).tolist() == [0.0, 0.0, -0.5, -1.0]


def test_settings_are_checked_and_the_schedule_counts_sampled_rows():
    for bad in ({"num_generations": 1}, {"loss_type": "ppo"}, {"beta": -1.0}, {"overlong_buffer": 48}):
        with pytest.raises(ValueError):
            create_algorithm("grpo", **bad)
    algorithm = create_algorithm("grpo", num_generations=4, num_iterations=2, minibatch_size=8)
    assert algorithm.samples_per_prompt == 4
    assert algorithm.updates_per_rollout(6 * 4) == 2 * 3  # 24 rows in 8-row minibatches, twice
    assert create_algorithm("grpo", loss_type="dapo").upper_clip == 0.28
    assert not create_algorithm("grpo", loss_type="dr_grpo").divides_by_std


def test_rollout_on_the_tiny_model_groups_rows_and_drops_flat_groups(tiny_tokenizer):
    """G = 4 samples of 3 prompts, scored by how many letters "e" they hold; DAPO leaves out
    the groups whose 4 rewards are equal; one step per rollout needs no pi_old forward."""
    from lightning_rlhf.rewards import FunctionReward
    from lightning_rlhf.testing import make_batch, make_policy_module

    torch.manual_seed(0)
    for loss_type in ("grpo", "dapo"):
        algorithm = create_algorithm("grpo", loss_type=loss_type, max_new_tokens=6)
        module = make_policy_module(algorithm, reward=FunctionReward("lightning_rlhf.rewards.rules.letter_e_reward"))
        prompts = make_batch("prompt", module.tokenizer)
        experience = algorithm.rollout(module, prompts)
        groups = experience.group_index.tolist()
        assert groups == sorted(groups) and "old_logps" not in experience.tensors and "ref_logps" not in experience.tensors
        if loss_type == "grpo":
            assert len(experience) == 3 * 4 and groups == [g for g in range(3) for _ in range(4)]
        for g in set(groups):
            rows = [i for i, x in enumerate(groups) if x == g]
            assert abs(sum(experience.tensors["advantages"][rows].tolist())) < 1e-4  # centred in its group
        if len(experience):
            out = algorithm.loss(module, next(iter(algorithm.minibatches(experience))))
            assert torch.isfinite(out.loss)


def test_an_empty_rollout_yields_no_step():
    assert list(create_algorithm("grpo").minibatches(Experience({"input_ids": torch.zeros(0, 4, dtype=torch.long)}))) == []

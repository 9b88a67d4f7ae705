"""Online DPO: the loss against hand arithmetic, the pairing, and the plugin on the tiny model."""

import math

import pytest
import torch

from lightning_rlhf import create_algorithm
from lightning_rlhf_plugins.online_dpo import pair_rows
from tests.objective_fakes import GivenLogps

# Two pairs, rows (chosen, rejected, chosen, rejected), beta 0.1:
#   policy sums  [-3, -0.5, -2, -2]; reference sums [-3.5, -1.0, -2.5, -1.5]
#   pair 0: 0.1 * ((-3 + 3.5) - (-0.5 + 1.0)) = 0     -> -log sigmoid(0)   = 0.693147
#   pair 1: 0.1 * ((-2 + 2.5) - (-2 + 1.5))   = 0.1   -> -log sigmoid(0.1) = 0.644397
#   L = (0.693147 + 0.644397) / 2 = 0.668772
#   eps 0.1: pair 1 is 0.9 * 0.644397 + 0.1 * 0.744397 (-log sigmoid(-0.1)); L = 0.673772
#   dL/d(log pi(chosen_1)) = -(1 - sigmoid(0.1)) * 0.1 / 2 = -0.023751
POLICY = [[-1.0, -2.0], [-0.5], [-2.0], [-1.0, -1.0]]
BATCH = {"ref_logps": torch.tensor([-3.5, -1.0, -2.5, -1.5]), "loss_rows": torch.tensor(4)}


@pytest.mark.parametrize(("label_smoothing", "expected"), [(0.0, 0.668772), (0.1, 0.673772)])
def test_the_loss_by_hand(label_smoothing, expected):
    ctx = GivenLogps(POLICY)
    out = create_algorithm("online_dpo", beta=0.1, label_smoothing=label_smoothing).loss(ctx, BATCH)
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.metrics["rewards/accuracies"].item() == 0.5  # pair 0's margin is 0, not > 0
    assert out.metrics["rewards/margins"].item() == pytest.approx(0.05, abs=1e-6)
    if label_smoothing == 0.0:
        out.loss.backward()
        assert ctx.grad[2, 0].item() == pytest.approx(-0.023751, abs=1e-6)
    assert ctx.calls["reference"] == 0  # the rollout's reference sums are used


def test_micro_batches_add_up_to_the_minibatch():
    """Each half (one pair) divides by the whole minibatch's pair count."""
    algorithm = create_algorithm("online_dpo", beta=0.1)
    halves = [algorithm.loss(GivenLogps(POLICY[i : i + 2]), {"ref_logps": BATCH["ref_logps"][i : i + 2], "loss_rows": torch.tensor(4)})
              for i in (0, 2)]
    assert sum(h.loss.item() for h in halves) == pytest.approx(0.668772, abs=1e-6)


def test_pairs_by_hand():
    """Pairs (rows 0,1) (2,3) (4,5) (6,7): 0.2 < 0.9, a tie, 1.0 > -1.0, a NaN: chosen rows 1
    and 4, rejected 0 and 5; the tie and the unscored pair keep their order, undecided."""
    chosen, rejected, decided = pair_rows(torch.tensor([0.2, 0.9, 0.5, 0.5, 1.0, -1.0, math.nan, 3.0]))
    assert chosen.tolist() == [1, 2, 4, 6] and rejected.tolist() == [0, 3, 5, 7]
    assert decided.tolist() == [True, False, True, False]


def test_tied_pairs_stay_in_the_batch_and_add_no_loss():
    """A tied pair's rows have no completion token to score: the loss is the mean over the
    decided pairs alone, as if the tied pair were not there (pair 1 of the hand-computed
    batch, 0.644397)."""
    algorithm = create_algorithm("online_dpo", beta=0.1)
    tied = GivenLogps([[], [], *POLICY[2:]])
    out = algorithm.loss(tied, {"ref_logps": torch.tensor([0.0, 0.0, -2.5, -1.5]), "loss_rows": torch.tensor(2)})
    assert out.loss.item() == pytest.approx(0.644397, abs=1e-6)
    out.loss.backward()
    assert tied.grad[2, 0].item() == pytest.approx(-0.047502, abs=1e-6)  # twice the 2-pair gradient: one pair counts


def test_settings_are_checked():
    with pytest.raises(ValueError, match="beta"):
        create_algorithm("online_dpo", beta=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        create_algorithm("online_dpo", label_smoothing=0.5)
    assert create_algorithm("online_dpo", num_iterations=2, minibatch_size=4).updates_per_rollout(8) == 4


def text_checksum(prompts, completions):
    """A reward that rarely ties: the sum of the completion's character codes."""
    return [float(sum(map(ord, c))) for c in completions]


def test_rollout_on_the_tiny_model_orders_each_pair_chosen_first(tiny_tokenizer):
    from lightning_rlhf.rewards import FunctionReward
    from lightning_rlhf.testing import make_batch, make_policy_module

    torch.manual_seed(0)
    algorithm = create_algorithm("online_dpo", max_new_tokens=6)
    module = make_policy_module(algorithm, reward=FunctionReward("tests.test_online_dpo.text_checksum"))
    experience = algorithm.rollout(module, make_batch("prompt", module.tokenizer))
    pairs = len(experience) // 2
    assert len(experience) % 2 == 0 and experience.group_index.tolist() == [p for p in range(pairs) for _ in range(2)]
    scores = experience.scores.view(-1, 2)
    assert (scores[:, 0] > scores[:, 1]).all()
    assert pairs == 3 and experience.metrics["objective/tied_pair_fraction"].item() == 0.0
    assert experience.tensors["ref_logps"].shape == (len(experience),)
    columns, rows = algorithm.sample_table(experience, 8)
    assert columns[:3] == ["prompt", "chosen", "rejected"] and len(rows) == pairs
    assert all(row[3] > row[4] for row in rows)
    out = algorithm.loss(module, next(iter(algorithm.minibatches(experience))))
    out.loss.backward()
    # At the start the policy is the reference: every margin is 0 and the loss is log 2.
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-4)


@pytest.mark.learns
def test_online_dpo_raises_a_hand_written_reward(tmp_path):
    """Pairs sampled by the tiny model, ranked by the letters "e" in 8 sampled tokens; 6 epochs
    of 2 rollouts (8 prompts x 2 samples), 2 passes each. The mean starts at 0.03, so most
    early pairs tie and teach nothing: a larger beta and learning rate than DPO's defaults.

    Measured over seeds 0-3 on the AVX2 and default kernel paths (8 runs): after = 5.77-7.83
    (the same on both paths); the threshold is +0.5."""
    from tests.online_learning import letter_e_before_and_after

    algorithm = create_algorithm("online_dpo", beta=0.5, num_iterations=2, max_new_tokens=8)
    before, after, _ = letter_e_before_and_after(tmp_path, algorithm, learning_rate=1e-2)
    assert before < 0.5 and after > before + 0.5, (before, after)

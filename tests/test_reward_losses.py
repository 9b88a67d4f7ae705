"""Reward-model losses against hand-computed values.

Arithmetic used below, with softplus(x) = log(1 + e^x) = -log sigmoid(-x):

    softplus(-2)   = 0.126928    softplus(-1)   = 0.313262    softplus(-1/3) = 0.540306
    softplus(0)    = 0.693147    softplus(0.5)  = 0.974077    softplus(1)    = 1.313262
    softplus(1.5)  = 1.701413    softplus(2)    = 2.126928
"""

import pytest
import torch

from lightning_rlhf.testing import make_batch
from lightning_rlhf.testing.reward import run_reward_algorithm
from lightning_rlhf_plugins.bradley_terry import MARGIN_PRESETS, BradleyTerry, normalize_rating
from lightning_rlhf_plugins.ranking import Ranking


class FixedRewards:
    """A ctx whose reward model returns given rewards, so a loss can be checked by hand."""

    def __init__(self, rewards: list[float]):
        self.values = torch.tensor(rewards, requires_grad=True)

    def rewards(self, batch):
        return self.values


# Two pairs: chosen rewards [2.0, 0.5], rejected [1.0, 1.5]; r_c - r_r = [1, -1].
PAIRS = [2.0, 0.5, 1.0, 1.5]


def bt_loss(algorithm, batch=None, rewards=PAIRS):
    return algorithm.loss(FixedRewards(rewards), batch or {}).loss.item()


def test_plain_bradley_terry():
    # mean(softplus(-1), softplus(1)) = (0.313262 + 1.313262) / 2
    assert bt_loss(BradleyTerry()) == pytest.approx(0.813262, abs=1e-6)


def test_margin_field():
    # m = [1, 0.5]: logits [0, -1.5] -> (0.693147 + 1.701413) / 2
    batch = {"margin": torch.tensor([1.0, 0.5])}
    assert bt_loss(BradleyTerry(), batch) == pytest.approx(1.197280, abs=1e-6)
    # use_margin=False ignores the field: plain Bradley-Terry again.
    assert bt_loss(BradleyTerry(use_margin=False), batch) == pytest.approx(0.813262, abs=1e-6)


def test_llama2_large_rating_preset():
    # "Significantly Better" -> 3, "slightly_better" -> 1: logits [1-3, -1-1] = [-2, -2] -> softplus(2)
    batch = {"rating": ["Significantly Better", "slightly_better"]}
    assert bt_loss(BradleyTerry(margin_table="llama2-large"), batch) == pytest.approx(2.126928, abs=1e-6)


def test_llama2_small_rating_preset_and_missing_rating():
    # "better" -> 2/3, "unsure" -> 0: logits [1/3, -1] -> (0.540306 + 1.313262) / 2
    small = BradleyTerry(margin_table="llama2-small")
    assert bt_loss(small, {"rating": ["better", "unsure"]}) == pytest.approx(0.926784, abs=1e-6)
    # a pair without a rating has margin 0: logits [1 - 2/3, -1]
    assert bt_loss(small, {"rating": ["better", None]}) == pytest.approx(0.926784, abs=1e-6)


def test_rating_table_beats_margin_field_and_custom_tables():
    # With a table the ratings decide, whatever the margin field says; custom keys match loosely.
    batch = {"rating": ["Good", "meh"], "margin": torch.tensor([9.0, 9.0])}
    algorithm = BradleyTerry(margin_table={"good": 1.0, "MEH": 0.0})
    assert bt_loss(algorithm, batch) == pytest.approx((0.693147 + 1.313262) / 2, abs=1e-6)


def test_unknown_rating_is_an_error():
    with pytest.raises(ValueError, match="'wonderful' is not in the margin table"):
        bt_loss(BradleyTerry(margin_table="llama2-small"), {"rating": ["wonderful", "better"]})
    with pytest.raises(ValueError, match="unknown margin_table preset"):
        BradleyTerry(margin_table="llama3")


def test_presets_are_llama2_table_27():
    assert MARGIN_PRESETS["llama2-small"] == pytest.approx(
        {"significantly better": 1.0, "better": 2 / 3, "slightly better": 1 / 3, "negligibly better / unsure": 0.0}
    )
    assert MARGIN_PRESETS["llama2-large"] == {
        "significantly better": 3.0, "better": 2.0, "slightly better": 1.0, "negligibly better / unsure": 0.0
    }
    assert normalize_rating("Negligibly-Better/Unsure") == "negligibly better / unsure"


def test_centering():
    # (r_c + r_r)^2 = [3^2, 2^2] -> mean 6.5; 0.813262 + 0.1 * 6.5
    ctx = FixedRewards(PAIRS)
    out = BradleyTerry(centering=0.1).loss(ctx, {})
    assert out.loss.item() == pytest.approx(1.463262, abs=1e-6)
    assert out.metrics["centering_term"].item() == pytest.approx(6.5)
    # The centering term adds 0.1 * 2 * (r_c + r_r) / B = [0.3, 0.2] to both rewards of each
    # pair; Bradley-Terry's part is -+sigmoid(-(r_c - r_r)) / B with sigmoid(-1) = 0.268941.
    out.loss.backward()
    expected = [-0.134471 + 0.3, -0.365529 + 0.2, 0.134471 + 0.3, 0.365529 + 0.2]
    assert ctx.values.grad.tolist() == pytest.approx(expected, abs=1e-6)


def test_bradley_terry_gradient_matches_hand_derivation():
    # d/dr_c softplus(-(r_c - r_r)) / B = -sigmoid(-(r_c - r_r)) / B, and the opposite for r_r.
    ctx = FixedRewards(PAIRS)
    BradleyTerry().loss(ctx, {}).loss.backward()
    s1, s2 = torch.sigmoid(torch.tensor(-1.0)).item(), torch.sigmoid(torch.tensor(1.0)).item()
    assert ctx.values.grad.tolist() == pytest.approx([-s1 / 2, -s2 / 2, s1 / 2, s2 / 2], abs=1e-6)


def test_ratings_reach_the_loss_through_the_collator():
    rows = [
        {"prompt": "Q1", "chosen": " good", "rejected": " bad", "rating": "Significantly better"},
        {"prompt": "Q2", "chosen": " fine", "rejected": " poor", "rating": "slightly better"},
    ]
    _, out = run_reward_algorithm(BradleyTerry(margin_table="llama2-large"), rows)
    assert out.metrics["target_margin"].item() == pytest.approx((3.0 + 1.0) / 2)


def ranking_batch(group_index, rank):
    return {"group_index": torch.tensor(group_index), "rank": torch.tensor(rank)}


def test_three_way_ranking_is_its_three_pairs():
    # r = [3, 1, 2], best first: pairs (0,1): d=2, (0,2): d=1, (1,2): d=-1
    # (0.126928 + 0.313262 + 1.313262) / 3 = 0.584484
    out = Ranking().loss(FixedRewards([3.0, 1.0, 2.0]), ranking_batch([0, 0, 0], [0, 1, 2]))
    assert out.loss.item() == pytest.approx(0.584484, abs=1e-6)
    assert out.metrics["pairs_per_prompt"].item() == 3


def test_ranking_averages_per_prompt_not_per_pair():
    # prompt 0 as above (0.584484 over 3 pairs); prompt 1: r = [0, 0.5], one pair, d = -0.5 -> 0.974077.
    # Per prompt: (0.584484 + 0.974077) / 2 = 0.779280; a per-pair mean would give 0.681882.
    rewards = [3.0, 1.0, 2.0, 0.0, 0.5]
    out = Ranking().loss(FixedRewards(rewards), ranking_batch([0, 0, 0, 1, 1], [0, 1, 2, 0, 1]))
    assert out.loss.item() == pytest.approx(0.779280, abs=1e-6)
    assert out.metrics["pairs_per_prompt"].item() == 2


def test_ties_form_no_pair():
    # ranks [0, 0, 1], r = [1, 2, 0]: pairs (0,2): d=1, (1,2): d=2 -> (0.313262 + 0.126928) / 2
    out = Ranking().loss(FixedRewards([1.0, 2.0, 0.0]), ranking_batch([0, 0, 0], [0, 0, 1]))
    assert out.loss.item() == pytest.approx(0.220095, abs=1e-6)


def test_two_way_ranking_equals_bradley_terry():
    # K = 2 rankings are preference pairs: both losses agree on the same rewards.
    ranking = Ranking().loss(FixedRewards([2.0, 1.0, 0.5, 1.5]), ranking_batch([0, 0, 1, 1], [0, 1, 0, 1]))
    assert ranking.loss.item() == pytest.approx(bt_loss(BradleyTerry()), abs=1e-6)


def test_ranking_on_the_tiny_model(tiny_tokenizer):
    _, out = run_reward_algorithm(Ranking())
    # SAMPLE_ROWS["ranking"]: 3 + 1 + 2 pairs over 3 prompts.
    assert out.metrics["pairs_per_prompt"].item() == pytest.approx(2.0)
    assert make_batch("ranking", tiny_tokenizer)["input_ids"].shape[0] == 8

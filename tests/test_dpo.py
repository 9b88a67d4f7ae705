import math

import pytest
import torch

from lightning_rlhf import create_algorithm
from tests.objective_fakes import GivenLogps

# One pair. Summed log-probs: policy chosen -1.0, rejected -2.0; reference both -1.5.
# beta = 0.1: r_w = 0.1 * (-1.0 + 1.5) = 0.05, r_l = 0.1 * (-2.0 + 1.5) = -0.05, margin 0.1.
# DPO:  -log sigmoid(0.1) = log(1 + e^-0.1) = log(1.904837) = 0.644397
# cDPO, eps 0.2: 0.8 * 0.644397 + 0.2 * (-log sigmoid(-0.1)) = 0.8 * 0.644397 + 0.2 * 0.744397
#       = 0.515518 + 0.148879 = 0.664397
POLICY = [-1.0, -2.0]
REFERENCE = [-1.5, -1.5]


def two_tokens(sums: list[float]) -> list[list[float]]:
    """Rows whose two tokens' log-probs sum to ``sums`` (DPO reads only the sums)."""
    return [[s / 2, s / 2] for s in sums]


def run(**kwargs):
    ctx = GivenLogps(two_tokens(POLICY), two_tokens(REFERENCE))
    return create_algorithm("dpo", **kwargs).loss(ctx, batch={})


def test_dpo_loss_by_hand():
    out = run(beta=0.1)
    assert out.loss.item() == pytest.approx(0.644397, abs=1e-6)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.05)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(-0.05)
    assert out.metrics["rewards/margins"].item() == pytest.approx(0.1)
    assert out.metrics["rewards/accuracies"].item() == 1.0
    assert out.metrics["logps/chosen"].item() == pytest.approx(-1.0)
    assert out.metrics["logps/rejected"].item() == pytest.approx(-2.0)


def test_cdpo_loss_by_hand():
    assert run(beta=0.1, label_smoothing=0.2).loss.item() == pytest.approx(0.664397, abs=1e-6)
    assert run(beta=0.1, label_smoothing=0.0).loss.item() == pytest.approx(run(beta=0.1).loss.item())


def test_dpo_gradient_sign_raises_chosen_lowers_rejected():
    ctx = GivenLogps(two_tokens(POLICY), two_tokens(REFERENCE))
    create_algorithm("dpo", beta=0.1).loss(ctx, {}).loss.backward()
    grad = ctx.grad[:, 0]  # d loss / d token logp = d loss / d summed logp
    # d/d logp_w = -beta * sigmoid(-margin) < 0 ; d/d logp_l = +beta * sigmoid(-margin) > 0
    expected = 0.1 * (1 / (1 + math.exp(0.1)))
    assert grad[0].item() == pytest.approx(-expected, abs=1e-6)
    assert grad[1].item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("kwargs", [{"beta": 0.0}, {"beta": -1.0}, {"label_smoothing": 0.5}])
def test_dpo_rejects_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError):
        create_algorithm("dpo", **kwargs)


def test_dpo_batch_of_pairs_averages():
    # Two pairs: the second is the first mirrored, so the loss is the mean of
    # log(1+e^-0.1) and log(1+e^0.1) = (0.644397 + 0.744397) / 2 = 0.694397.
    policy = two_tokens([-1.0, -2.0, -2.0, -1.0])  # chosen: pair1, pair2; rejected: pair1, pair2
    reference = two_tokens([-1.5] * 4)
    out = create_algorithm("dpo", beta=0.1).loss(GivenLogps(policy, reference), {})
    assert out.loss.item() == pytest.approx(0.694397, abs=1e-6)
    assert out.metrics["rewards/accuracies"].item() == 0.5
    assert torch.isfinite(out.loss)

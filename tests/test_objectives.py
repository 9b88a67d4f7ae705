"""IPO, ORPO, SimPO, CPL and dense CPL against hand-computed values.

Every test builds per-token log-probs by hand (rows: chosen first, then rejected, as a
preference batch lays them out), works the loss out in the comments, and checks the
plugin's value, metrics and gradients against that arithmetic.
"""

import math

import pytest
import torch

from lightning_rlhf import create_algorithm
from lightning_rlhf.testing import make_batch, make_policy_module
from tests.objective_fakes import GivenLogps


def softplus_neg(x: float) -> float:
    """-log sigmoid(x) = log(1 + e^-x), for writing expected values."""
    return math.log1p(math.exp(-x))


# -- IPO ----------------------------------------------------------------------------------
# One pair. Policy: chosen tokens [-1, -1] (sum -2, mean -1), rejected [-3] (sum -3, mean -3).
# Reference: chosen [-1.5, -1.5] (sum -3, mean -1.5), rejected [-2] (sum -2, mean -2).
# Summed:   h = (-2 - -3) - (-3 - -2) = 1 - (-1) = 2
# Averaged: h = (-1 - -1.5) - (-3 - -2) = 0.5 - (-1) = 1.5
IPO_POLICY = [[-1.0, -1.0], [-3.0]]
IPO_REFERENCE = [[-1.5, -1.5], [-2.0]]


@pytest.mark.parametrize(
    ("tau", "average", "expected"),
    [
        (0.1, False, (2 - 5) ** 2),  # target 1/(2*0.1) = 5: (2 - 5)^2 = 9
        (0.1, True, (1.5 - 5) ** 2),  # (1.5 - 5)^2 = 12.25
        (0.5, False, (2 - 1) ** 2),  # target 1: 1
        (0.5, True, (1.5 - 1) ** 2),  # 0.25
    ],
)
def test_ipo_loss_by_hand(tau, average, expected):
    ctx = GivenLogps(IPO_POLICY, IPO_REFERENCE)
    out = create_algorithm("ipo", tau=tau, average_log_probs=average).loss(ctx, {})
    assert out.loss.item() == pytest.approx(expected, abs=1e-5)
    assert ctx.calls == {"policy": 1, "reference": 1}


def test_ipo_metrics_and_gradient_summed():
    ctx = GivenLogps(IPO_POLICY, IPO_REFERENCE)
    out = create_algorithm("ipo", tau=0.1, average_log_probs=False).loss(ctx, {})
    # rewards = tau * log-ratio: chosen 0.1 * 1 = 0.1, rejected 0.1 * -1 = -0.1
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.1)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(-0.1)
    assert out.metrics["rewards/margins"].item() == pytest.approx(0.2)
    assert out.metrics["rewards/accuracies"].item() == 1.0
    assert out.metrics["logps/chosen"].item() == pytest.approx(-2.0)  # summed, as DPO's
    assert out.metrics["logps/rejected"].item() == pytest.approx(-3.0)
    assert out.metrics["ipo/h"].item() == pytest.approx(2.0)
    out.loss.backward()
    # dL/dh = 2 (h - 5) = -6; h has +1 per chosen token and -1 per rejected token.
    assert ctx.grad[0].tolist() == pytest.approx([-6.0, -6.0])
    assert ctx.grad[1, 0].item() == pytest.approx(6.0)


def test_ipo_gradient_averaged():
    ctx = GivenLogps(IPO_POLICY, IPO_REFERENCE)
    create_algorithm("ipo", tau=0.1, average_log_probs=True).loss(ctx, {}).loss.backward()
    # dL/dh = 2 (1.5 - 5) = -7; each of the 2 chosen tokens enters h with weight 1/2.
    assert ctx.grad[0].tolist() == pytest.approx([-3.5, -3.5])
    assert ctx.grad[1, 0].item() == pytest.approx(7.0)


def test_ipo_at_its_target_has_zero_loss_and_gradient():
    # h = 1/(2 tau) exactly: tau = 0.25, summed h = 2.
    ctx = GivenLogps(IPO_POLICY, IPO_REFERENCE)
    out = create_algorithm("ipo", tau=0.25, average_log_probs=False).loss(ctx, {})
    out.loss.backward()
    assert out.loss.item() == pytest.approx(0.0, abs=1e-10)
    assert ctx.grad.abs().max().item() == pytest.approx(0.0, abs=1e-6)


# -- ORPO ---------------------------------------------------------------------------------
# One pair. Chosen tokens [log .5, log .5]: mean log p = log 0.5, odds = 0.5/0.5 = 1, log odds 0.
# Rejected [log .25]: odds = 0.25/0.75 = 1/3, log odds = -log 3.
# Log odds ratio = log 3; -log sigmoid(log 3) = log(1 + 1/3) = log(4/3) = 0.287682.
# NLL over the chosen tokens: (0.693147 * 2) / 2 = 0.693147.
# Loss, weight 0.1: 0.693147 + 0.1 * 0.287682 = 0.721915.
ORPO_ROWS = [[math.log(0.5), math.log(0.5)], [math.log(0.25)]]


def test_orpo_loss_by_hand():
    ctx = GivenLogps(ORPO_ROWS)
    out = create_algorithm("orpo", odds_ratio_weight=0.1).loss(ctx, {})
    assert out.loss.item() == pytest.approx(0.721915, abs=1e-5)
    assert out.metrics["nll"].item() == pytest.approx(math.log(2), abs=1e-6)
    assert out.metrics["log_odds_ratio"].item() == pytest.approx(math.log(3), abs=1e-5)
    assert out.metrics["odds_ratio_loss"].item() == pytest.approx(math.log(4 / 3), abs=1e-6)
    assert out.metrics["rewards/accuracies"].item() == 1.0
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.1 * math.log(0.5), abs=1e-6)
    assert out.metrics["logps/chosen"].item() == pytest.approx(2 * math.log(0.5), abs=1e-6)
    assert ctx.calls["reference"] == 0


def test_orpo_weight_zero_is_sft_on_chosen():
    ctx = GivenLogps(ORPO_ROWS)
    out = create_algorithm("orpo", odds_ratio_weight=0.0).loss(ctx, {})
    out.loss.backward()
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-6)
    # NLL averaged over the 2 chosen tokens: -1/2 each; the rejected row is not trained.
    assert ctx.grad[0].tolist() == pytest.approx([-0.5, -0.5])
    assert ctx.grad[1, 0].item() == 0.0


@pytest.mark.parametrize("near_zero", [0.0, -1e-9, -1e-7])
def test_orpo_is_stable_when_log_probs_are_near_zero(near_zero):
    # A response the model is (numerically) certain of: log p ~ 0, so 1 - p ~ 0. The naive
    # log1p(-exp(logp)) gives -inf here (exp rounds to 1 in float32).
    assert torch.log1p(-torch.exp(torch.tensor(-1e-9))).item() == -math.inf
    for rows in ([[near_zero], [math.log(0.25)]], [[math.log(0.25)], [near_zero]]):
        ctx = GivenLogps(rows)
        out = create_algorithm("orpo").loss(ctx, {})
        out.loss.backward()
        assert torch.isfinite(out.loss)
        assert torch.isfinite(ctx.grad).all()
        assert all(torch.isfinite(v) for v in out.metrics.values())
    # Rejected certain: the odds-ratio term pushes its log-prob down (positive gradient).
    assert ctx.grad[1, 0].item() > 0


def test_orpo_log_odds_matches_float64_near_zero():
    from lightning_rlhf_plugins.orpo import log_odds

    for logp in [-1e-5, -1e-3, -0.5, -5.0, -30.0]:
        expected = logp - math.log(-math.expm1(logp))  # float64
        assert log_odds(torch.tensor(logp)).item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


# -- SimPO --------------------------------------------------------------------------------
# One pair. Chosen tokens [-0.5, -1.5]: mean -1. Rejected [-2]: mean -2.
# beta 2: r_w = -2, r_l = -4, margin 2. gamma = 0.5 * 2 = 1: logit = 2 - 1 = 1.
# -log sigmoid(1) = log(1 + e^-1) = 0.313262.
SIMPO_ROWS = [[-0.5, -1.5], [-2.0]]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, softplus_neg(1.0)),  # defaults beta 2, gamma/beta 0.5: 0.313262
        ({"gamma_beta_ratio": 0.5, "label_smoothing": 0.0}, softplus_neg(1.0)),  # eps 0 = plain SimPO
        ({"gamma": 2.0}, math.log(2)),  # logit 2 - 2 = 0: log 2
        ({"gamma_beta_ratio": 0.0}, softplus_neg(2.0)),  # no margin: log(1 + e^-2) = 0.126928
        # eps 0.1: 0.9 * 0.313262 + 0.1 * log(1 + e) = 0.281936 + 0.131326 = 0.413262
        ({"label_smoothing": 0.1}, 0.9 * softplus_neg(1.0) + 0.1 * softplus_neg(-1.0)),
        ({"sft_weight": 1.0}, softplus_neg(1.0) + 1.0),  # chosen NLL (0.5 + 1.5) / 2 = 1
    ],
)
def test_simpo_loss_by_hand(kwargs, expected):
    ctx = GivenLogps(SIMPO_ROWS)
    out = create_algorithm("simpo", **kwargs).loss(ctx, {})
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert ctx.calls["reference"] == 0


def test_simpo_metrics_and_gradient():
    ctx = GivenLogps(SIMPO_ROWS)
    out = create_algorithm("simpo").loss(ctx, {})
    assert out.metrics["rewards/chosen"].item() == pytest.approx(-2.0)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(-4.0)
    assert out.metrics["rewards/margins"].item() == pytest.approx(2.0)
    assert out.metrics["logps/chosen"].item() == pytest.approx(-2.0)  # summed, as DPO's
    out.loss.backward()
    # dL/dlogit = -sigmoid(-1) = -0.268941; logit = 2 mean_w - 2 mean_l - 1, so each of
    # the 2 chosen tokens gets 2 * (1/2) * -0.268941 and the rejected token 2 * 0.268941.
    s = 1 / (1 + math.exp(1.0))
    assert ctx.grad[0].tolist() == pytest.approx([-s, -s], abs=1e-6)
    assert ctx.grad[1, 0].item() == pytest.approx(2 * s, abs=1e-6)


@pytest.mark.parametrize(
    "kwargs", [{"beta": 0.0}, {"gamma": 1.0, "gamma_beta_ratio": 0.5}, {"label_smoothing": 0.5}, {"sft_weight": -1.0}]
)
def test_simpo_rejects_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError):
        create_algorithm("simpo", **kwargs)


# -- CPL ----------------------------------------------------------------------------------
# One pair. Chosen tokens [-1, -1] (sum -2), rejected [-4] (sum -4). alpha 0.1:
# S_w = -0.2, S_l = -0.4. Bias 0.5: logit = -0.2 - 0.5 * -0.4 = 0 -> log 2 = 0.693147.
# Bias 1: logit = -0.2 + 0.4 = 0.2 -> log(1 + e^-0.2) = 0.598139.
CPL_ROWS = [[-1.0, -1.0], [-4.0]]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, math.log(2)),  # defaults alpha 0.1, bias 0.5
        ({"contrastive_bias": 1.0}, softplus_neg(0.2)),
        # BC on all responses: NLL = (1 + 1 + 4) / 3 tokens = 2
        ({"bc_coeff": 1.0, "bc_data": "all"}, math.log(2) + 2.0),
        # BC on the chosen only: NLL = (1 + 1) / 2 = 1; with coefficient 0.5 -> + 0.5
        ({"bc_coeff": 0.5, "bc_data": "chosen"}, math.log(2) + 0.5),
    ],
)
def test_cpl_loss_by_hand(kwargs, expected):
    ctx = GivenLogps(CPL_ROWS)
    out = create_algorithm("cpl", **kwargs).loss(ctx, {})
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.metrics["rewards/accuracies"].item() == 1.0  # S_w = -0.2 > S_l = -0.4
    assert ctx.calls["reference"] == 0


def test_cpl_with_bias_one_is_reference_free_dpo():
    # -log sigmoid(alpha * (S_w - S_l)) with S the summed log-probs; DPO with beta = alpha
    # and a reference that gives every sequence log-prob 0 is the same loss.
    for rows in (CPL_ROWS, [[-3.0, -0.5], [-0.2, -0.1, -0.4]], [[-2.0], [-2.0]]):
        for alpha in (0.1, 1.0, 3.0):
            cpl_ctx, dpo_ctx = GivenLogps(rows), GivenLogps(rows, [[0.0] * len(r) for r in rows])
            cpl = create_algorithm("cpl", alpha=alpha, contrastive_bias=1.0).loss(cpl_ctx, {})
            dpo = create_algorithm("dpo", beta=alpha).loss(dpo_ctx, {})
            expected = softplus_neg(alpha * (sum(rows[0]) - sum(rows[1])))
            assert cpl.loss.item() == pytest.approx(expected, abs=1e-5)
            assert cpl.loss.item() == pytest.approx(dpo.loss.item(), abs=1e-6)
            cpl.loss.backward(), dpo.loss.backward()
            assert torch.allclose(cpl_ctx.grad, dpo_ctx.grad, atol=1e-6)


def test_cpl_bias_below_one_pulls_up_both_when_both_are_unlikely():
    # The conservative bias: with lambda < 1 the loss also falls when *both* log-probs rise
    # together (logit = S_w - lambda S_l grows by (1 - lambda) * delta), which keeps the
    # policy on the data; with lambda = 1 a common shift changes nothing.
    def loss_after_shift(bias, delta):
        rows = [[-1.0 + delta, -1.0 + delta], [-4.0 + 2 * delta]]  # both sums rise by 2 delta
        return create_algorithm("cpl", contrastive_bias=bias).loss(GivenLogps(rows), {}).loss.item()

    assert loss_after_shift(0.5, 0.5) < loss_after_shift(0.5, 0.0)
    assert loss_after_shift(1.0, 0.5) == pytest.approx(loss_after_shift(1.0, 0.0), abs=1e-6)


@pytest.mark.parametrize(
    "kwargs", [{"alpha": 0.0}, {"contrastive_bias": 0.0}, {"contrastive_bias": 1.5}, {"bc_data": "positive"}]
)
def test_cpl_rejects_bad_hyperparameters(kwargs):
    for name in ("cpl", "cpl_ranking"):
        with pytest.raises(ValueError):
            create_algorithm(name, **kwargs)


# -- dense CPL over rankings --------------------------------------------------------------
# Prompt 0: three completions, ranks 0, 1, 2, single tokens with log-probs -1, -2, -4.
# Prompt 1: two completions, ranks 0, 1, log-probs -3, -1 (the model prefers the worse one).
# Prompt 2: two tied completions (rank 0, 0): no pair.
# alpha 1, bias 1 (scores = log-probs):
#   (0>1): -1 - -2 = 1 -> log(1 + e^-1) = 0.313262
#   (0>2): -1 - -4 = 3 -> log(1 + e^-3) = 0.048587
#   (1>2): -2 - -4 = 2 -> log(1 + e^-2) = 0.126928
#   prompt 1 (0>1): -3 - -1 = -2 -> log(1 + e^2) = 2.126928
# Mean over the 4 pairs: (0.313262 + 0.048587 + 0.126928 + 2.126928) / 4 = 0.653926; accuracy 3/4.
RANKED_ROWS = [[-1.0], [-2.0], [-4.0], [-3.0], [-1.0], [-0.5], [-0.7]]
RANKED_BATCH = {
    "group_index": torch.tensor([0, 0, 0, 1, 1, 2, 2]),
    "rank": torch.tensor([0, 1, 2, 0, 1, 0, 0]),
}


def test_cpl_ranking_loss_by_hand():
    ctx = GivenLogps(RANKED_ROWS)
    out = create_algorithm("cpl_ranking", alpha=1.0, contrastive_bias=1.0).loss(ctx, RANKED_BATCH)
    expected = (softplus_neg(1) + softplus_neg(3) + softplus_neg(2) + softplus_neg(-2)) / 4
    assert expected == pytest.approx(0.653926, abs=1e-6)
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.metrics["pairs"].item() == 4
    assert out.metrics["rewards/accuracies"].item() == pytest.approx(0.75)
    out.loss.backward()
    # The tied prompt forms no pair, so its rows get no gradient.
    assert ctx.grad[5:].abs().sum().item() == 0.0
    assert ctx.calls["reference"] == 0


def test_cpl_ranking_with_bias_and_bc_by_hand():
    # Prompt 0 alone, alpha 1, bias 0.5: logits S_i - 0.5 S_j
    #   (0>1): -1 + 1 = 0 -> log 2 = 0.693147 ; (0>2): -1 + 2 = 1 -> 0.313262 ; (1>2): -2 + 2 = 0 -> 0.693147
    #   mean = 1.699556 / 3 = 0.566519
    # BC on each prompt's best ("chosen"): the rank-0 row's NLL = 1, coefficient 0.1 -> + 0.1
    batch = {"group_index": torch.tensor([0, 0, 0]), "rank": torch.tensor([0, 1, 2])}
    out = create_algorithm("cpl_ranking", alpha=1.0, contrastive_bias=0.5, bc_coeff=0.1, bc_data="chosen").loss(
        GivenLogps([[-1.0], [-2.0], [-4.0]]), batch
    )
    assert out.loss.item() == pytest.approx((2 * math.log(2) + softplus_neg(1)) / 3 + 0.1, abs=1e-6)
    # BC on all: NLL = (1 + 2 + 4) / 3 = 7/3
    out = create_algorithm("cpl_ranking", alpha=1.0, contrastive_bias=0.5, bc_coeff=0.1, bc_data="all").loss(
        GivenLogps([[-1.0], [-2.0], [-4.0]]), batch
    )
    assert out.loss.item() == pytest.approx((2 * math.log(2) + softplus_neg(1)) / 3 + 0.1 * 7 / 3, abs=1e-6)


def test_cpl_ranking_with_two_completions_is_pairwise_cpl():
    rows = [[-1.0, -0.5], [-2.0, -0.25, -0.25], [-0.3], [-0.1, -0.2]]  # two prompts, K = 2 each
    # Ranking layout: prompt after prompt, best first. Pair layout: chosen rows, then rejected.
    ranking_rows = [rows[0], rows[1], rows[2], rows[3]]
    pair_rows = [rows[0], rows[2], rows[1], rows[3]]
    batch = {"group_index": torch.tensor([0, 0, 1, 1]), "rank": torch.tensor([0, 1, 0, 1])}
    kwargs = {"alpha": 0.7, "contrastive_bias": 0.6, "bc_coeff": 0.3, "bc_data": "chosen"}
    dense = create_algorithm("cpl_ranking", **kwargs).loss(GivenLogps(ranking_rows), batch)
    pairwise = create_algorithm("cpl", **kwargs).loss(GivenLogps(pair_rows), {})
    assert dense.loss.item() == pytest.approx(pairwise.loss.item(), abs=1e-6)


def test_cpl_ranking_on_a_real_ranking_batch(tiny_tokenizer):
    # The data module's batch keys, end to end through the tiny model.
    module = make_policy_module(create_algorithm("cpl_ranking"))
    batch = make_batch("ranking", module.tokenizer)
    out = module.algorithm.loss(module, batch)
    # Sample rows: 3 ranked (3 pairs), 2 ranked (1 pair), 3 with two tied on top (2 pairs).
    assert out.metrics["pairs"].item() == 6


# -- reference-free objectives load no reference model -------------------------------------
@pytest.mark.parametrize("name", ["orpo", "simpo", "cpl", "cpl_ranking"])
def test_reference_free_plugins_load_and_call_no_reference(name):
    algorithm = create_algorithm(name)
    assert not algorithm.needs_reference
    module = make_policy_module(algorithm)
    assert module.reference_model is None

    def refuse(batch):
        raise AssertionError(f"{name} asked for reference log-probs")

    module.reference_logps = refuse
    out = algorithm.loss(module, make_batch(algorithm.data, module.tokenizer))
    assert torch.isfinite(out.loss)

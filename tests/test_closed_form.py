"""Train DPO, IPO and CPL to convergence in a world small enough to solve by hand.

One prompt, K = 4 single-token responses with Bradley-Terry rewards r. The policy is a
learnable logit vector (pi = softmax(theta)), the reference a fixed distribution pi_ref,
and a fake ctx hands the plugin log-softmax values for the batch's rows. The objective
is the *exact* expected loss over preference data: an unordered pair {i, j} is drawn
uniformly and i is labelled better with the Bradley-Terry probability
p_ij = sigmoid(r_i - r_j), i.e.

    E[L] = sum over ordered pairs (i, j), i != j, of p_ij * loss(chosen=i, rejected=j)

(up to the constant 1 / #pairs), each term one call of the plugin's ``loss``. Let
u = log(pi / pi_ref) and h_ij = u_i - u_j.

DPO. Per unordered pair, p * -log sigmoid(beta h) + (1 - p) * -log sigmoid(-beta h) is
minimised at sigmoid(beta h) = p, i.e. beta h_ij = r_i - r_j. All pairs are satisfied
at once by u = r / beta + const, so

    pi* = pi_ref * exp(r / beta) / Z                                    (the RLHF optimum)

IPO. Per unordered pair, with c = 1 / (2 tau),
p (h - c)^2 + (1 - p)(-h - c)^2 = (h - c (2p - 1))^2 + const, so each pair pulls h_ij
toward t_ij = (p_ij - 1/2) / tau. These targets are not differences of one vector in
general (sigmoid is not linear), so the optimum is the least-squares fit over the
complete graph: the normal equations K u_i - sum_j u_j = sum_{j != i} t_ij give

    u_i = (1 / K) * sum_{j != i} (p_ij - 1/2) / tau + const,   pi* = pi_ref * exp(u) / Z

(the IPO paper's solution, Azar et al. 2023). Note this is *not* pi_ref * exp(r / beta):
IPO's optimum depends on r only through the preference probabilities.

CPL with lambda = 1 is DPO with a uniform reference and beta = alpha: pi* = exp(r/alpha)/Z.
"""

import pytest
import torch

from lightning_rlhf import create_algorithm
from lightning_rlhf.algorithm import SequenceLogps

REWARDS = torch.tensor([1.0, 0.5, 0.0, -1.0], dtype=torch.float64)
REFERENCE = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
K = len(REWARDS)
ORDERED_PAIRS = [(i, j) for i in range(K) for j in range(K) if i != j]


class SingleTokenPolicy:
    """ctx over one prompt whose K responses are single tokens: batch = {"chosen": [B], "rejected": [B]}."""

    def __init__(self, reference: torch.Tensor):
        self.logits = torch.nn.Parameter(reference.log().clone())  # start at the reference
        self.reference_logprobs = reference.log()

    def _rows(self, logprobs: torch.Tensor, batch) -> SequenceLogps:
        rows = torch.cat([batch["chosen"], batch["rejected"]])
        values = logprobs[rows].unsqueeze(-1)  # [2B, 1]: one completion token each
        return SequenceLogps(values, torch.ones_like(values, dtype=torch.bool))

    def policy_logps(self, batch) -> SequenceLogps:
        return self._rows(torch.log_softmax(self.logits, -1), batch)

    def reference_logps(self, batch) -> SequenceLogps:
        return self._rows(self.reference_logprobs, batch)

    @property
    def probs(self) -> torch.Tensor:
        return torch.softmax(self.logits.detach(), -1)


def train_to_convergence(algorithm) -> torch.Tensor:
    ctx = SingleTokenPolicy(REFERENCE)
    preference = torch.sigmoid(REWARDS.unsqueeze(1) - REWARDS.unsqueeze(0))  # p_ij
    batches = [{"chosen": torch.tensor([i]), "rejected": torch.tensor([j])} for i, j in ORDERED_PAIRS]
    optimizer = torch.optim.LBFGS([ctx.logits], lr=1, max_iter=500, tolerance_grad=1e-12,
                                  tolerance_change=1e-15, line_search_fn="strong_wolfe")

    def expected_loss():
        optimizer.zero_grad()
        loss = sum(preference[i, j] * algorithm.loss(ctx, batch).loss for (i, j), batch in zip(ORDERED_PAIRS, batches))
        loss.backward()
        return loss

    optimizer.step(expected_loss)
    assert ctx.logits.grad.abs().max() < 1e-7, "did not converge"
    return ctx.probs


def normalised(weights: torch.Tensor) -> torch.Tensor:
    return weights / weights.sum()


@pytest.mark.learns
@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
def test_dpo_reaches_the_rlhf_optimum(beta):
    probs = train_to_convergence(create_algorithm("dpo", beta=beta))
    expected = normalised(REFERENCE * torch.exp(REWARDS / beta))
    assert torch.allclose(probs, expected, atol=1e-6), (probs, expected)


@pytest.mark.learns
@pytest.mark.parametrize("tau", [0.5, 1.0])
@pytest.mark.parametrize("average", [True, False])  # the same for single tokens
def test_ipo_reaches_its_least_squares_fixed_point(tau, average):
    probs = train_to_convergence(create_algorithm("ipo", tau=tau, average_log_probs=average))
    preference = torch.sigmoid(REWARDS.unsqueeze(1) - REWARDS.unsqueeze(0))
    targets = (preference - 0.5) / tau  # t_ij; the diagonal is 0
    expected = normalised(REFERENCE * torch.exp(targets.sum(1) / K))
    assert torch.allclose(probs, expected, atol=1e-6), (probs, expected)
    # ... which is not DPO's optimum: IPO does not simply exponentiate the rewards.
    assert not torch.allclose(probs, normalised(REFERENCE * torch.exp(REWARDS / tau)), atol=1e-3)


@pytest.mark.learns
def test_cpl_with_bias_one_reaches_the_reference_free_optimum():
    alpha = 0.5
    probs = train_to_convergence(create_algorithm("cpl", alpha=alpha, contrastive_bias=1.0))
    assert torch.allclose(probs, normalised(torch.exp(REWARDS / alpha)), atol=1e-6)

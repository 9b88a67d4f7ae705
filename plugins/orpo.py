"""Odds Ratio Preference Optimisation (Hong et al. 2024, arXiv:2403.07691)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_rlhf import Algorithm, LossOutput, register_algorithm
from lightning_rlhf.ops import preference_metrics

# Length-averaged log-probs within float32 rounding of 0 would make log(1 - p) = -inf.
LOGP_CEILING = -1e-6


def log_odds(logp: Tensor) -> Tensor:
    """``log(p / (1 - p))`` from ``logp = log p``, computed stably.

    ``log(1 - p) = log(-expm1(logp))``: ``expm1`` keeps its precision as ``logp -> 0``,
    where ``log1p(-exp(logp))`` rounds ``exp(logp)`` to 1 and returns -inf. The value is
    clamped at ``LOGP_CEILING`` but the gradient passes straight through, so a response
    the model is certain of (logp rounded to 0) still gets the (large, finite) gradient
    of the odds at the ceiling instead of none.
    """
    clamped = logp - (logp - logp.clamp(max=LOGP_CEILING)).detach()
    return clamped - torch.log(-torch.expm1(clamped))


@register_algorithm("orpo")
class ORPO(Algorithm):
    """ORPO: chosen-response NLL plus a log-odds-ratio penalty; no reference model.

    With ``P(y|x) = exp(mean_t log pi(y_t | x, y_<t))`` (length-averaged, as the
    paper defines it) and ``odds(y|x) = P / (1 - P)``, the loss over a batch is

        L = L_SFT + lambda * mean_pairs[ -log sigmoid( log odds(y_w|x) - log odds(y_l|x) ) ]

    ``L_SFT`` is the next-token NLL of the chosen responses, averaged over
    their tokens in the batch, as the authors' code (a causal-LM loss) and the SFT plugin
    do. ``odds_ratio_weight`` is the paper's lambda (0.1 in its main experiments, and
    TRL's default).
    """

    data = "preference"

    def __init__(self, odds_ratio_weight: float = 0.1):
        """
        Args:
            odds_ratio_weight: weight of the odds-ratio term beside the NLL (the paper's lambda;
                TRL's ``beta``)
        """
        if odds_ratio_weight < 0:
            raise ValueError(f"odds_ratio_weight must be non-negative, got {odds_ratio_weight}")
        self.odds_ratio_weight = odds_ratio_weight

    def loss(self, ctx, batch) -> LossOutput:
        logps = ctx.policy_logps(batch)
        chosen, _ = logps.chunk(2)
        n_tokens = chosen.mask.sum().clamp(min=1)
        nll = -chosen.token_logps.sum() / n_tokens
        mean_chosen, mean_rejected = logps.mean().chunk(2)  # [B] each, length-averaged
        log_odds_ratio = log_odds(mean_chosen) - log_odds(mean_rejected)
        odds_ratio_loss = -F.logsigmoid(log_odds_ratio).mean()
        loss = nll + self.odds_ratio_weight * odds_ratio_loss
        # rewards/* as TRL logs them for ORPO: the weight times the length-averaged log-prob.
        chosen_rewards, rejected_rewards = self.odds_ratio_weight * mean_chosen, self.odds_ratio_weight * mean_rejected
        sum_chosen, sum_rejected = logps.sum().chunk(2)
        return LossOutput(
            loss,
            {
                "nll": nll.detach(),
                "odds_ratio_loss": odds_ratio_loss.detach(),
                "log_odds_ratio": log_odds_ratio.detach().mean(),
                **preference_metrics(chosen_rewards, rejected_rewards, sum_chosen, sum_rejected, correct=log_odds_ratio > 0),
            },
        )

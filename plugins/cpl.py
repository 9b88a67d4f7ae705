"""Contrastive Preference Learning (Hejna et al. 2023, arXiv:2310.13639), for pairs."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F

from lightning_rlhf import Algorithm, LossOutput, register_algorithm
from lightning_rlhf.ops import preference_metrics


@register_algorithm("cpl")
class CPL(Algorithm):
    """CPL: contrast the segments' summed alpha*log pi (regret preference model); no reference.

    How CPL maps onto language models. CPL models a human preference between two
    behaviour *segments* sigma = (s_1, a_1, ..., s_k, a_k) by their *regret*, i.e. by the
    summed optimal advantage, ``P(sigma+ > sigma-) = exp(sum A*(sigma+)) / (exp(sum
    A*(sigma+)) + exp(sum A*(sigma-)))``, and uses the maximum-entropy RL identity
    ``A*(s, a) = alpha * log pi*(a | s)`` to turn that into a supervised loss on the
    policy itself: no reward model, no RL, no value function. Here a segment is a
    completion, a state ``s_t`` is the prompt plus the tokens so far, an action ``a_t`` is
    the next token, and the discount is 1. The segment score is

        S(y) = alpha * sum_t log pi(y_t | x, y_<t)

    and the loss per pair, with the conservative bias ``lambda`` (``contrastive_bias``)
    on the dispreferred segment (the paper's L_CPL(lambda)), is

        L = -log sigmoid(S(y_w) - lambda * S(y_l)),  0 < lambda <= 1

    ``lambda = 1`` is DPO without a reference model (beta = alpha). ``lambda < 1`` makes
    pushing the dispreferred segment down pay less than pulling the preferred one up,
    which keeps the policy on the data's support (offline data covers little). An
    optional behaviour-cloning term, ``bc_coeff`` times the NLL averaged over tokens, on
    every response or only the chosen ones (``bc_data``), is the authors' CPL+BC.

    Defaults are the authors' Meta-World configs: alpha 0.1, bias 0.5, no BC. The
    reported accuracy compares the unbiased scores, S(y_w) > S(y_l), as their code does.
    """

    data = "preference"

    def __init__(
        self,
        alpha: float = 0.1,
        contrastive_bias: float = 0.5,
        bc_coeff: float = 0.0,
        bc_data: Literal["all", "chosen"] = "all",
    ):
        """
        Args:
            alpha: temperature of the max-entropy advantage, A = alpha * log pi
            contrastive_bias: the conservative bias lambda on the dispreferred segment, in (0, 1]
            bc_coeff: weight of the behaviour-cloning (NLL) term; 0 turns it off
            bc_data: clone every response ("all") or only the chosen ones ("chosen")
        """
        if alpha <= 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        if not 0.0 < contrastive_bias <= 1.0:
            raise ValueError(f"contrastive_bias must be in (0, 1], got {contrastive_bias}")
        if bc_coeff < 0:
            raise ValueError(f"bc_coeff must be non-negative, got {bc_coeff}")
        if bc_data not in ("all", "chosen"):
            raise ValueError(f"bc_data must be 'all' or 'chosen', got {bc_data!r}")
        self.alpha, self.contrastive_bias = alpha, contrastive_bias
        self.bc_coeff, self.bc_data = bc_coeff, bc_data

    def loss(self, ctx, batch) -> LossOutput:
        logps = ctx.policy_logps(batch)
        sum_chosen, sum_rejected = logps.sum().chunk(2)  # [B] each
        score_chosen, score_rejected = self.alpha * sum_chosen, self.alpha * sum_rejected
        cpl_loss = -F.logsigmoid(score_chosen - self.contrastive_bias * score_rejected).mean()
        cloned = logps.chunk(2)[0] if self.bc_data == "chosen" else logps
        bc_nll = -cloned.token_logps.sum() / cloned.mask.sum().clamp(min=1)
        loss = cpl_loss + self.bc_coeff * bc_nll if self.bc_coeff > 0 else cpl_loss
        return LossOutput(
            loss,
            {
                "cpl_loss": cpl_loss.detach(),
                "nll": bc_nll.detach(),
                **preference_metrics(score_chosen, score_rejected, sum_chosen, sum_rejected),
            },
        )

"""Process reward model: a verdict on every step of a solution."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_rlhf import Algorithm, LossOutput, register_algorithm


@register_algorithm("prm")
class ProcessReward(Algorithm):
    """Process reward model: binary cross-entropy on a score read at the end of every step.

    The reward model is a token classifier with one output; for step s of a solution its
    score z_s is read at the step's last token (``data.stepwise``), and with the step's
    label y_s (1 right, 0 wrong)::

        L = -mean_s [ y_s log sigmoid(z_s) + (1 - y_s) log sigmoid(-z_s) ]

    over every step of the batch (Lightman et al. 2023, "Let's Verify Step by Step",
    arXiv:2305.20050, sec. 2.4: the PRM predicts each step's correctness at its last
    token; Uesato et al. 2022, arXiv:2211.14275, the process-supervised reward model).
    ``sigmoid(z_s)`` is then the probability that step s is right; a solution's score is
    an aggregate of them (``rewards.StepRewardSource``: min, product or last step).
    ``wrong_step_weight`` weighs the loss of wrong steps, which are rarer than right ones
    in most step-labelled sets.

    Where z_s comes from is the module's choice: ``RewardModule`` reads a classification
    head at the step's last token; ``ImplicitPRMModule`` (``models.implicit_prm``) takes
    z_s = beta * sum over the step's tokens of log pi_theta / pi_ref, plus a bias, which
    learns to check a step whose verdict the LM already predicts one token earlier (a
    written total) where a head at the step's end does not.
    """

    stage = "reward"
    data = "stepwise"
    scores_steps = True

    def __init__(self, wrong_step_weight: float = 1.0):
        """
        Args:
            wrong_step_weight: weight of a wrong step's loss against a right step's 1
        """
        if wrong_step_weight <= 0:
            raise ValueError(f"wrong_step_weight must be positive, got {wrong_step_weight}")
        self.wrong_step_weight = wrong_step_weight

    def loss(self, ctx, batch) -> LossOutput:
        scores = ctx.step_rewards(batch)
        labels = batch["step_labels"].to(scores.dtype)
        weights = torch.where(labels > 0.5, torch.ones_like(labels), torch.full_like(labels, self.wrong_step_weight))
        loss = (F.binary_cross_entropy_with_logits(scores, labels, reduction="none") * weights).sum() / weights.sum()
        # Step accuracy and F1 are the module's epoch metrics (modules.reward_metrics.StepMetrics).
        return LossOutput(loss, {"wrong_step_fraction": (labels < 0.5).float().mean().detach()})

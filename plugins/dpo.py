"""Direct Preference Optimization (Rafailov et al. 2023, arXiv:2305.18290)."""

from __future__ import annotations

from lightning_rlhf import Algorithm, LossOutput, register_algorithm
from lightning_rlhf.ops import preference_metrics, sigmoid_preference_loss


@register_algorithm("dpo")
class DPO(Algorithm):
    """DPO: Bradley-Terry on implicit rewards beta*log(pi/pi_ref); cDPO with label_smoothing.

    With the implicit reward ``r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x))`` (sums
    over the completion's tokens), the loss per pair is

        L = -(1 - eps) * log sigmoid(r_w - r_l) - eps * log sigmoid(r_l - r_w)

    ``eps = 0`` is DPO (eq. 7 of the paper); ``eps > 0`` is conservative DPO (Mitchell
    2023), which assumes each label is flipped with probability ``eps``.
    """

    data = "preference"
    needs_reference = True

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0):
        """
        Args:
            beta: strength of the KL regularisation toward the reference; lower lets the
                policy move further
            label_smoothing: cDPO's assumed label-noise rate, in [0, 0.5)
        """
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}")
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
        self.beta, self.label_smoothing = beta, label_smoothing

    def loss(self, ctx, batch) -> LossOutput:
        policy_chosen, policy_rejected = ctx.policy_logps(batch).sum().chunk(2)  # [B] each
        reference_chosen, reference_rejected = ctx.reference_logps(batch).sum().chunk(2)
        chosen_rewards = self.beta * (policy_chosen - reference_chosen)
        rejected_rewards = self.beta * (policy_rejected - reference_rejected)
        margins = chosen_rewards - rejected_rewards
        loss = sigmoid_preference_loss(margins, self.label_smoothing).mean()
        return LossOutput(loss, preference_metrics(chosen_rewards, rejected_rewards, policy_chosen, policy_rejected))

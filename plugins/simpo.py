"""Simple Preference Optimisation (Meng, Xia and Chen 2024, arXiv:2405.14734)."""

from __future__ import annotations

from lightning_rlhf import Algorithm, LossOutput, register_algorithm
from lightning_rlhf.ops import preference_metrics, sigmoid_preference_loss


@register_algorithm("simpo")
class SimPO(Algorithm):
    """SimPO: Bradley-Terry on length-averaged log-probs with a target margin gamma; no reference.

    The implicit reward is the length-averaged log-probability scaled by beta,
    ``r(x, y) = beta * mean_t log pi(y_t | x, y_<t)``, and the loss per pair is

        L = -(1 - eps) * log sigmoid(r_w - r_l - gamma) - eps * log sigmoid(-(r_w - r_l - gamma))

    ``eps = 0`` is the paper's loss; ``eps > 0`` is the label smoothing of the authors'
    code (as cDPO). ``gamma`` is given directly or as ``gamma_beta_ratio`` (gamma =
    ratio * beta), the form the authors' code now takes. With ``sft_weight > 0`` the
    chosen responses' next-token NLL (averaged over their tokens in the batch) is added,
    as in the authors' code.

    Defaults: beta 2.0 (the paper's and the authors' config default) and
    gamma_beta_ratio 0.5 (the authors' README: "0.5 as a starting point"; their
    ``SimPOConfig`` dataclass default is 0.25, their released models use 0.1-0.8).
    """

    data = "preference"

    def __init__(
        self,
        beta: float = 2.0,
        gamma: float | None = None,
        gamma_beta_ratio: float | None = None,
        sft_weight: float = 0.0,
        label_smoothing: float = 0.0,
    ):
        """
        Args:
            beta: scale of the length-averaged log-prob reward (larger than DPO's beta)
            gamma: the target reward margin; give this or ``gamma_beta_ratio``, not both
            gamma_beta_ratio: gamma / beta; 0.5 when neither is given
            sft_weight: weight of an added NLL term on the chosen responses (0 = none)
            label_smoothing: assumed label-noise rate, in [0, 0.5)
        """
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}")
        if gamma is not None and gamma_beta_ratio is not None:
            raise ValueError("give gamma or gamma_beta_ratio, not both")
        if sft_weight < 0:
            raise ValueError(f"sft_weight must be non-negative, got {sft_weight}")
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
        self.beta, self.gamma, self.gamma_beta_ratio = beta, gamma, gamma_beta_ratio
        self.sft_weight, self.label_smoothing = sft_weight, label_smoothing

    @property
    def target_margin(self) -> float:
        """gamma, however it was given."""
        if self.gamma is not None:
            return self.gamma
        return self.beta * (0.5 if self.gamma_beta_ratio is None else self.gamma_beta_ratio)

    def loss(self, ctx, batch) -> LossOutput:
        logps = ctx.policy_logps(batch)
        mean_chosen, mean_rejected = logps.mean().chunk(2)  # [B] each, length-averaged
        chosen_rewards, rejected_rewards = self.beta * mean_chosen, self.beta * mean_rejected
        margins = chosen_rewards - rejected_rewards
        loss = sigmoid_preference_loss(margins - self.target_margin, self.label_smoothing).mean()
        metrics = {}
        if self.sft_weight > 0:
            chosen, _ = logps.chunk(2)
            nll = -chosen.token_logps.sum() / chosen.mask.sum().clamp(min=1)
            loss = loss + self.sft_weight * nll
            metrics["nll"] = nll.detach()
        sum_chosen, sum_rejected = logps.sum().chunk(2)
        metrics |= preference_metrics(chosen_rewards, rejected_rewards, sum_chosen, sum_rejected)
        return LossOutput(loss, metrics)

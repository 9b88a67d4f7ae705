"""Kahneman-Tversky Optimisation (Ethayarajh et al. 2024, arXiv:2402.01306)."""

from __future__ import annotations

import warnings

import torch

from lightning_rlhf import Algorithm, LossOutput, register_algorithm
from lightning_rlhf.ops import masked_mean

# The paper's recommended range for (w_D * n_D) / (w_U * n_U).
RECOMMENDED_RATIO = (1.0, 4.0 / 3.0)


@register_algorithm("kto")
class KTO(Algorithm):
    """KTO: a prospect-theory value of each labelled completion against a KL reference point.

    From unpaired completions labelled desirable (D) or undesirable (U), with the
    implicit reward ``r(x, y) = log pi(y|x) - log pi_ref(y|x)`` (summed over tokens) and
    the reference point

        z0 = max(0, mean over the batch of [log pi(y'|x) - log pi_ref(y'|x)])   (no grad)

    estimated on *mismatched* pairs (prompt x with the completion y' of another prompt, so
    the estimate is of KL(pi || pi_ref) rather than of the labelled data's rewards; rows
    with no other prompt in their batch are left out, and z0 = 0 when none has one), the
    loss per example is

        D:  w_D * (1 - sigmoid(beta * (r - z0)))
        U:  w_U * (1 - sigmoid(beta * (z0 - r)))

    averaged over the batch's examples. z0 gets no gradient (as in the paper and TRL): it
    only sets where gains turn into losses. The paper recommends weights such that
    ``(w_D * n_D) / (w_U * n_U)`` lies in [1, 4/3]; a warning says so, once, when the
    training data's counts (or, without them, the first batch's) fall outside.

    The batch carries matched rows then mismatched rows (see ``data.unpaired``), scored in
    one forward pass; only the matched ones get a gradient. With data parallelism each
    device estimates z0 from its own batch.
    """

    data = "unpaired"
    needs_reference = True

    def __init__(self, beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0):
        """
        Args:
            beta: scale of the reward inside the sigmoid; lower lets the policy move further
            desirable_weight: w_D, the weight of desirable examples' losses
            undesirable_weight: w_U, the weight of undesirable examples' losses
        """
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}")
        if desirable_weight <= 0 or undesirable_weight <= 0:
            raise ValueError(f"the weights must be positive, got {desirable_weight} and {undesirable_weight}")
        self.beta = beta
        self.desirable_weight, self.undesirable_weight = desirable_weight, undesirable_weight
        self._balance_checked = False

    def loss(self, ctx, batch) -> LossOutput:
        desirable = batch["label"]  # [B] bool
        if not self._balance_checked:
            self._check_balance(batch)
        policy = ctx.policy_logps(batch).sum()  # [2B]: matched rows, then mismatched rows
        reference = ctx.reference_logps(batch).sum()
        rewards, mismatched_rewards = (policy - reference).chunk(2)  # [B] each
        z0 = masked_mean(mismatched_rewards.detach(), batch["mismatched"]).clamp(min=0)
        desirable_losses = self.desirable_weight * (1 - torch.sigmoid(self.beta * (rewards - z0)))
        undesirable_losses = self.undesirable_weight * (1 - torch.sigmoid(self.beta * (z0 - rewards)))
        loss = torch.where(desirable, desirable_losses, undesirable_losses).mean()
        undesirable = ~desirable
        policy_matched = policy.chunk(2)[0].detach()
        # rewards/* on DPO's scale, beta * log-ratio; means over a class the batch lacks
        # are 0 (see ops.masked_mean).
        scaled_rewards = self.beta * rewards.detach()
        return LossOutput(
            loss,
            {
                "kl": z0,
                "rewards/chosen": masked_mean(scaled_rewards, desirable),
                "rewards/rejected": masked_mean(scaled_rewards, undesirable),
                "logps/chosen": masked_mean(policy_matched, desirable),
                "logps/rejected": masked_mean(policy_matched, undesirable),
                "desirable_fraction": desirable.float().mean(),
            },
        )

    def _check_balance(self, batch) -> None:
        counts = batch.get("train_label_counts")
        if counts is None:
            n_desirable = int(batch["label"].sum())
            counts, where = (n_desirable, batch["label"].numel() - n_desirable), "the first batch"
        else:
            counts, where = tuple(int(c) for c in counts), "the training data"
        self._balance_checked = True
        warning = class_balance_warning(*counts, self.desirable_weight, self.undesirable_weight, where)
        if warning:
            warnings.warn(warning, stacklevel=3)


def class_balance_warning(
    n_desirable: int, n_undesirable: int, desirable_weight: float, undesirable_weight: float, where: str = "the data"
) -> str | None:
    """The paper's advice when ``(w_D * n_D) / (w_U * n_U)`` is outside [1, 4/3], else None."""
    low, high = RECOMMENDED_RATIO
    if n_undesirable == 0 or n_desirable == 0:
        ratio = float("inf") if n_undesirable == 0 else 0.0
    else:
        ratio = (desirable_weight * n_desirable) / (undesirable_weight * n_undesirable)
    if low <= ratio <= high:
        return None
    advice = ""
    if n_desirable and n_undesirable:
        # Solve for w_D with w_U fixed, aiming at the middle of the range.
        target = (low + high) / 2 * undesirable_weight * n_undesirable / n_desirable
        advice = f"; e.g. desirable_weight={target:.3g} with undesirable_weight={undesirable_weight}"
    return (
        f"KTO: {where} has {n_desirable} desirable and {n_undesirable} undesirable examples, so "
        f"(desirable_weight * n_D) / (undesirable_weight * n_U) = {ratio:.3g}, outside the range "
        f"[1, 4/3] the paper recommends{advice}"
    )

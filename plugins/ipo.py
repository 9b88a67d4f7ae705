"""Identity Preference Optimisation (Azar et al. 2023, arXiv:2310.12036)."""

from __future__ import annotations

from lightning_rlhf import Algorithm, LossOutput, register_algorithm
from lightning_rlhf.ops import preference_metrics


@register_algorithm("ipo")
class IPO(Algorithm):
    """IPO: regress the reference-relative log-ratio margin onto 1/(2*tau) (squared loss).

    With the log-ratio margin of a pair (chosen y_w, rejected y_l)

        h = (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))

    the loss per pair is the paper's empirical IPO loss (its sampled-pairs form)

        L = (h - 1 / (2 * tau))^2

    Unlike DPO's -log sigmoid, the square does not keep rewarding an ever larger margin,
    so the policy cannot drift arbitrarily far from the reference on pairs it already
    orders correctly; ``tau`` plays DPO's ``beta``. At the optimum of the expected loss
    over a complete set of pairs, ``h_ij = (p(i > j) - 1/2) / tau`` in the least-squares
    sense (see tests/test_closed_form.py).

    Summed or averaged log-probs: the paper writes h with sequence log-probabilities
    (sums over tokens). TRL (PR #1265, after consulting the paper's authors) averages
    per token instead, so that the target margin 1/(2*tau) does not depend on the
    response length. ``average_log_probs`` chooses; the default follows the authors'
    advice (average). ``average_log_probs=False`` is the paper's formula read literally.
    """

    data = "preference"
    needs_reference = True

    def __init__(self, tau: float = 0.1, average_log_probs: bool = True):
        """
        Args:
            tau: regularisation strength toward the reference; the target margin is 1/(2*tau)
            average_log_probs: length-averaged log-probs in h (TRL, the authors' advice);
                False sums them over tokens (the paper's equation as written)
        """
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.tau, self.average_log_probs = tau, average_log_probs

    def loss(self, ctx, batch) -> LossOutput:
        policy, reference = ctx.policy_logps(batch), ctx.reference_logps(batch)
        if self.average_log_probs:
            policy_logps, reference_logps = policy.mean(), reference.mean()  # [2B]
        else:
            policy_logps, reference_logps = policy.sum(), reference.sum()
        chosen_logratio, rejected_logratio = (policy_logps - reference_logps).chunk(2)
        h = chosen_logratio - rejected_logratio
        loss = ((h - 1 / (2 * self.tau)) ** 2).mean()
        # DPO's names, with tau in beta's place: the implicit reward tau * log(pi/pi_ref)
        # (per token when averaging); logps/* are summed, as DPO's are, in either mode.
        policy_chosen, policy_rejected = policy.sum().chunk(2)
        chosen_rewards, rejected_rewards = self.tau * chosen_logratio, self.tau * rejected_logratio
        return LossOutput(
            loss,
            {
                **preference_metrics(chosen_rewards, rejected_rewards, policy_chosen, policy_rejected, correct=h > 0),
                "ipo/h": h.detach().mean(),
            },
        )

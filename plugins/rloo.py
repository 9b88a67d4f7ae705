"""REINFORCE Leave-One-Out (Ahmadian et al. 2024, arXiv:2402.14740)."""

from __future__ import annotations

import torch

from lightning_rlhf import register_algorithm
from lightning_rlhf_plugins.grpo import GRPO


@register_algorithm("rloo")
class RLOO(GRPO):
    """RLOO: k samples per prompt, each baselined by the mean reward of the other k - 1.

    With the KL penalty in the reward (k1, summed over the completion's tokens):

        R_i = score_i - beta * sum_t (log pi(y_it) - log pi_ref(y_it))
        A_i = R_i - 1/(k-1) sum_{j != i} R_j          (= k/(k-1) (R_i - mean(R)))

    and REINFORCE on the whole sequence, with the ratio clipped as in PPO when a rollout
    serves several optimiser steps: l_i = sum_t -min(rho_it A_i, clip(rho_it) A_i),
    L = mean_i l_i (at rho = 1 its gradient is -A_i grad log pi(y_i), the paper's estimator,
    eq. 6). ``beta = 0``: no reference model.
    """

    loss_types = ("rloo",)
    needs_reference = True  # the default beta > 0 (an instance with beta 0 loads none)
    kl_in_loss = False

    def __init__(
        self,
        num_generations: int = 4,
        beta: float = 0.05,
        epsilon: float = 0.2,
        num_iterations: int = 1,
        minibatch_size: int | None = None,
        mask_truncated_completions: bool = False,
        temperature: float = 1.0,
        max_new_tokens: int = 48,
    ):
        """
        Args:
            num_generations: k, completions sampled per prompt (>= 2)
            beta: weight of the KL penalty in the reward; 0 loads no reference model
            epsilon: clip range of the ratio (matters only with several steps per rollout)
            num_iterations: passes over each rollout
            minibatch_size: sampled rows per optimiser step (whole groups); default: the rollout
            mask_truncated_completions: leave completions without EOS out of the loss
            temperature: sampling temperature; log-probs are computed from logits / T
            max_new_tokens: longest completion sampled
        """
        super().__init__(num_generations=num_generations, loss_type="rloo", beta=beta, epsilon=epsilon,
                         num_iterations=num_iterations, minibatch_size=minibatch_size,
                         mask_truncated_completions=mask_truncated_completions, temperature=temperature,
                         max_new_tokens=max_new_tokens)

    def advantages(self, rewards, mask, log_ratio, sum_over_processes=None) -> torch.Tensor:
        return leave_one_out(penalised_rewards(rewards, log_ratio, self.beta), self.num_generations)


def penalised_rewards(rewards: torch.Tensor, log_ratio: torch.Tensor | None, beta: float) -> torch.Tensor:
    """``score - beta * sum_t (log pi - log pi_ref)`` per completion (the score alone without a KL term)."""
    return rewards if log_ratio is None else rewards - beta * log_ratio.sum(-1)


def leave_one_out(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """``R_i - mean_{j != i} R_j`` within each group of ``k`` contiguous rows, over the scored
    (non-NaN) rows; a row left out, or alone in its group, gets 0."""
    grouped = rewards.view(-1, k)
    scored = ~torch.isnan(grouped)
    values = torch.where(scored, grouped, torch.zeros_like(grouped))
    others = scored.sum(-1, keepdim=True) - 1
    baseline = (values.sum(-1, keepdim=True) - values) / others.clamp(min=1)
    return torch.where(scored & (others > 0), values - baseline, torch.zeros_like(values)).flatten()

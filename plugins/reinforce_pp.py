"""REINFORCE++ (Hu 2025, arXiv:2501.03262)."""

from __future__ import annotations

import torch

from lightning_rlhf import register_algorithm
from lightning_rlhf.ops import masked_whiten
from lightning_rlhf_plugins.grpo import GRPO, group_moments


@register_algorithm("reinforce_pp")
class ReinforcePP(GRPO):
    """REINFORCE++: PPO's token-level KL-penalised rewards and clipped loss, no critic, and
    advantages normalised over the whole batch instead of a learned baseline.

    Per token of completion i (k1 KL estimate, the score at the last token, gamma = 1):

        r_it = -beta (log pi(y_it) - log pi_ref(y_it)) + [t = last] * score_i
        G_it = sum_{s >= t} r_is                       (return to go)
        A_it = (G_it - mean(G)) / std(G)               over every token of the batch (and of
                                                       every process under data parallelism)

    ``baseline: true`` is REINFORCE++-baseline: each score first has its group's mean score
    subtracted (several samples per prompt). Loss: -min(rho A, clip(rho) A) per token, the
    token mean over the batch.
    """

    loss_types = ("reinforce_pp",)
    needs_reference = True  # the default beta > 0 (an instance with beta 0 loads none)
    min_generations = 1
    kl_in_loss = False

    def __init__(
        self,
        num_generations: int = 1,
        baseline: bool = False,
        beta: float = 0.01,
        epsilon: float = 0.2,
        num_iterations: int = 1,
        minibatch_size: int | None = None,
        mask_truncated_completions: bool = False,
        temperature: float = 1.0,
        max_new_tokens: int = 48,
    ):
        """
        Args:
            num_generations: completions sampled per prompt (1 for REINFORCE++; >= 2 with ``baseline``)
            baseline: subtract each group's mean score first (REINFORCE++-baseline)
            beta: weight of the per-token KL penalty in the reward; 0 loads no reference model
            epsilon: clip range of the ratio
            num_iterations: passes over each rollout
            minibatch_size: sampled rows per optimiser step (whole groups); default: the rollout
            mask_truncated_completions: leave completions without EOS out of the loss
            temperature: sampling temperature; log-probs are computed from logits / T
            max_new_tokens: longest completion sampled
        """
        if baseline and num_generations < 2:
            raise ValueError("baseline: true subtracts a group's mean score: num_generations must be >= 2")
        super().__init__(num_generations=num_generations, loss_type="reinforce_pp", beta=beta, epsilon=epsilon,
                         num_iterations=num_iterations, minibatch_size=minibatch_size,
                         mask_truncated_completions=mask_truncated_completions, temperature=temperature,
                         max_new_tokens=max_new_tokens)
        self.baseline = baseline

    def advantages(self, rewards, mask, log_ratio, sum_over_processes=None) -> torch.Tensor:
        if self.baseline:
            rewards = group_moments(rewards, self.num_generations)[1].flatten()  # minus the group's mean score
        return token_advantages(rewards, mask, log_ratio, self.beta, sum_over_processes)


def token_advantages(scores: torch.Tensor, mask: torch.Tensor, log_ratio: torch.Tensor | None, beta: float,
                     sum_over_processes=None) -> torch.Tensor:
    """``[N, T-1]``: returns to go of the KL-penalised token rewards, whitened over the batch's tokens."""
    mask = mask.to(scores.dtype)
    scores = torch.nan_to_num(scores)  # a sample left out has its tokens masked off
    rewards = torch.zeros_like(mask) if log_ratio is None else -beta * log_ratio * mask
    last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(-1)  # each completion's final token
    rewards[torch.arange(len(last), device=mask.device), last] += scores
    returns = rewards.flip(-1).cumsum(-1).flip(-1) * mask
    return masked_whiten(returns, mask, sum_over_processes=sum_over_processes)

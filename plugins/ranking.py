"""K-wise ranking reward-model loss (InstructGPT, Ouyang et al. 2022, arXiv:2203.02155)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_rlhf import Algorithm, LossOutput, register_algorithm
from lightning_rlhf.algorithm import RewardContext
from lightning_rlhf.data.ranking import ranked_pair_mask
from lightning_rlhf.ops import masked_mean


@register_algorithm("ranking")
class Ranking(Algorithm):
    """K-wise ranking loss: every ranked pair of a prompt, averaged per prompt (InstructGPT eq. 1).

    A prompt with K ranked completions gives C(K, 2) pairs, all from one forward pass::

        L(x) = -1/C(K,2) * sum_{y_w ranked above y_l} log sigmoid(r(x, y_w) - r(x, y_l))

    and the batch loss is the mean of L(x) over its prompts, so each prompt weighs the
    same whatever its K (InstructGPT trains on all pairs of a prompt as one batch element
    to avoid overfitting to the shared completions). Tied completions form no pair, and
    C(K, 2) is then the number of pairs actually formed.
    """

    stage = "reward"
    data = "ranking"

    def loss(self, ctx: RewardContext, batch) -> LossOutput:
        rewards = ctx.rewards(batch)  # [N]: all completions of all prompts
        group_index, rank = batch["group_index"], batch["rank"]
        pairs = ranked_pair_mask(group_index, rank).to(rewards.dtype)  # [N, N]: i above j
        pair_losses = -F.logsigmoid(rewards.unsqueeze(1) - rewards.unsqueeze(0)) * pairs
        # Sum each prompt's pairs by the prompt of their better row; N bounds the number of
        # prompts, so no size has to be read back from the accelerator.
        n = rewards.shape[0]
        prompt_loss = rewards.new_zeros(n).index_add(0, group_index, pair_losses.sum(1))
        prompt_pairs = rewards.new_zeros(n).index_add(0, group_index, pairs.sum(1))
        has_pairs = (prompt_pairs > 0).to(rewards.dtype)
        n_prompts = has_pairs.sum().clamp(min=1)
        loss = (prompt_loss / prompt_pairs.clamp(min=1)).sum() / n_prompts
        worst_rank = torch.zeros_like(rank).scatter_reduce(0, group_index, rank, reduce="amax")
        is_best, is_worst = rank == 0, rank == worst_rank[group_index]
        detached = rewards.detach()  # masked means, not boolean indexing: no device sync
        return LossOutput(
            loss,
            {
                "rewards/best": masked_mean(detached, is_best),
                "rewards/worst": masked_mean(detached, is_worst),
                "pairs_per_prompt": (prompt_pairs.sum() / n_prompts).detach(),
            },
        )

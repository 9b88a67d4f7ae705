"""Contrastive Preference Learning over rankings (Hejna et al. 2023, arXiv:2310.13639):
the dense variant, every ordered pair of K ranked completions."""

from __future__ import annotations

import torch.nn.functional as F

from lightning_rlhf import LossOutput, register_algorithm
from lightning_rlhf.data.ranking import ranked_pair_mask
from lightning_rlhf_plugins.cpl import CPL


@register_algorithm("cpl_ranking")
class CPLRanking(CPL):
    """Dense CPL: the CPL loss over every ordered pair of K ranked completions per prompt.

    The paper's "dense" preference setting ranks many segments and trains on all the
    pairs the ranking implies; here the segments are the K completions of one prompt
    (see the ``cpl`` plugin for how segments, states and actions map onto tokens). With
    ``S(y) = alpha * sum_t log pi(y_t | x, y_<t)`` and ``i > j`` meaning completion i is
    ranked above j for the same prompt (ties form no pair),

        L = mean over pairs (i > j) of  -log sigmoid(S(y_i) - lambda * S(y_j))

    The mean runs over all pairs of the batch at once, as in the authors' code, so a
    prompt with more completions weighs more (K*(K-1)/2 pairs). With K = 2 and
    ``lambda`` as in ``cpl``, this is the ``cpl`` loss. The behaviour-cloning term clones
    every completion ("all") or the best-ranked ones of each prompt ("chosen").

    Reads ``ranking`` batches: rows ``[N, T]`` with ``group_index [N]`` (which prompt)
    and ``rank [N]`` (0 = best within its prompt). Hyperparameters, their checks and
    defaults are ``cpl``'s (inherited); ``bc_data: chosen`` clones each prompt's best.
    """

    data = "ranking"

    def loss(self, ctx, batch) -> LossOutput:
        logps = ctx.policy_logps(batch)
        scores = self.alpha * logps.sum()  # [N]
        pairs = ranked_pair_mask(batch["group_index"], batch["rank"])  # [N, N]: row i above row j
        logits = scores.unsqueeze(1) - self.contrastive_bias * scores.unsqueeze(0)  # [i, j]
        n_pairs = pairs.sum().clamp(min=1)
        cpl_loss = (-F.logsigmoid(logits) * pairs).sum() / n_pairs
        best = batch["rank"] == 0  # [N]: each prompt's best (several if tied)
        token_mask = logps.mask & best.unsqueeze(-1) if self.bc_data == "chosen" else logps.mask
        bc_nll = -(logps.token_logps * token_mask).sum() / token_mask.sum().clamp(min=1)
        loss = cpl_loss + self.bc_coeff * bc_nll if self.bc_coeff > 0 else cpl_loss
        # The unbiased comparison, as in the authors' code.
        margins = scores.unsqueeze(1) - scores.unsqueeze(0)
        accuracy = ((margins > 0) & pairs).sum() / n_pairs
        return LossOutput(
            loss,
            {
                "cpl_loss": cpl_loss.detach(),
                "nll": bc_nll.detach(),
                "rewards/accuracies": accuracy.float().detach(),
                "rewards/margins": ((margins * pairs).sum() / n_pairs).detach(),
                "rewards/best": ((scores * best).sum() / best.sum().clamp(min=1)).detach(),
                "pairs": pairs.sum().float().detach(),
            },
        )

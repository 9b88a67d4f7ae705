"""Supervised fine-tuning: next-token negative log-likelihood on the completion."""

from __future__ import annotations

from lightning_rlhf import Algorithm, LossOutput, register_algorithm


@register_algorithm("sft")
class SFT(Algorithm):
    """Supervised fine-tuning: mean next-token NLL over completion tokens.

    The data module decides which tokens count (completion only by default, or the whole
    sequence with ``train_on_prompt``); this loss averages over every counted token in
    the batch, so long completions weigh in proportion to their length, as in
    pretraining.
    """

    data = "sft"

    def loss(self, ctx, batch) -> LossOutput:
        logps = ctx.policy_logps(batch)  # token_logps, mask: [B, T-1]
        n_tokens = logps.mask.sum().clamp(min=1)
        nll = -logps.token_logps.sum() / n_tokens
        return LossOutput(nll, {"nll": nll.detach(), "tokens": n_tokens.detach().float()})

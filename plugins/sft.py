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

    In training the mean is over the whole optimiser step, every process and every
    accumulated micro-batch: the module puts the divisor that makes it so in
    ``batch["loss_tokens"]`` (see ``lightning_rlhf.data.step_tokens``); without it (one
    batch on its own) the divisor is the batch's token count. ``nll`` is logged as this
    batch's own token mean either way.
    """

    data = "sft"

    def loss(self, ctx, batch) -> LossOutput:
        logps = ctx.policy_logps(batch)  # token_logps, mask: [B, T-1]
        n_tokens = logps.mask.sum().clamp(min=1)
        nll_sum = -logps.token_logps.sum()
        loss = nll_sum / batch.get("loss_tokens", n_tokens)
        return LossOutput(loss, {"nll": nll_sum.detach() / n_tokens, "tokens": n_tokens.detach().float()})

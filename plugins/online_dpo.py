"""Online DPO (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback", arXiv:2402.04792)."""

from __future__ import annotations

import torch

from lightning_rlhf import Experience, LossOutput, OnlineAlgorithm, OnlineContext, register_algorithm
from lightning_rlhf.algorithm import passes_over, passes_updates
from lightning_rlhf.ops import completion_index, masked_mean, preference_metrics, sigmoid_preference_loss


@register_algorithm("online_dpo")
class OnlineDPO(OnlineAlgorithm):
    """Online DPO: DPO on pairs the current policy samples and an annotator ranks.

    Rollout (no grad), per prompt x: two completions y_1, y_2 ~ pi_theta(.|x) (the policy as
    it is now, not a fixed dataset), scored by the reward source (a reward model, a rule, a
    judge); the higher is y_w, the lower y_l (Algorithm 1 of the paper). A pair whose
    scores tie says nothing and is left out. Then, as in DPO (Rafailov et al. 2023, eq. 7)
    with the reference's log-probs taken once in the rollout:

        m = beta * [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))]
        L = -(1 - eps) log sigmoid(m) - eps log sigmoid(-m)          (eps: label_smoothing)

    averaged over the pairs. ``missing_eos_penalty`` subtracts from the score of a
    completion cut off without EOS before the pair is ranked (as TRL's OnlineDPOTrainer).
    The logged sample table shows the pairs: prompt, chosen, rejected and their scores.
    """

    samples_per_prompt = 2
    needs_reference = True

    def __init__(
        self,
        beta: float = 0.1,
        label_smoothing: float = 0.0,
        missing_eos_penalty: float | None = None,
        num_iterations: int = 1,
        minibatch_size: int | None = None,
        temperature: float = 1.0,
        max_new_tokens: int = 48,
    ):
        """
        Args:
            beta: strength of the KL regularisation toward the reference
            label_smoothing: cDPO's assumed rate of wrong annotations, in [0, 0.5)
            missing_eos_penalty: subtracted from the score of a completion without EOS; None: nothing
            num_iterations: passes over each rollout's pairs
            minibatch_size: sampled rows per optimiser step (whole pairs, so even); default: the rollout
            temperature: sampling temperature; log-probs are computed from logits / T
            max_new_tokens: longest completion sampled
        """
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}")
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
        if num_iterations < 1 or (minibatch_size is not None and minibatch_size < 2) or max_new_tokens < 1 or temperature <= 0:
            raise ValueError("num_iterations and max_new_tokens must be >= 1, minibatch_size >= 2, temperature > 0")
        self.beta, self.label_smoothing, self.missing_eos_penalty = beta, label_smoothing, missing_eos_penalty
        self.num_iterations, self.minibatch_size = num_iterations, minibatch_size
        self.temperature, self.max_new_tokens = temperature, max_new_tokens

    @torch.no_grad()
    def rollout(self, ctx: OnlineContext, prompts) -> Experience:
        sampled = ctx.generate(prompts["prompt_ids"], self.temperature, 1.0, self.max_new_tokens, n=2)
        texts = [text for text in prompts["prompts"] for _ in range(2)]
        columns = [row for row in prompts.get("columns", [{}] * len(prompts["prompts"])) for _ in range(2)]
        scores = ctx.reward(texts, sampled.completions, columns).float()
        ranked = scores if self.missing_eos_penalty is None else scores - self.missing_eos_penalty * (~sampled.finished).float()
        chosen_rows, rejected_rows, decided = pair_rows(ranked)
        rows = torch.stack([chosen_rows, rejected_rows], -1).flatten()  # chosen, rejected, chosen, ...
        tensors = {k: v.index_select(0, rows) for k, v in sampled.batch.items() if k != "logp_index"}
        # A tied pair stays in the batch with no completion token to score (every process
        # keeps all its pairs, so all take the same number of optimiser steps) and adds no loss.
        tensors["completion_mask"] = tensors["completion_mask"] * decided.repeat_interleave(2)[:, None].to(tensors["completion_mask"].dtype)
        batch = {**tensors, "logp_index": completion_index(tensors["completion_mask"])}
        tensors["group_index"] = torch.arange(len(chosen_rows), device=rows.device).repeat_interleave(2)
        tensors["ref_logps"] = ctx.reference_logps(batch, temperature=self.temperature).sum()
        metrics = {
            "objective/scores": scores.nanmean(),
            "objective/tied_pair_fraction": 1 - decided.float().mean(),
            "objective/no_eos_fraction": (~sampled.finished).float().mean(),
            "response_length": sampled.lengths.float().mean(),
            "objective/chosen_scores": masked_mean(scores[chosen_rows].nan_to_num(), decided),
            "objective/rejected_scores": masked_mean(scores[rejected_rows].nan_to_num(), decided),
        }
        kept = rows.tolist()
        return Experience(tensors, [texts[i] for i in kept], [sampled.completions[i] for i in kept], scores.index_select(0, rows),
                          {k: v.detach().float() for k, v in metrics.items()})

    def minibatches(self, experience: Experience):
        return passes_over(experience, self.num_iterations, self.minibatch_size)

    def updates_per_rollout(self, rollout_size: int) -> int:
        return passes_updates(rollout_size, self.num_iterations, self.minibatch_size)

    def loss(self, ctx: OnlineContext, batch) -> LossOutput:
        policy = ctx.policy_logps(batch, temperature=self.temperature)
        policy_chosen, policy_rejected = policy.sum().view(-1, 2).unbind(-1)
        reference_chosen, reference_rejected = batch["ref_logps"].view(-1, 2).unbind(-1)
        chosen_rewards = self.beta * (policy_chosen - reference_chosen)
        rejected_rewards = self.beta * (policy_rejected - reference_rejected)
        margins = chosen_rewards - rejected_rewards
        # Divided by the whole minibatch's count of decided pairs, so micro-batch losses add up to it.
        decided = policy.mask.any(-1).view(-1, 2)[:, 0].to(margins.dtype)  # a tied pair has no token to score
        pairs = batch["loss_rows"].to(margins.dtype) / 2
        loss = (sigmoid_preference_loss(margins, self.label_smoothing) * decided).sum() / pairs.clamp(min=1)
        return LossOutput(loss, preference_metrics(chosen_rewards, rejected_rewards, policy_chosen, policy_rejected))

    def sample_table(self, experience: Experience, rows: int) -> tuple[list[str], list[list]]:
        data = [[experience.prompts[i], experience.completions[i], experience.completions[i + 1],
                 float(experience.scores[i]), float(experience.scores[i + 1])]
                for i in range(0, min(2 * rows, len(experience)), 2)]
        return ["prompt", "chosen", "rejected", "chosen_score", "rejected_score"], data


def pair_rows(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For scores of pairs (rows 2i, 2i+1): the row of the higher and of the lower score of
    every pair, and whether the pair is decided (a tie is not; a NaN, unscored, ties with
    everything); a tied pair keeps its order."""
    pairs = scores.view(-1, 2)
    decided = (pairs[:, 0] != pairs[:, 1]) & ~torch.isnan(pairs).any(-1)
    second_wins = (pairs[:, 1] > pairs[:, 0]).long()
    first = 2 * torch.arange(len(pairs), device=scores.device)
    return first + second_wins, first + 1 - second_wins, decided

"""Proximal Policy Optimization for RLHF (Schulman et al. 2017; Ziegler et al. 2019;
Ouyang et al. 2022), following Huang et al. 2024, "The N+ Implementation Details of RLHF
with PPO" (arXiv:2403.17031), and Zheng et al. 2023, "Secrets of RLHF in Large Language
Models Part I: PPO" (arXiv:2307.04964)."""

from __future__ import annotations

import math

import torch

from lightning_rlhf import LossOutput, OnlineAlgorithm, OnlineContext, register_algorithm
from lightning_rlhf.algorithm import Experience
from lightning_rlhf.kl_control import AdaptiveKLController, KLController
from lightning_rlhf.ops import (
    clipped_policy_loss,
    clipped_value_loss,
    generalized_advantages,
    kl_estimate,
    masked_mean,
    masked_sum,
    masked_whiten,
    SumOverProcesses,
)
from lightning_rlhf.rollout import penalise_missing_eos


class RunningMoments:
    """Running mean and standard deviation of scores over every rollout so far (Chan et
    al.'s parallel update); for reward normalisation (Secrets of RLHF, section 5.3)."""

    def __init__(self):
        self.mean, self.var, self.count = 0.0, 1.0, 0

    def update(self, values: torch.Tensor, sum_over_processes: SumOverProcesses | None = None) -> None:
        """Fold in a batch of values; with ``sum_over_processes``, every process's batch, so
        that each process keeps the same moments."""
        values = values.double()
        if sum_over_processes is None:
            n, mean, var = values.numel(), values.mean().item(), values.var(unbiased=False).item()
        else:
            total, count = sum_over_processes(torch.stack([values.sum(), values.new_tensor(values.numel())])).tolist()
            n, mean = int(count), total / count
            var = sum_over_processes(((values - mean) ** 2).sum()).item() / count
        total = self.count + n
        delta = mean - self.mean
        m2 = self.var * self.count + var * n + delta**2 * self.count * n / total
        self.mean, self.var, self.count = self.mean + delta * n / total, m2 / total, total

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 1e-12))


def rollout_mean(values: torch.Tensor, sum_over_processes: SumOverProcesses | None = None) -> tuple[torch.Tensor, int]:
    """The mean of ``values`` over the whole rollout (every process's rows), and its row count."""
    if sum_over_processes is None:
        return values.mean(), values.numel()
    total, count = sum_over_processes(torch.stack([values.sum(), values.new_tensor(values.numel())]))
    return total / count, int(count)


@register_algorithm("ppo")
class PPO(OnlineAlgorithm):
    """PPO: clipped surrogate with a critic, GAE, and a per-token KL penalty toward the reference.

    Rollout (no grad), for prompts x and sampled completions y = (y_1..y_L):

        r_t   = -beta * KL_t                 per token, KL_t = k1 or k3 estimate of log pi/pi_ref
        r_L  += score(x, y) - missing_eos_penalty * [no EOS]     at the final token
                (``step_rewards``: r_e(j) += score of step j at the token e(j) ending step j,
                from a step reward source such as a process reward model, and the EOS
                penalty at the final token; Lightman et al. 2023's process supervision as
                dense rewards)
        A, R  = GAE(r, V_old; gamma, lambda)    A whitened over the batch

    Loss, for several epochs over minibatches, with ratio = pi(y_t) / pi_old(y_t), both at
    the sampling temperature (logits / T):

        L = mean_t max(-A_t ratio, -A_t clip(ratio, 1 - eps, 1 + eps))
          + vf_coef * mean_t 0.5 max((V - R)^2, (clip(V, V_old +- eps_v) - R)^2)
          - entropy_coef * mean_t H_t

    The means are over the completion tokens of the minibatch. beta is fixed or follows
    Ziegler et al.'s adaptive controller (``kl_target``).
    """

    needs_reference = True  # the default kl_coef > 0 (an instance with no KL penalty loads none)
    needs_value = True

    def __init__(
        self,
        kl_coef: float = 0.05,
        kl_estimator: str = "k1",
        kl_target: float | None = None,
        kl_horizon: int = 10000,
        gamma: float = 1.0,
        lam: float = 0.95,
        cliprange: float = 0.2,
        cliprange_value: float = 0.2,
        vf_coef: float = 0.1,
        entropy_coef: float = 0.0,
        whiten_advantages: bool = True,
        whiten_rewards: bool = False,
        normalize_scores: bool = False,
        score_clip: float | None = None,
        missing_eos_penalty: float = 1.0,
        step_rewards: bool = False,
        ppo_epochs: int = 4,
        minibatch_size: int = 8,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 48,
    ):
        """
        Args:
            kl_coef: beta, the weight of the per-token KL penalty (the starting value when
                adaptive); 0 without ``kl_target`` loads no reference model (and logs no KL)
            kl_estimator: k1 (``log pi - log pi_ref``) or k3 (``(r - 1) - log r``, ``r = pi_ref / pi``), or k2
            kl_target: adapt beta toward this KL per sequence (Ziegler et al.); None: fixed beta
            kl_horizon: the adaptive controller's horizon, in samples
            gamma: discount
            lam: GAE's lambda
            cliprange: epsilon of the clipped surrogate
            cliprange_value: how far a value may move from its rollout value before its loss is clipped
            vf_coef: weight of the value loss
            entropy_coef: weight of the entropy bonus
            whiten_advantages: normalise advantages to mean 0, std 1 over the rollout
            whiten_rewards: normalise the per-token rewards to std 1 (mean kept) before GAE
            normalize_scores: divide scores by a running std and remove the running mean (Secrets of RLHF)
            score_clip: clip (normalised) scores to [-score_clip, score_clip]; None: no clipping
            missing_eos_penalty: subtracted from the score of a completion without EOS
            step_rewards: the reward source scores every step (``rewards.StepRewardSource``):
                each step's score is a reward at the token that ends it, instead of one score
                at the final token (not with ``normalize_scores`` or ``score_clip``)
            ppo_epochs: passes over each rollout
            minibatch_size: sequences per optimiser step
            temperature: sampling temperature; log-probs are recomputed from logits / T
            top_p: must be 1: the ratios are computed under the full distribution (kept for recipes that spell it)
            max_new_tokens: longest completion sampled
        """
        if kl_estimator not in ("k1", "k2", "k3"):
            raise ValueError(f"kl_estimator must be k1, k2 or k3, got {kl_estimator!r}")
        if kl_coef < 0 or cliprange <= 0 or cliprange_value <= 0 or vf_coef < 0:
            raise ValueError("kl_coef and vf_coef must be >= 0, the clip ranges > 0")
        if ppo_epochs < 1 or minibatch_size < 1 or max_new_tokens < 1:
            raise ValueError("ppo_epochs, minibatch_size and max_new_tokens must be >= 1")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if top_p != 1.0:
            # Ratios and KL are computed with the full softmax at the temperature: samples from
            # a truncated distribution would make both biased.
            raise ValueError(f"PPO samples from the full distribution its ratios are computed under: top_p must be 1, got {top_p}")
        self.kl_coef, self.kl_estimator, self.kl_target, self.kl_horizon = kl_coef, kl_estimator, kl_target, kl_horizon
        self.gamma, self.lam = gamma, lam
        self.cliprange, self.cliprange_value, self.vf_coef, self.entropy_coef = cliprange, cliprange_value, vf_coef, entropy_coef
        self.whiten_advantages, self.whiten_rewards = whiten_advantages, whiten_rewards
        self.normalize_scores, self.score_clip = normalize_scores, score_clip
        self.missing_eos_penalty = missing_eos_penalty
        if step_rewards and (normalize_scores or score_clip is not None):
            raise ValueError("step_rewards places each step's own score: normalize_scores and score_clip shape one score per completion")
        self.step_rewards = step_rewards
        self.ppo_epochs, self.minibatch_size = ppo_epochs, minibatch_size
        self.temperature, self.top_p, self.max_new_tokens = temperature, top_p, max_new_tokens
        self.kl_controller = (
            AdaptiveKLController(kl_coef, kl_target, kl_horizon) if kl_target is not None else KLController(kl_coef)
        )
        self.score_moments = RunningMoments()
        # A fixed beta of 0 weighs the KL by nothing: no reference is loaded or run.
        self.needs_reference = kl_coef > 0 or kl_target is not None
        self._rollout_samples = 0  # rows of the last rollout over every process, for the KL controller

    # -- rollout ------------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, ctx: OnlineContext, prompts) -> Experience:
        sampled = ctx.generate(prompts["prompt_ids"], self.temperature, self.top_p, self.max_new_tokens)
        batch = {k: v for k, v in sampled.batch.items() if k != "logp_index"}
        batch["logp_index"] = sampled.batch["logp_index"]
        if self.step_rewards:  # the completion's score: its steps' aggregate, for the metrics
            raw_scores, (step_scores, step_columns) = ctx.step_rewards(list(prompts["prompts"]), sampled)
            raw_scores = raw_scores.nan_to_num(0.0)  # no step, no reward
        else:
            raw_scores = ctx.reward(prompts["prompts"], sampled.completions, prompts.get("columns"))
        if torch.isnan(raw_scores).any():
            raise ValueError(f"PPO needs a score for every sample, and the reward left {int(torch.isnan(raw_scores).sum())} "
                             "out (returned None); grpo, rloo and reinforce_pp leave such samples out of the loss")
        scores = penalise_missing_eos(raw_scores, sampled.finished, self.missing_eos_penalty)

        # Statistics of the whole rollout, over every process of a data-parallel run.
        across = getattr(ctx, "sum_over_processes", None)
        old, values = ctx.policy_logps_and_values(batch, temperature=self.temperature, entropy=True)
        mask = old.mask
        if self.needs_reference:
            reference = ctx.reference_logps(batch, temperature=self.temperature)
            kl = kl_estimate(old.token_logps, reference.token_logps, self.kl_estimator) * mask  # [N, T-1]
        else:
            kl = torch.zeros_like(old.token_logps)  # beta 0: the reward has no KL term to measure
        beta = self.kl_controller.beta

        shaped = self._shape_scores(scores, update=getattr(ctx, "training", True), sum_over_processes=across)
        rewards = -beta * kl
        last = (mask.long() * torch.arange(mask.shape[1], device=mask.device)).argmax(-1)  # final token's column
        if self.step_rewards:
            rows = torch.tensor([i for i, columns in enumerate(step_columns) for _ in columns], dtype=torch.long)
            columns = torch.tensor([c for columns in step_columns for c in columns], dtype=torch.long)
            per_step = torch.tensor([v for row in step_scores for v in row], dtype=rewards.dtype)
            rewards.index_put_((rows.to(mask.device), columns.to(mask.device)), per_step.to(mask.device), accumulate=True)
            rewards[torch.arange(len(last), device=mask.device), last] += scores - raw_scores  # the missing-EOS penalty
        else:
            rewards[torch.arange(len(last), device=mask.device), last] += shaped
        if self.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False, sum_over_processes=across)
        advantages, returns = generalized_advantages(rewards, values, mask, self.gamma, self.lam)
        if self.whiten_advantages:
            advantages = masked_whiten(advantages, mask, sum_over_processes=across)

        sequence_kl = kl.sum(-1)
        mean_kl, self._rollout_samples = rollout_mean(sequence_kl, across)
        tensors = {
            **batch,
            "old_logps": old.token_logps,
            "old_values": values * mask,
            "advantages": advantages,
            "returns": returns,
            "scores": scores,
            "rlhf_reward": scores - beta * sequence_kl,
        }
        del tensors["logp_index"]
        lengths = sampled.lengths.float()
        metrics = {
            "objective/kl_coef": torch.tensor(beta),
            "objective/entropy": masked_mean(old.entropy, mask),
            "objective/scores": raw_scores.mean(),
            "objective/scores_with_penalty": scores.mean(),
            "objective/rlhf_reward": (scores - beta * sequence_kl).mean(),
            "objective/no_eos_fraction": (~sampled.finished).float().mean(),
            "objective/values": masked_mean(values, mask),
            "response_length": lengths.mean(),
        }
        if self.needs_reference:
            metrics["objective/kl"] = mean_kl  # the whole rollout's, the adaptive controller's input
        return Experience(tensors, list(prompts["prompts"]), sampled.completions, scores, {k: v.detach().float() for k, v in metrics.items()})

    def _shape_scores(self, scores: torch.Tensor, update: bool = True, sum_over_processes: SumOverProcesses | None = None) -> torch.Tensor:
        if self.normalize_scores:
            if update:  # validation rollouts do not move the statistics
                self.score_moments.update(scores, sum_over_processes)
            scores = (scores - self.score_moments.mean) / self.score_moments.std
        if self.score_clip is not None:
            scores = scores.clamp(-self.score_clip, self.score_clip)
        return scores

    # -- optimisation -------------------------------------------------------------------------
    def minibatches(self, experience: Experience):
        for _ in range(self.ppo_epochs):
            for rows in experience.minibatch_rows(self.minibatch_size):
                yield experience.minibatch(rows)

    def updates_per_rollout(self, rollout_size: int) -> int:
        return self.ppo_epochs * math.ceil(rollout_size / self.minibatch_size)

    def loss(self, ctx: OnlineContext, batch) -> LossOutput:
        # One backbone forward when the value head sits on the policy's backbone.
        new, values = ctx.policy_logps_and_values(batch, temperature=self.temperature, entropy=True)
        mask = new.mask
        # Sums over this piece divided by the whole minibatch's tokens: exact under micro-batching.
        tokens = batch["loss_tokens"].clamp(min=1)
        policy_losses, policy_clipped = clipped_policy_loss(new.token_logps, batch["old_logps"], batch["advantages"], self.cliprange)
        value_losses, value_clipped = clipped_value_loss(values, batch["old_values"], batch["returns"], self.cliprange_value)
        policy_loss = masked_sum(policy_losses, mask) / tokens
        value_loss = masked_sum(value_losses, mask) / tokens
        entropy = masked_sum(new.entropy, mask) / tokens
        loss = policy_loss + self.vf_coef * value_loss - self.entropy_coef * entropy
        log_ratio = (new.token_logps - batch["old_logps"]).detach()
        return LossOutput(
            loss,
            {
                "loss/policy": masked_mean(policy_losses.detach(), mask),
                "loss/value": masked_mean(value_losses.detach(), mask),
                "policy/entropy": masked_mean(new.entropy.detach(), mask),
                "policy/clipfrac": masked_mean(policy_clipped.float(), mask),
                "policy/approxkl": masked_mean(0.5 * log_ratio**2, mask),
                "policy/ratio": masked_mean(log_ratio.exp(), mask),
                "value/clipfrac": masked_mean(value_clipped.float(), mask),
            },
        )

    def after_updates(self, experience: Experience) -> None:
        # Ziegler et al. update beta once per batch with the batch's KL (per sequence).
        if self.needs_reference:
            self.kl_controller.update(float(experience.metrics["objective/kl"]), self._rollout_samples)

    def state_dict(self) -> dict:
        return {"kl_controller": self.kl_controller.state_dict(), "score_moments": vars(self.score_moments).copy()}

    def load_state_dict(self, state: dict) -> None:
        self.kl_controller.load_state_dict(state["kl_controller"])
        vars(self.score_moments).update(state.get("score_moments", {}))

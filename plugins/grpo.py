"""Group Relative Policy Optimization and its variants: GRPO, Dr. GRPO, DAPO, GSPO, CISPO."""

from __future__ import annotations

import math
from typing import Literal

import torch

from lightning_rlhf import Experience, LossOutput, OnlineAlgorithm, OnlineContext, register_algorithm
from lightning_rlhf.algorithm import passes_over, passes_updates
from lightning_rlhf.ops import completion_index, masked_mean
from lightning_rlhf.rollout import concat_rollouts

LossType = Literal["grpo", "dr_grpo", "dapo", "gspo", "cispo"]


@register_algorithm("grpo")
class GRPO(OnlineAlgorithm):
    """GRPO: G samples per prompt, each scored against its group; no critic.

    Rollout (no grad), per prompt x: G completions o_1..o_G at ``temperature``, rewards
    r_1..r_G, and one advantage per completion, the same for all its tokens:

        A_i = r_i - mean(r)                       (Dr. GRPO: scale_rewards false)
        A_i = (r_i - mean(r)) / (std(r) + 1e-4)   (GRPO, Shao et al. 2024, arXiv:2402.03300, eq. 3)

    Loss, with the per-token ratio rho_it = pi(o_it) / pi_old(o_it) and clip range
    [1 - epsilon, 1 + epsilon_high]:

        grpo     l_it = -min(rho_it A_i, clip(rho_it) A_i) + beta k3_it;
                 L = mean_i ( mean_t l_it )                         (sequence mean, then batch mean)
        dr_grpo  the same l_it; L = sum_it l_it / (N * max_new_tokens)  (Liu et al. 2025,
                 arXiv:2503.20783: no length normalisation, no std division)
        dapo     the same l_it, epsilon_high 0.28 by default (clip-higher); L = sum_it l_it / sum_i |o_i|
                 (token mean over the batch); dynamic sampling: groups whose rewards are all
                 equal teach nothing and are left out, and more prompts are drawn to refill
                 the batch (up to ``refill_rounds`` draws of as many prompts as are missing;
                 flat groups make up what is still missing, with advantage 0, so every
                 rollout trains on B groups); ``overlong_buffer`` adds the soft overlong
                 penalty (Yu et al. 2025, arXiv:2503.14476, sec. 3.2 and eq. 13)
        gspo     s_i = exp(mean_t log rho_it) (sequence-level, length-normalised);
                 l_i = -min(s_i A_i, clip(s_i) A_i) + beta mean_t k3_it; L = mean_i l_i
                 (Zheng et al. 2025, arXiv:2507.18071, eq. 5-7; the paper clips sequence
                 ratios at epsilon 3e-4 / epsilon_high 4e-4, far tighter than token ratios)
        cispo    l_it = -sg(clip(rho_it)) A_i log pi(o_it) + beta k3_it; L = sum_it l_it / sum_i |o_i|
                 (MiniMax 2025, arXiv:2506.13585, eq. 4: the clipped, stop-gradient ratio weighs the
                 log-probability, so no token's gradient is cut off)

    k3_it = pi_ref/pi - log(pi_ref/pi) - 1 (Schulman's estimator, as in the GRPO paper); with
    ``beta = 0`` no reference model is loaded. Several optimiser steps per rollout
    (``minibatch_size`` rows each, ``num_iterations`` passes) use the rollout's log-probs as
    pi_old; a rollout used for exactly one step uses pi_old = pi (no extra forward).
    Minibatches and micro-batches hold whole groups. ``mask_truncated_completions``
    leaves completions cut off without EOS out of the loss.

    Per-token advantages instead of A_i: ``process_rewards`` (a fixed PRM's step rewards,
    :func:`process_advantages`) or ``online_process_rewards`` (PRIME: an implicit PRM that
    learns from the outcome on every rollout, :func:`prime_advantages`).
    """

    rows_apart_in_loss = True  # advantages come with the rows; the loss divides by the minibatch's counts

    #: the ``loss_type`` values this class accepts, and the smallest group it can learn from
    loss_types: tuple[str, ...] = ("grpo", "dr_grpo", "dapo", "gspo", "cispo")
    min_generations: int = 2
    #: beta weighs a k3 term of the loss (GRPO); False: a k1 penalty in the reward (RLOO, REINFORCE++)
    kl_in_loss: bool = True

    def __init__(
        self,
        num_generations: int = 4,
        loss_type: LossType = "grpo",
        beta: float = 0.0,
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        scale_rewards: bool | None = None,
        num_iterations: int = 1,
        minibatch_size: int | None = None,
        mask_truncated_completions: bool = False,
        overlong_buffer: int | None = None,
        overlong_penalty: float = 1.0,
        refill_rounds: int | None = None,
        process_rewards: bool = False,
        online_process_rewards: bool = False,
        process_weight: float = 1.0,
        temperature: float = 1.0,
        max_new_tokens: int = 48,
    ):
        """
        Args:
            num_generations: G, completions sampled per prompt (>= 2)
            loss_type: grpo, dr_grpo, dapo, gspo or cispo (see the class docstring)
            beta: weight of the k3 KL term to the reference; 0 loads no reference model
            epsilon: lower clip range (and upper, unless ``epsilon_high`` is set)
            epsilon_high: upper clip range; default ``epsilon``, 0.28 for dapo, 5.0 for cispo
            scale_rewards: divide advantages by the group's std; default true, false for dr_grpo
            num_iterations: passes over each rollout
            minibatch_size: sampled rows per optimiser step (whole groups); default: the rollout
            mask_truncated_completions: leave completions without EOS out of the loss
            overlong_buffer: DAPO's soft overlong penalty over the last this many tokens of
                ``max_new_tokens``; None: none
            overlong_penalty: the penalty at ``max_new_tokens`` (it grows linearly over the buffer)
            refill_rounds: dapo: draws of more prompts to replace flat groups (0: only leave
                them out, the batch shrinks); default 3 for dapo; other loss types keep every group
            process_rewards: the reward source scores every step (a process reward model,
                ``rewards.StepRewardSource``); each step's reward is normalised over every step
                of its group, and a token's advantage is the sum of the normalised rewards of
                the steps that end at or after it (GRPO with process supervision, Shao et al.
                2024 sec. 4.1.3); grpo, dr_grpo, cispo and dapo without refill
            online_process_rewards: PRIME (Cui et al. 2025): the reward source is an outcome
                reward with an implicit PRM that learns from it on every rollout
                (``rewards.OnlineImplicitPRM``); the PRM is updated on the rollout first, then
                gives each token a process reward, and a token's advantage adds the outcome's
                and the process rewards' leave-one-out advantages (:func:`prime_advantages`);
                the same loss types as ``process_rewards``, no std division
            process_weight: w, the process advantage's weight in ``online_process_rewards``'
                sum (1: PRIME's plain sum)
            temperature: sampling temperature; log-probs are computed from logits / T
            max_new_tokens: longest completion sampled
        """
        if num_generations < self.min_generations:
            raise ValueError(f"num_generations must be >= {self.min_generations} (a group needs someone to compare with), got {num_generations}")
        if loss_type not in self.loss_types:
            raise ValueError(f"loss_type must be one of {', '.join(self.loss_types)}, got {loss_type!r}")
        if beta < 0 or epsilon <= 0 or (epsilon_high is not None and epsilon_high <= 0):
            raise ValueError("beta must be >= 0 and the clip ranges > 0")
        if num_iterations < 1 or (minibatch_size is not None and minibatch_size < 1) or max_new_tokens < 1 or temperature <= 0:
            raise ValueError("num_iterations, minibatch_size and max_new_tokens must be >= 1, temperature > 0")
        if overlong_buffer is not None and not 0 < overlong_buffer < max_new_tokens:
            raise ValueError(f"overlong_buffer must be in (0, max_new_tokens), got {overlong_buffer}")
        self.num_generations, self.loss_type, self.beta = num_generations, loss_type, beta
        self.epsilon, self.epsilon_high, self.scale_rewards = epsilon, epsilon_high, scale_rewards
        self.num_iterations, self.minibatch_size = num_iterations, minibatch_size
        self.mask_truncated_completions = mask_truncated_completions
        self.overlong_buffer, self.overlong_penalty = overlong_buffer, overlong_penalty
        if refill_rounds is not None and (refill_rounds < 0 or (refill_rounds > 0 and loss_type != "dapo")):
            raise ValueError(f"refill_rounds is dapo's dynamic sampling: >= 0, and only with loss_type dapo, got {refill_rounds}")
        per_token = process_rewards or online_process_rewards
        self.refill_rounds = (3 if loss_type == "dapo" and not per_token else 0) if refill_rounds is None else refill_rounds
        if process_rewards and (loss_type not in ("grpo", "dr_grpo", "dapo", "cispo") or self.refill_rounds):
            raise ValueError("process_rewards gives each token its own advantage: loss_type grpo, dr_grpo, cispo or dapo "
                             f"without refill (refill_rounds: 0), got {loss_type!r} with refill_rounds {self.refill_rounds}")
        self.process_rewards = process_rewards
        if online_process_rewards and (process_rewards or loss_type not in ("grpo", "dr_grpo", "dapo", "cispo")
                                       or self.refill_rounds or scale_rewards):
            raise ValueError("online_process_rewards (PRIME) gives each token its own leave-one-out advantage: loss_type grpo, "
                             "dr_grpo, cispo or dapo without refill, with neither process_rewards nor scale_rewards, got "
                             f"{loss_type!r}, refill_rounds {self.refill_rounds}, process_rewards {process_rewards}, "
                             f"scale_rewards {scale_rewards}")
        self.online_process_rewards, self.process_weight = online_process_rewards, process_weight
        self.temperature, self.max_new_tokens = temperature, max_new_tokens
        # What the module reads: G rows per prompt, and a reference only when the KL term is on.
        self.samples_per_prompt = num_generations
        self.needs_reference = beta > 0

    # -- the variants' settings ---------------------------------------------------------------
    @property
    def upper_clip(self) -> float:
        default = {"dapo": 0.28, "cispo": 5.0}.get(self.loss_type, self.epsilon)
        return default if self.epsilon_high is None else self.epsilon_high

    @property
    def divides_by_std(self) -> bool:
        return self.loss_type != "dr_grpo" if self.scale_rewards is None else self.scale_rewards

    # -- rollout ------------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, ctx: OnlineContext, prompts) -> Experience:
        g = self.num_generations
        pieces = [self._sample_groups(ctx, prompts)]
        groups = len(prompts["prompts"])
        refill_prompts = 0
        if self.refill_rounds:  # DAPO's dynamic sampling: more prompts until the batch is informative
            informative = self._informative_groups(pieces[0])
            for draw in range(1, self.refill_rounds + 1):
                if informative >= groups:
                    break
                more = ctx.more_prompts(groups - informative, draw)
                refill_prompts += len(more["prompts"])
                pieces.append(self._sample_groups(ctx, more))
                informative += self._informative_groups(pieces[-1])
        sampled = pieces[0][0] if len(pieces) == 1 else concat_rollouts([piece[0] for piece in pieces])
        texts, columns = [t for piece in pieces for t in piece[1]], [c for piece in pieces for c in piece[2]]
        scores = torch.cat([piece[3] for piece in pieces])
        rewards = self._rewards(scores, sampled)
        full = sampled.batch
        mask = full["completion_mask"][:, 1:]
        # the engine's log-probs of what it drew, where the module keeps them (online.sampler_logps)
        policy_full = sampled.sampler_logps
        log_ratio = None
        if self.beta > 0 and not self.kl_in_loss:  # the KL penalty goes into the reward
            if policy_full is None:
                policy_full = ctx.policy_logps(full, temperature=self.temperature).token_logps
            log_ratio = (policy_full - ctx.reference_logps(full, temperature=self.temperature).token_logps) * mask
        # A reward may leave a sample out (None, read as NaN): it gets no advantage and no
        # loss, and its group's statistics are taken over the others.
        scored = ~torch.isnan(rewards)
        if self.process_rewards:
            step_scores, step_columns = pieces[0][4]  # no refill with process rewards: one piece
            advantages = process_advantages(step_scores, step_columns, g, mask.shape[1], self.divides_by_std).to(mask.device) * mask
        elif self.online_process_rewards:  # PRIME: the PRM learns from this rollout's outcomes, then scores its tokens
            token_rewards, prm_metrics = ctx.online_process_rewards(sampled, scores)
            advantages = prime_advantages(rewards, token_rewards, mask, g, self.process_weight)
        else:
            advantages = self.advantages(rewards, mask.bool() & scored[:, None], log_ratio, getattr(ctx, "sum_over_processes", None))
        flat_groups = group_is_flat(rewards, g)
        in_batch = torch.ones_like(scored)
        if self.refill_rounds:  # B of the refilled pool's groups
            in_batch = chosen_groups(flat_groups, groups).repeat_interleave(g)
        keep = scored & in_batch
        if self.loss_type == "dapo" and not self.refill_rounds:
            keep &= ~flat_groups.repeat_interleave(g)  # all-equal groups teach nothing
        if self.mask_truncated_completions:
            keep &= sampled.finished

        # A sample left out of the loss stays in the batch with no completion token to score:
        # every process then holds B groups, cuts them into as many minibatches as the others
        # and steps as often (one that stepped less would leave the others waiting in the
        # gradient all-reduce).
        rows = in_batch.nonzero().flatten()
        tensors = {k: v.index_select(0, rows) for k, v in sampled.batch.items() if k != "logp_index"}
        tensors["completion_mask"] = tensors["completion_mask"] * keep.index_select(0, rows)[:, None].to(tensors["completion_mask"].dtype)
        batch = {**tensors, "logp_index": completion_index(tensors["completion_mask"])}
        tensors["advantages"] = advantages.index_select(0, rows)
        tensors["group_index"] = torch.arange(len(texts) // g, device=rows.device).repeat_interleave(g).index_select(0, rows)
        if self.updates_per_rollout(groups * g) > 1:  # pi_old differs from pi after the first step
            tensors["old_logps"] = (policy_full.index_select(0, rows) if policy_full is not None
                                    else ctx.policy_logps(batch, temperature=self.temperature).token_logps)
        if self.beta > 0 and self.kl_in_loss:
            tensors["ref_logps"] = ctx.reference_logps(batch, temperature=self.temperature).token_logps
        metrics = {
            "objective/scores": scores.nanmean(),
            "objective/rewards": rewards.nanmean(),
            "objective/unscored_fraction": (~scored).float().mean(),
            "objective/kept_fraction": keep.float().mean(),
            "objective/no_eos_fraction": (~sampled.finished).float().mean(),
            "response_length": sampled.lengths.float().mean(),
        }
        if g > 1:  # a group of one has no spread
            metrics["objective/reward_std_in_group"] = group_moments(rewards, g)[2].mean()
            metrics["objective/zero_variance_groups"] = flat_groups.float().mean()
        if self.online_process_rewards:
            metrics.update({f"objective/{k}": v for k, v in prm_metrics.items()})
            metrics["objective/process_reward_sum"] = (token_rewards * mask).sum(-1).mean()
        if self.refill_rounds:
            metrics["objective/refill_prompts"] = torch.tensor(float(refill_prompts))
        if log_ratio is not None:
            metrics["objective/kl"] = log_ratio.sum(-1).mean()  # k1 per completion, as in the reward
        kept = rows.tolist()
        return Experience(tensors, [texts[i] for i in kept], [sampled.completions[i] for i in kept], scores.index_select(0, rows),
                          {k: v.detach().float() for k, v in metrics.items()})

    def _sample_groups(self, ctx: OnlineContext, prompts) -> tuple:
        """G completions of every prompt of a batch, scored: (rollout, prompt texts, columns, scores,
        and with ``process_rewards`` each completion's step scores and their columns)."""
        g = self.num_generations
        sampled = ctx.generate(prompts["prompt_ids"], self.temperature, 1.0, self.max_new_tokens, n=g)
        texts = [text for text in prompts["prompts"] for _ in range(g)]
        columns = [row for row in prompts.get("columns", [{}] * len(prompts["prompts"])) for _ in range(g)]
        if self.process_rewards:  # the completion's score is its steps' aggregate; the steps are kept
            scores, steps = ctx.step_rewards(texts, sampled)
            return sampled, texts, columns, scores.float(), steps
        return sampled, texts, columns, ctx.reward(texts, sampled.completions, columns).float(), None

    def _informative_groups(self, piece: tuple) -> int:
        sampled, _, _, scores, _ = piece
        return int((~group_is_flat(self._rewards(scores, sampled), self.num_generations)).sum())

    def _rewards(self, scores: torch.Tensor, sampled) -> torch.Tensor:
        if self.overlong_buffer is None:
            return scores
        return scores + overlong_penalty(sampled.lengths, self.max_new_tokens, self.overlong_buffer, self.overlong_penalty)

    def advantages(self, rewards: torch.Tensor, mask: torch.Tensor, log_ratio: torch.Tensor | None, sum_over_processes=None) -> torch.Tensor:
        """``[N]`` (one per completion) or ``[N, T-1]`` (per token) advantages from the rewards
        ``[N]`` (groups of ``num_generations`` contiguous rows; NaN: left out, ``mask`` is
        off for its tokens); ``log_ratio``: per-token ``log pi - log pi_ref`` when the KL
        penalty goes into the reward."""
        return group_advantages(rewards, self.num_generations, self.divides_by_std)

    # -- optimisation -------------------------------------------------------------------------
    def minibatches(self, experience: Experience):
        return passes_over(experience, self.num_iterations, self.minibatch_size)

    def updates_per_rollout(self, rollout_size: int) -> int:
        return passes_updates(rollout_size, self.num_iterations, self.minibatch_size)

    def loss(self, ctx: OnlineContext, batch) -> LossOutput:
        new = ctx.policy_logps(batch, temperature=self.temperature)
        mask = new.mask.to(new.token_logps.dtype)
        logps = new.token_logps
        old = batch.get("old_logps", logps.detach())
        advantages = batch["advantages"].to(logps.dtype)
        if advantages.ndim == 1:
            advantages = advantages[:, None]  # one per completion, the same for all its tokens
        log_ratio = (logps - old) * mask
        low, high = 1 - self.epsilon, 1 + self.upper_clip
        lengths = mask.sum(-1).clamp(min=1)

        if self.loss_type == "gspo":
            sequence_ratio = torch.exp(log_ratio.sum(-1) / lengths)  # [n]
            a = advantages.squeeze(-1)
            scored = (mask.sum(-1) > 0).to(logps.dtype)  # a row left out of the loss has no token
            per_sequence = -torch.minimum(sequence_ratio * a, sequence_ratio.clamp(low, high) * a) * scored
            clipped = masked_mean(((sequence_ratio < low) | (sequence_ratio > high)).float(), scored)
            token_loss = None
        elif self.loss_type == "cispo":
            ratio = torch.exp(log_ratio)
            token_loss = -ratio.clamp(low, high).detach() * advantages * logps
            clipped = masked_mean(((ratio < low) | (ratio > high)).float(), mask)
        else:
            ratio = torch.exp(log_ratio)
            token_loss = -torch.minimum(ratio * advantages, ratio.clamp(low, high) * advantages)
            clipped = masked_mean(((ratio < low) | (ratio > high)).float(), mask)

        metrics = {"clip_fraction": clipped.detach()}
        if self.beta > 0 and self.kl_in_loss:
            delta = (batch["ref_logps"] - logps) * mask
            kl = (torch.exp(delta) - delta - 1) * mask  # k3, >= 0
            metrics["kl"] = (kl.sum(-1) / lengths).mean().detach()
            if token_loss is None:
                per_sequence = per_sequence + self.beta * kl.sum(-1) / lengths
            else:
                token_loss = token_loss + self.beta * kl

        # Divided by the whole minibatch's counts (loss_rows, loss_tokens), so that the
        # module's micro-batch losses add up to the minibatch's.
        rows = batch["loss_rows"].to(logps.dtype).clamp(min=1)  # 0 when every sample was left out
        if token_loss is None:  # gspo
            loss = per_sequence.sum() / rows
        elif self.loss_type == "grpo":
            loss = ((token_loss * mask).sum(-1) / lengths).sum() / rows
        elif self.loss_type == "dr_grpo":
            loss = (token_loss * mask).sum() / (rows * self.max_new_tokens)
        elif self.loss_type == "rloo":  # REINFORCE on the sequence: its token losses summed
            loss = (token_loss * mask).sum() / rows
        else:  # dapo, cispo, reinforce_pp: the token mean over the batch
            loss = (token_loss * mask).sum() / batch["loss_tokens"].to(logps.dtype).clamp(min=1)
        return LossOutput(loss, metrics)


def group_advantages(rewards: torch.Tensor, group_size: int, divide_by_std: bool) -> torch.Tensor:
    """``[N]``: each reward against its group's mean (rows of a group are contiguous),
    divided by the group's std (+ 1e-4) when asked. NaN rewards (samples left out) take no
    part in their group's mean and std, and get advantage 0."""
    _, centred, std = group_moments(rewards, group_size)
    return (centred / (std[:, None] + 1e-4) if divide_by_std else centred).flatten()


def process_advantages(step_scores: list[list[float]], step_columns: list[list[int]], group_size: int, width: int,
                       divide_by_std: bool) -> torch.Tensor:
    """``[N, width]`` per-token advantages from step rewards (GRPO with process supervision,
    Shao et al. 2024, arXiv:2402.03300, sec. 4.1.3): every step reward of a group is
    normalised by the mean (and std, + 1e-4) of all the group's step rewards,
    ``r~ = (r - mean) / std``, and token t's advantage is the sum of the normalised rewards
    of the steps ending at or after it: ``A_t = sum_{j: end(j) >= t} r~_j``. Row i's step j
    ends at column ``step_columns[i][j]`` (aligned with ``policy_logps``); tokens after the
    last step get 0."""
    dense = torch.zeros(len(step_scores), width, dtype=torch.float32)
    for start in range(0, len(step_scores), group_size):
        rows = range(start, start + group_size)
        values = torch.tensor([v for i in rows for v in step_scores[i]], dtype=torch.float32)
        if len(values) == 0:
            continue
        mean = values.mean()
        std = values.std() if len(values) > 1 else torch.tensor(0.0)
        for i in rows:
            for value, column in zip(step_scores[i], step_columns[i], strict=True):
                normalised = value - mean
                dense[i, column] += normalised / (std + 1e-4) if divide_by_std else normalised
    return dense.flip(-1).cumsum(-1).flip(-1)


def prime_advantages(outcomes: torch.Tensor, token_rewards: torch.Tensor, mask: torch.Tensor, group_size: int,
                     process_weight: float = 1.0) -> torch.Tensor:
    """``[N, T]`` PRIME advantages (Cui et al. 2025, arXiv:2502.01456, sec. 3.3, RLOO on both
    rewards, gamma = 1), from the outcome rewards ``[N]`` (NaN: left out, advantage 0) and
    the token process rewards ``[N, T]`` (0 where ``mask`` is), in groups of ``group_size``
    contiguous rows of K samples:

        A_it = [r_i - 1/(K-1) sum_{j != i} r_j]                           (outcome, leave-one-out)
             + w * sum_{s >= t} [p_is - 1/(K-1) sum_{j != i} mean_u p_ju]  (process: the return of
                                                                            the later tokens' rewards,
                                                                            each less a leave-one-out
                                                                            baseline)

    with mean_u p_ju the mean token reward of sample j; the outcome's advantage is the return
    of a reward on the last token, the same for every token. ``w = process_weight``, 1 in
    PRIME (its plain sum). Leave-one-out means are over the group's scored samples."""
    mask = mask.to(token_rewards.dtype)
    scored = ~torch.isnan(outcomes)
    mean_process = (token_rewards * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    process_baseline = leave_one_out_means(torch.where(scored, mean_process, torch.full_like(mean_process, torch.nan)), group_size)
    outcome = outcomes - leave_one_out_means(outcomes, group_size)
    per_token = (token_rewards - process_baseline[:, None]) * mask
    returns = per_token.flip(-1).cumsum(-1).flip(-1)
    advantages = (outcome[:, None] + process_weight * returns) * mask
    return torch.where(scored[:, None], advantages, torch.zeros_like(advantages))


def leave_one_out_means(values: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[N]``: per value, the mean of the other scored (non-NaN) values of its group of
    ``group_size`` contiguous rows (0 when there is none)."""
    grouped = values.view(-1, group_size)
    scored = ~torch.isnan(grouped)
    present = torch.where(scored, grouped, torch.zeros_like(grouped))
    others = present.sum(-1, keepdim=True) - present
    count = scored.sum(-1, keepdim=True) - scored.to(torch.long)
    return (others / count.clamp(min=1)).flatten()


def group_moments(rewards: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per group of ``group_size`` contiguous rewards, over its scored (non-NaN) members:
    ``(mean [N/G], reward - mean [N/G, G] (0 where unscored), sample std [N/G])``."""
    grouped = rewards.view(-1, group_size)
    scored = ~torch.isnan(grouped)
    count = scored.sum(-1)
    mean = torch.where(scored, grouped, torch.zeros_like(grouped)).sum(-1) / count.clamp(min=1)
    centred = torch.where(scored, grouped - mean[:, None], torch.zeros_like(grouped))
    std = torch.sqrt((centred**2).sum(-1) / (count - 1).clamp(min=1))
    return mean, centred, std


def chosen_groups(flat: torch.Tensor, count: int) -> torch.Tensor:
    """``[groups]``: the ``count`` groups a refilled rollout trains on: the informative
    (not flat) ones first, in order, then flat ones in order to make up the count when too
    few were found. A flat group's advantages are all 0: it adds no policy gradient, but
    every rollout keeps the same size (under data parallelism, the same number of
    optimiser steps on every process)."""
    order = torch.cat([(~flat).nonzero().flatten(), flat.nonzero().flatten()])[:count]
    chosen = torch.zeros_like(flat)
    chosen[order] = True
    return chosen


def group_is_flat(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[N / G]``: the group's scored rewards are all equal (or it has fewer than two)."""
    grouped = rewards.view(-1, group_size)
    scored = ~torch.isnan(grouped)
    high = torch.where(scored, grouped, torch.full_like(grouped, -math.inf)).max(-1).values
    low = torch.where(scored, grouped, torch.full_like(grouped, math.inf)).min(-1).values
    return (high == low) | (scored.sum(-1) < 2)


def overlong_penalty(lengths: torch.Tensor, max_new_tokens: int, buffer: int, penalty: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment: 0 up to ``max_new_tokens - buffer`` tokens, then
    falling linearly to ``-penalty`` at ``max_new_tokens`` (eq. 13 of Yu et al. 2025)."""
    start = max_new_tokens - buffer
    return -penalty * ((lengths.float() - start) / buffer).clamp(0.0, 1.0)

"""Rollouts for online algorithms: sample completions from the policy, batched with a KV
cache, and lay them out as a training batch.

Completions come from the rollout engine (``lightning_rlhf.engine``: explicit sampling
settings, KV cache, only the chosen ids kept). Each completion keeps exactly the tokens
sampled, EOS included when the policy wrote one, and the batch is then re-laid right-padded
(``prompt_ids + completion_ids``, as every offline batch) so the same chunked
log-probability path scores it under the policy, the reference and the critic.

Scoring is on *decoded text* (``RewardSource.score(prompts, completions)``), so a reward
model with its own tokenizer works. A completion that hit ``max_new_tokens`` without
EOS is truncated text; ``missing_eos_penalty`` is subtracted from its score (Huang et
al. 2024, "The N+ implementation details of RLHF with PPO", detail 4 and TRL's
``missing_eos_penalty``), so the policy learns to finish its answers.
"""

from __future__ import annotations

import bisect
import itertools

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from lightning_rlhf.data.collate import pad_sequences
from lightning_rlhf.engine import RolloutEngine, SamplingSettings, pad_token_id
from lightning_rlhf.ops import completion_index


@dataclass
class Rollout:
    """Sampled completions of a batch of prompts, in the training layout."""

    batch: dict[str, Tensor]
    """input_ids, attention_mask, completion_mask [N, T] (right-padded), logp_index, and
    group_index [N]: which prompt a row samples (rows of one prompt are consecutive)"""
    completions: list[str]
    """decoded completions: no prompt, no special tokens"""
    finished: Tensor
    """[N] bool: the policy wrote EOS within max_new_tokens"""
    lengths: Tensor
    """[N] completion tokens, EOS counted"""
    sampler_logps: Tensor | None = None
    """[N, T-1] (aligned with ``policy_logps``: column c scores token c + 1) the log-probability
    each completion token was drawn with, from the engine (``return_logps``); 0 off the
    completions. None unless asked for"""


@torch.no_grad()
def generate_rollout(
    engine: RolloutEngine,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: Sequence[Sequence[int]],
    settings: SamplingSettings,
    device: torch.device,
    n: int = 1,
    return_logps: bool = False,
) -> Rollout:
    """Sample ``n`` completions of each prompt (token-id lists, BOS included) through
    ``engine``: rows ``i * n`` to ``i * n + n - 1`` are prompt i's. ``return_logps``: keep
    the engine's log-probability of each sampled token (``Rollout.sampler_logps``).

    Sampling uses the caller's RNG (seeded by the trainer). A plugin that scores the tokens
    (importance ratios, KL) does so with the full softmax at ``settings.temperature``, and
    must sample from that distribution: temperature only, no top-p or top-k (PPO refuses
    anything else).
    """
    # the keyword only where asked for: an engine of one's own may not take it
    groups = engine.generate(prompt_ids, n, settings, **({"return_logps": True} if return_logps else {}))
    if len(groups) != len(prompt_ids) or any(len(group) != n for group in groups):
        raise ValueError(f"{type(engine).__name__}.generate returned {[len(g) for g in groups]} samples for "
                         f"{len(prompt_ids)} prompts, n = {n}")
    rows = [(list(prompt), sample) for prompt, group in zip(prompt_ids, groups) for sample in group]
    batch = pad_sequences([(prompt, sample.token_ids) for prompt, sample in rows], pad_token_id(tokenizer))
    batch["group_index"] = torch.arange(len(prompt_ids)).repeat_interleave(n)
    sampler_logps = None
    if return_logps:
        sampler_logps = torch.zeros(batch["input_ids"].shape[0], batch["input_ids"].shape[1] - 1)
        for i, (prompt, sample) in enumerate(rows):
            if sample.logps is None or len(sample.logps) != len(sample.token_ids):
                raise ValueError(f"{type(engine).__name__}.generate(return_logps=True) gave no log-probability for "
                                 f"each sampled token")
            # completion token j sits at position len(prompt) + j, scored by column len(prompt) + j - 1
            # (with no prompt, the first token has no column: nothing predicts it)
            values, start = torch.tensor(sample.logps), len(prompt) - 1
            if start < 0:
                values, start = values[1:], 0
            sampler_logps[i, start : start + len(values)] = values
        sampler_logps = sampler_logps.to(device)
    return Rollout(
        batch={k: v.to(device) for k, v in batch.items()},
        completions=[sample.text for _, sample in rows],
        finished=torch.tensor([sample.finished for _, sample in rows], dtype=torch.bool, device=device),
        lengths=torch.tensor([sample.length for _, sample in rows], dtype=torch.long, device=device),
        sampler_logps=sampler_logps,
    )


def concat_rollouts(rollouts: Sequence[Rollout]) -> Rollout:
    """Several rollouts as one (rows in order), each batch tensor right-padded to the widest.

    The padding is 0 in every tensor: masks are 0 there, and the token id under a mask is
    never read (a right-padded row's real tokens cannot attend to what follows them). Group
    numbers go on from one rollout to the next."""
    width = max(r.batch["input_ids"].shape[1] for r in rollouts)
    keys = [k for k in rollouts[0].batch if k not in ("logp_index", "group_index")]
    batch = {k: torch.cat([torch.nn.functional.pad(r.batch[k], (0, width - r.batch[k].shape[1])) for r in rollouts]) for k in keys}
    batch["logp_index"] = completion_index(batch["completion_mask"])
    if all("group_index" in r.batch for r in rollouts):
        offsets = itertools.accumulate([int(r.batch["group_index"].max()) + 1 for r in rollouts[:-1]], initial=0)
        batch["group_index"] = torch.cat([r.batch["group_index"] + offset for r, offset in zip(rollouts, offsets)])
    sampler_logps = None
    if all(r.sampler_logps is not None for r in rollouts):
        sampler_logps = torch.cat([torch.nn.functional.pad(r.sampler_logps, (0, width - 1 - r.sampler_logps.shape[1])) for r in rollouts])
    return Rollout(batch, [c for r in rollouts for c in r.completions],
                   torch.cat([r.finished for r in rollouts]), torch.cat([r.lengths for r in rollouts]), sampler_logps)


def penalise_missing_eos(scores: Tensor, finished: Tensor, penalty: float) -> Tensor:
    """``score - penalty`` for every completion cut off at ``max_new_tokens``."""
    return scores - penalty * (~finished).to(scores.dtype)


def step_columns(tokenizer, rollout: Rollout, step_counts: Sequence[int], separator: str) -> list[list[int]]:
    """Per completion, the column (aligned with ``policy_logps``: column c scores token
    c + 1) of the sampled token that writes the last character of each of its first
    ``step_counts[i]`` steps (``data.stepwise.split_steps``, separator included), where a
    per-step reward lands. Characters are matched to tokens by decoding the sampled tokens
    one at a time."""
    from lightning_rlhf.data.stepwise import split_steps

    columns = []
    for i, (completion, count) in enumerate(zip(rollout.completions, step_counts, strict=True)):
        in_completion = rollout.batch["completion_mask"][i].nonzero().flatten()
        if count == 0 or len(in_completion) == 0:
            columns.append([])
            continue
        start = int(in_completion[0])
        token_ends = list(itertools.accumulate(len(tokenizer.decode([t], skip_special_tokens=True))
                                               for t in rollout.batch["input_ids"][i, in_completion].tolist()))
        steps = split_steps(completion, separator)
        char_ends = list(itertools.accumulate(len(step) + len(separator) for step in steps))
        char_ends[-1] -= len(separator)  # the last step has no separator after it
        tokens = [min(bisect.bisect_right(token_ends, end - 1), len(token_ends) - 1) for end in char_ends[:count]]
        columns.append([start + token - 1 for token in tokens])
    return columns

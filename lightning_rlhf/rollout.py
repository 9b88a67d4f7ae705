"""Rollouts for online algorithms: sample completions from the policy, batched with a KV
cache, and lay them out as a training batch.

Prompts are left-padded for generation (every row continues from the same column) and
decoded with Hugging Face ``generate`` (KV cache on, only the chosen ids kept, never a
``[batch, time, vocab]`` tensor). Each completion keeps exactly the tokens sampled, EOS
included when the policy wrote one, and the batch is then re-laid right-padded
(``prompt_ids + completion_ids``, as every offline batch) so the same chunked
log-probability path scores it under the policy, the reference and the critic.

Scoring is on *decoded text* (``RewardSource.score(prompts, completions)``), so a reward
model with its own tokenizer works. A completion that hit ``max_new_tokens`` without
EOS is truncated text; ``missing_eos_penalty`` is subtracted from its score (Huang et
al. 2024, "The N+ implementation details of RLHF with PPO", detail 4 and TRL's
``missing_eos_penalty``), so the policy learns to finish its answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import GenerationConfig, PreTrainedTokenizerBase

from lightning_rlhf.data.collate import pad_sequences
from lightning_rlhf.generation import _eos_ids, _left_pad, _to_sample


@dataclass
class Rollout:
    """Sampled completions of a batch of prompts, in the training layout."""

    batch: dict[str, Tensor]
    """input_ids, attention_mask, completion_mask [N, T] (right-padded), logp_index"""
    completions: list[str]
    """decoded completions: no prompt, no special tokens"""
    finished: Tensor
    """[N] bool: the policy wrote EOS within max_new_tokens"""
    lengths: Tensor
    """[N] completion tokens, EOS counted"""


@torch.no_grad()
def generate_rollout(
    model,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: Sequence[Sequence[int]],
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    batch_size: int = 64,
) -> Rollout:
    """Sample one completion per prompt (token-id lists, BOS included) from ``model``.

    Sampling uses the caller's RNG (seeded by the trainer), the full vocabulary (no
    top-k) and ``temperature``/``top_p``; the trainer must score the tokens at the same
    temperature (``logits / T``) for the importance ratios to be right.
    """
    if temperature <= 0:
        raise ValueError(f"rollouts sample: temperature must be > 0, got {temperature}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = _eos_ids(model, tokenizer)
    config = GenerationConfig(
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        top_k=0,
        max_new_tokens=max_new_tokens,
        eos_token_id=sorted(eos_ids),
        pad_token_id=pad_id,
        bos_token_id=tokenizer.bos_token_id,
        use_cache=True,
    )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    samples = []
    try:
        for start in range(0, len(prompt_ids), batch_size):
            rows = [list(p) for p in prompt_ids[start : start + batch_size]]
            input_ids, attention_mask = _left_pad(rows, pad_id)
            output = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config
            )
            new_tokens = output[:, input_ids.shape[1] :].tolist()
            samples.extend(_to_sample(tokenizer, tokens, eos_ids, pad_id) for tokens in new_tokens)
    finally:
        model.train(was_training)
    batch = pad_sequences([(list(p), s.token_ids) for p, s in zip(prompt_ids, samples, strict=True)], pad_id)
    return Rollout(
        batch={k: v.to(device) for k, v in batch.items()},
        completions=[s.text for s in samples],
        finished=torch.tensor([s.finished for s in samples], device=device),
        lengths=torch.tensor([s.length for s in samples], device=device),
    )


def penalise_missing_eos(scores: Tensor, finished: Tensor, penalty: float) -> Tensor:
    """``score - penalty`` for every completion cut off at ``max_new_tokens``."""
    return scores - penalty * (~finished).to(scores.dtype)

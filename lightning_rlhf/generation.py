"""Sampling completions from a causal LM, and scoring sampled tokens under a model.

Used by every stage that needs text from a policy: preference collection, evaluation,
and later PPO and rejection sampling. Any Hugging Face causal LM works, LoRA-wrapped or
not.

Prompts are LEFT-padded for generation: a decoder continues from the last position of
each row, so every prompt must end at the same column. Generation uses the model's KV
cache (Hugging Face ``generate``); no ``[batch, time, vocab]`` tensor is kept, only the
chosen token ids.

Each completion keeps its token ids (EOS included when the model wrote one), so its
log-probability can be computed on exactly the tokens that were sampled
(:func:`sequence_logps`) rather than on a re-tokenisation of the decoded text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase


@dataclass
class Sample:
    """One sampled completion of one prompt."""

    text: str
    """decoded completion: no prompt, no special tokens, no EOS"""
    token_ids: list[int]
    """the sampled tokens, EOS included when the model stopped by itself"""
    finished: bool
    """True when the model wrote EOS within ``max_new_tokens``"""

    @property
    def length(self) -> int:
        """Completion length in tokens (EOS counted)."""
        return len(self.token_ids)


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[list[int]]:
    """Prompt token ids as the data modules make them: special tokens (BOS) added, unless
    the text already starts with BOS (a prompt rendered by a chat template writes its own)."""
    bos = tokenizer.bos_token
    return [tokenizer(p, add_special_tokens=not (bos and p.startswith(bos)))["input_ids"] for p in prompts]


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, width - len(row) :] = 1
    return input_ids, attention_mask


def _eos_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return {i for i in ids if i is not None}


@torch.no_grad()
def sample(
    model,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    n: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    seed: int | None = 0,
) -> list[list[Sample]]:
    """``n`` completions for each prompt; ``result[i][j]`` is prompt i's j-th sample.

    ``temperature == 0`` decodes greedily. Sampling draws from the full distribution
    (no top-k), so at temperature 1 and top_p 1 the samples follow the model whose
    log-probabilities the trainer computes. ``seed`` seeds torch's generator inside a
    forked RNG state (the caller's RNG is untouched), so the same seed, model, prompts
    and ``batch_size`` give the same samples.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = _eos_ids(model, tokenizer)
    greedy = temperature == 0
    config = GenerationConfig(
        do_sample=not greedy,
        temperature=None if greedy else temperature,
        top_p=None if greedy else top_p,
        top_k=None if greedy else 0,
        max_new_tokens=max_new_tokens,
        eos_token_id=sorted(eos_ids),
        pad_token_id=pad_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    # Prompt i's samples are rows i*n .. i*n+n-1 of the expanded list.
    expanded = [ids for ids in encode_prompts(tokenizer, prompts) for _ in range(n)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    flat: list[Sample] = []
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            if seed is not None:
                torch.manual_seed(seed)
            for start in range(0, len(expanded), batch_size):
                rows = expanded[start : start + batch_size]
                input_ids, attention_mask = _left_pad(rows, pad_id)
                output = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    generation_config=config,
                )
                new_tokens = output[:, input_ids.shape[1] :].tolist()
                flat.extend(_to_sample(tokenizer, tokens, eos_ids, pad_id) for tokens in new_tokens)
    finally:
        model.train(was_training)
    return [flat[i * n : (i + 1) * n] for i in range(len(prompts))]


def _to_sample(tokenizer, tokens: list[int], eos_ids: set[int], pad_id: int) -> Sample:
    """Cut a generated row at its first EOS (rows that finished early are padded after it)."""
    for position, token in enumerate(tokens):
        if token in eos_ids:
            kept = tokens[: position + 1]
            return Sample(tokenizer.decode(kept[:-1], skip_special_tokens=True), kept, finished=True)
    return Sample(tokenizer.decode(tokens, skip_special_tokens=True), list(tokens), finished=False)


@torch.no_grad()
def sequence_logps(
    model,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    completion_ids: Sequence[Sequence[int]],
    batch_size: int = 32,
) -> torch.Tensor:
    """``[N]``: sum over t of log p(y_t | prompt, y_<t) for each (prompt, completion tokens).

    The log-probabilities are at temperature 1 (the model's own distribution). Rows are
    right-padded: causal attention keeps real tokens from seeing the pads after them.
    The softmax is taken one batch at a time over the completion positions only.
    """
    if len(prompts) != len(completion_ids):
        raise ValueError(f"{len(prompts)} prompts but {len(completion_ids)} completions")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompt_ids = encode_prompts(tokenizer, prompts)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals = []
    try:
        for start in range(0, len(prompt_ids), batch_size):
            pairs = list(zip(prompt_ids[start : start + batch_size], completion_ids[start : start + batch_size]))
            width = max(len(p) + len(c) for p, c in pairs)
            input_ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros_like(input_ids)
            # target_mask[i, t] marks that position t predicts a completion token (t+1).
            target_mask = torch.zeros((len(pairs), width - 1), dtype=torch.bool)
            for i, (p, c) in enumerate(pairs):
                input_ids[i, : len(p) + len(c)] = torch.tensor(list(p) + list(c))
                attention_mask[i, : len(p) + len(c)] = 1
                target_mask[i, len(p) - 1 : len(p) + len(c) - 1] = True
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            logits = logits[:, :-1][target_mask.to(device)].float()
            targets = input_ids[:, 1:][target_mask].to(device)
            token_logps = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            row_of_token = target_mask.nonzero()[:, 0].to(device)
            sums = torch.zeros(len(pairs), device=device).index_add_(0, row_of_token, token_logps)
            totals.append(sums.cpu())
    finally:
        model.train(was_training)
    return torch.cat(totals) if totals else torch.zeros(0)

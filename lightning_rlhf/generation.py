"""Sampling completions from a causal LM, and scoring sampled tokens under a model.

Used by every stage that needs text from a policy: preference collection, evaluation,
and later PPO and rejection sampling. Any Hugging Face causal LM works, LoRA-wrapped or
not.

Sampling goes through the rollout engine (``lightning_rlhf.engine``): explicit settings,
the KV cache, only the chosen token ids kept.

Each completion keeps its token ids (EOS included when the model wrote one), so its
log-probability can be computed on exactly the tokens that were sampled
(:func:`sequence_logps`) rather than on a re-tokenisation of the decoded text.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from lightning_rlhf.decode_engine import DecodeEngine
from lightning_rlhf.engine import HFEngine, RolloutEngine, Sample, SamplingSettings, pad_token_id

__all__ = ["ENGINES", "Sample", "encode_prompts", "make_engine", "sample", "sequence_logps"]

# The engines a setting names (``online.engine``, ``--engine``): both sample the same
# distribution from the live model; ``decode`` prefills a prompt once for all its samples
# and drops finished rows (lightning_rlhf.decode_engine), ``hf`` calls transformers' generate.
ENGINES = {"hf": HFEngine, "decode": DecodeEngine}


def make_engine(name: str, model, tokenizer: PreTrainedTokenizerBase, batch_size: int, progress: str | None = None) -> RolloutEngine:
    if name not in ENGINES:
        raise ValueError(f"unknown rollout engine {name!r}; engines: {', '.join(ENGINES)}")
    return ENGINES[name](model, tokenizer, batch_size, progress=progress)


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[list[int]]:
    """Prompt token ids as the data modules make them: special tokens (BOS) added, unless
    the text already starts with BOS (a prompt rendered by a chat template writes its own)."""
    bos = tokenizer.bos_token
    return [tokenizer(p, add_special_tokens=not (bos and p.startswith(bos)))["input_ids"] for p in prompts]


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
    progress: str | None = None,
    engine: str = "hf",
) -> list[list[Sample]]:
    """``n`` completions for each prompt (text); ``result[i][j]`` is prompt i's j-th sample.

    Through the rollout engine (``lightning_rlhf.engine``): ``temperature == 0`` decodes
    greedily; no top-k, nothing from the checkpoint's generation config, so at temperature
    1 and top_p 1 the samples follow the model whose log-probabilities the trainer
    computes. ``seed`` seeds a private random stream (the caller's is untouched), so the
    same seed, model, prompts, ``batch_size`` and ``engine`` give the same samples.
    ``progress``: a progress bar with this description. ``engine``: a name in
    :data:`ENGINES`.
    """
    settings = SamplingSettings(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    sampler = make_engine(engine, model, tokenizer, batch_size, progress=progress)
    return sampler.generate(encode_prompts(tokenizer, prompts), n, settings, seed=seed)


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
    pad_id = pad_token_id(tokenizer)
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

"""The rollout engine: the one place completions are sampled from a policy.

Every path that needs text from a model goes through a :class:`RolloutEngine`: online
rollouts (PPO, self-training's Grow), ``lightning-rlhf label``, ``evaluate`` and its
best-of-n, and the sample-table callback. The seam is small on purpose, so that a
serving engine (vLLM, SGLang) can stand in for the Hugging Face one without a plugin
noticing:

- ``generate(prompt_ids, n, settings, seed=None, return_logps=False)`` takes prompts as
  token ids (BOS included) and returns ``n`` :class:`Sample` per prompt: the sampled
  token ids (EOS included when the model wrote one), a finished flag, and, when asked, the
  sampler's log-probability of each sampled token (to compare with what the trainer
  computes, or to correct for an engine whose numerics differ). ``result[i]`` holds prompt
  i's samples; a rollout lays them out as contiguous rows, prompt-major (rows ``i * n`` to
  ``i * n + n - 1``). Each prompt arrives once with its ``n``: a group-based plugin passes
  ``n`` to ``OnlineContext.generate`` instead of repeating its prompts, so an engine that
  prefills a prompt once for all its samples (vLLM's ``SamplingParams(n=...)``, sharing
  the prompt's KV cache) does so;
- ``weights_changed()`` is called after every optimiser step, so an engine that holds its
  own copy of the weights can reload them (the Hugging Face engine samples from the live
  module and has nothing to do).

Sampling settings are explicit and complete (:class:`SamplingSettings`). A checkpoint's
``generation_config.json`` (Qwen's ``top_p 0.8``/``top_k 20``/repetition penalty, a
``suppress_tokens`` list, ...) never leaks in: transformers fills every setting a
``GenerationConfig`` leaves unset from the model's own, so :class:`HFEngine` hides the
model's config while it generates. What is sampled is then the distribution
``softmax(logits / T)`` (truncated by ``top_p``/``top_k`` when asked), nothing else.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
from tqdm.auto import tqdm
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample; nothing else is applied to the model's logits."""

    temperature: float = 1.0
    """0 decodes greedily"""
    top_p: float = 1.0
    """nucleus mass (1: the full distribution)"""
    top_k: int = 0
    """keep the k likeliest tokens (0: all)"""
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class Sample:
    """One sampled completion of one prompt."""

    text: str
    """decoded completion: no prompt, no special tokens, no EOS"""
    token_ids: list[int]
    """the sampled tokens, EOS included when the model stopped by itself"""
    finished: bool
    """True when the model wrote EOS within ``max_new_tokens``"""
    logps: list[float] | None = None
    """the sampler's log-probability of each token in ``token_ids`` (with ``return_logps``)"""

    @property
    def length(self) -> int:
        """Completion length in tokens (EOS counted)."""
        return len(self.token_ids)


class RolloutEngine(Protocol):
    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        n: int,
        settings: SamplingSettings,
        seed: int | None = None,
        return_logps: bool = False,
    ) -> list[list[Sample]]:
        """``n`` samples per prompt; ``result[i][j]`` is prompt i's j-th (an engine may prefill
        prompt i once for all ``n``). ``seed``: a private, seeded random stream (the caller's
        is untouched); None: the caller's stream."""
        ...

    def weights_changed(self) -> None:
        """The policy's weights moved (an optimiser step): sample from the new ones."""
        ...


class HFEngine:
    """Hugging Face ``generate`` on the live model: KV cache on, prompts left-padded, only
    the chosen token ids kept (never a ``[batch, time, vocab]`` tensor).

    ``n`` samples of a prompt are ``n`` rows of its own, each prefilled: transformers'
    ``num_return_sequences`` repeats the prompt rows before the prefill too
    (``_expand_inputs_for_generation``), and measured no faster on the tiny and toy
    models (n = 8: 1.08 s against 1.03 s CPU time for 32 short prompts, 7.65 s against
    7.61 s for 16 prompts of ~1100 tokens, where prefill is most of the work). Repeating
    here keeps ``batch_size`` a count of rows, and a call with ``n`` samples the same
    tokens, in the same random stream, as one with each prompt repeated ``n`` times.
    """

    def __init__(self, model, tokenizer: PreTrainedTokenizerBase, batch_size: int = 32, progress: str | None = None):
        """
        Args:
            progress: show a progress bar over the batches, with this description (commands
                that sample for minutes: ``label``, ``evaluate``); None: none (rollouts)
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.tokenizer, self.batch_size, self.progress = model, tokenizer, batch_size, progress

    def weights_changed(self) -> None:
        return  # the live module is what it samples from

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        n: int,
        settings: SamplingSettings,
        seed: int | None = None,
        return_logps: bool = False,
    ) -> list[list[Sample]]:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        tokenizer, model = self.tokenizer, self.model
        pad_id = pad_token_id(tokenizer)
        eos_ids = eos_token_ids(model, tokenizer)
        config = generation_config(settings, sorted(eos_ids), pad_id, tokenizer.bos_token_id)
        # Prompt i's samples are rows i*n .. i*n+n-1 of the expanded list.
        expanded = [list(ids) for ids in prompt_ids for _ in range(n)]
        flat: list[Sample] = []
        with sampling_from(model, seed) as device:
            for start in batch_starts(len(expanded), self.batch_size, self.progress):
                rows = expanded[start : start + self.batch_size]
                input_ids, attention_mask = left_pad(rows, pad_id)
                recorder = SampledTokenLogps() if return_logps else None
                output = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    generation_config=config,
                    logits_processor=sampling_processors(settings, recorder),
                )
                new_tokens = output[:, input_ids.shape[1] :]
                logps = recorder.finish(new_tokens).tolist() if recorder else [None] * len(rows)
                flat.extend(to_sample(tokenizer, tokens, eos_ids, row_logps)
                            for tokens, row_logps in zip(new_tokens.tolist(), logps))
        return [flat[i * n : (i + 1) * n] for i in range(len(prompt_ids))]


@contextmanager
def sampling_from(model, seed: int | None) -> Iterator[torch.device]:
    """Sample from the live model: eval mode (put back after), the checkpoint's generation
    config hidden, a private random stream when ``seed`` is given; yields its device."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with _random_stream(seed, device), neutral_generation_config(model):
            yield device
    finally:
        model.train(was_training)


def batch_starts(total: int, size: int, progress: str | None) -> Iterator[int]:
    """Where each batch of ``size`` starts; with a progress bar over them when ``progress``
    names one (quiet when the output is not a terminal: a log file, CI)."""
    starts = range(0, total, size)
    return iter(starts) if progress is None else iter(
        tqdm(starts, desc=progress, unit="batch", mininterval=2.0, dynamic_ncols=True, disable=None))


def generation_config(settings: SamplingSettings, eos_ids: list[int], pad_id: int, bos_id: int | None) -> GenerationConfig:
    """Sampling or greedy decoding and nothing else: temperature and truncation are applied
    by :func:`sampling_processors`, so transformers adds no processor of its own."""
    return GenerationConfig(
        do_sample=settings.temperature > 0,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_new_tokens=settings.max_new_tokens,
        min_new_tokens=0,
        repetition_penalty=1.0,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        use_cache=True,
    )


def sampling_processors(settings: SamplingSettings, recorder: SampledTokenLogps | None = None) -> LogitsProcessorList:
    """Temperature, then top-k, then top-p (transformers' own order), then the recorder, so
    that it sees the distribution the token is drawn from."""
    processors = LogitsProcessorList()
    if settings.temperature > 0:
        if settings.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_k > 0:
            processors.append(TopKLogitsWarper(settings.top_k))
        if settings.top_p < 1.0:
            processors.append(TopPLogitsWarper(settings.top_p))
    if recorder is not None:
        processors.append(recorder)
    return processors


@contextmanager
def neutral_generation_config(model) -> Iterator[None]:
    """Hide the checkpoint's ``generation_config`` while generating: transformers fills what
    a passed config leaves unset (``suppress_tokens``, ``no_repeat_ngram_size``,
    ``min_p``, ...) from the model's own, which would sample from another distribution
    than the one the trainer scores."""
    owner = next((m for m in model.modules() if isinstance(m, PreTrainedModel) and hasattr(m, "generation_config")), None)
    if owner is None:
        yield
        return
    saved = owner.generation_config
    owner.generation_config = GenerationConfig()
    try:
        yield
    finally:
        owner.generation_config = saved


class SampledTokenLogps(LogitsProcessor):
    """Records the sampler's log-probability of each sampled token, from the scores the
    sampler drew from (after temperature and truncation), keeping one step's ``[B, V]``
    log-softmax at a time: the token it sampled is known at the next step."""

    def __init__(self) -> None:
        self.previous: torch.Tensor | None = None
        self.prompt_width: int | None = None
        self.columns: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prompt_width is None:
            self.prompt_width = input_ids.shape[1]
        if self.previous is not None:
            self.columns.append(self.previous.gather(1, input_ids[:, -1:]).squeeze(1))
        self.previous = scores.float().log_softmax(-1)
        return scores

    def finish(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """``[B, new]`` log-probs of ``new_tokens`` (the last step's token gathered here)."""
        if self.previous is not None:
            self.columns.append(self.previous.gather(1, new_tokens[:, len(self.columns) : len(self.columns) + 1]).squeeze(1))
            self.previous = None
        return torch.stack(self.columns, dim=1) if self.columns else new_tokens.new_zeros((new_tokens.shape[0], 0), dtype=torch.float)


@contextmanager
def _random_stream(seed: int | None, device: torch.device) -> Iterator[None]:
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts LEFT-padded: a decoder continues from each row's last column, so every
    prompt must end at the same one."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, width - len(row) :] = 1
    return input_ids, attention_mask


def eos_token_ids(model, tokenizer) -> set[int]:
    """The tokenizer's EOS and the checkpoint's (a chat model may end turns with its own)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return {i for i in ids if i is not None}


def to_sample(tokenizer, tokens: list[int], eos_ids: set[int], logps: list[float] | None = None) -> Sample:
    """Cut a generated row at its first EOS (rows that finished early are padded after it)."""
    for position, token in enumerate(tokens):
        if token in eos_ids:
            kept = tokens[: position + 1]
            return Sample(tokenizer.decode(kept[:-1], skip_special_tokens=True), kept, True, logps and logps[: position + 1])
    return Sample(tokenizer.decode(tokens, skip_special_tokens=True), list(tokens), False, logps)


def cache_argument(model) -> str:
    """The name the model's forward takes its KV cache by: ``cache`` in transformers 5.x
    (``past_key_values`` deprecated), ``past_key_values`` before. A peft wrapper passes
    keywords through, so its base model's signature decides."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def model_cache(output):
    """The KV cache a forward returned: ``cache`` in transformers 5.x, ``past_key_values``
    before (asked for only when the other is missing: reading it warns in 5.x)."""
    return output["cache"] if "cache" in output else output.get("past_key_values")

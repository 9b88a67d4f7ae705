"""A rollout engine with its own decoding loop over a Hugging Face causal LM.

:class:`~lightning_rlhf.engine.HFEngine` calls ``model.generate``, which prefills every
sample's copy of its prompt and keeps every row in the batch until the longest finishes.
Group-based RL asks for many samples of few prompts, with lengths that differ, so this
engine does what a serving engine does, on the same live module:

- **one prefill per prompt**: the prompts of a batch are prefilled once, and the KV cache
  and the last logits are then repeated ``n`` times (``DynamicCache.batch_repeat_interleave``);
- **finished rows leave the batch**: once a share of the rows has written EOS, the cache
  keeps only the unfinished ones (``batch_select_indices``), so later steps compute only
  what is still sampled;
- **the cache grows in place**: after the prefill each layer's keys and values move into a
  buffer sized for the whole completion, and every step writes one column into it, where
  transformers' ``DynamicCache`` copies the whole cache to append one (``torch.cat``);
- **the distribution is the trainer's**: ``softmax(logits / T)``, truncated by ``top_k``
  then ``top_p`` when asked (transformers' order), positions counted from each row's first
  real token (as the trainer's right-padded forward counts them).

It samples the same distribution as ``HFEngine`` but not the same tokens for a given seed
(the random draws come in another order), which is why it is a choice
(``online.engine: decode``) and not a silent replacement.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from lightning_rlhf.engine import (
    Sample,
    SamplingSettings,
    batch_starts,
    cache_argument,
    model_cache,
    eos_token_ids,
    left_pad,
    pad_token_id,
    sampling_from,
    to_sample,
)

# Drop finished rows once at least this share of the batch has finished: each drop copies
# the KV cache, about what one decoding step reads, so dropping at every EOS would cost
# more than it saves.
COMPACT_SHARE = 0.25


class DecodeEngine:
    """Samples ``n`` completions per prompt with one prefill per prompt and a batch that
    shrinks as rows finish. ``batch_size`` counts sampled rows, as ``HFEngine``'s does
    (``batch_size // n`` prompts per batch, at least one)."""

    def __init__(self, model, tokenizer, batch_size: int = 32, progress: str | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.tokenizer, self.batch_size, self.progress = model, tokenizer, batch_size, progress
        self.cache_keyword = cache_argument(model)

    def weights_changed(self) -> None:
        return  # samples from the live module

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
        model, tokenizer = self.model, self.tokenizer
        eos_ids = eos_token_ids(model, tokenizer)
        prompts_per_batch = max(1, self.batch_size // n)
        result: list[list[Sample]] = []
        with sampling_from(model, seed) as device:
            for start in batch_starts(len(prompt_ids), prompts_per_batch, self.progress):
                rows = [list(ids) for ids in prompt_ids[start : start + prompts_per_batch]]
                tokens, logps = self._decode(rows, n, settings, eos_ids, device, return_logps)
                samples = [to_sample(tokenizer, t, eos_ids, lp) for t, lp in zip(tokens, logps)]
                result.extend(samples[i * n : (i + 1) * n] for i in range(len(rows)))
        return result

    def _decode(self, rows, n, settings, eos_ids, device, return_logps):
        """Token ids (and sampler log-probs) of ``len(rows) * n`` samples, prompt-major."""
        input_ids, attention_mask = left_pad(rows, pad_token_id(self.tokenizer))
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                            use_cache=True, logits_to_keep=1)
        cache, logits = model_cache(output), output.logits[:, -1].float()
        preallocate(cache, input_ids.shape[1] + settings.max_new_tokens)
        if n > 1:
            cache.batch_repeat_interleave(n)
            logits = logits.repeat_interleave(n, dim=0)
            attention_mask = attention_mask.repeat_interleave(n, dim=0)
        total = len(rows) * n
        next_position = attention_mask.sum(-1, keepdim=True)  # a row's real tokens so far: the next one's position
        eos = torch.tensor(sorted(eos_ids), device=device)
        # live[j]: which sample the j-th row of the shrinking batch is
        live = torch.arange(total, device=device)
        sampled = torch.full((total, settings.max_new_tokens), -1, dtype=torch.long, device=device)
        sampled_logps = torch.zeros((total, settings.max_new_tokens), device=device) if return_logps else None
        finished_rows = torch.zeros(total, dtype=torch.bool, device=device)
        for step in range(settings.max_new_tokens):
            token, logp = sample_next(logits, settings, return_logps)
            sampled[live, step] = token
            if return_logps:
                sampled_logps[live, step] = logp
            finished_rows[live] |= torch.isin(token, eos)
            if step + 1 == settings.max_new_tokens:
                break
            # A finished row keeps decoding (its tokens after EOS are cut) until enough have
            # finished to repay copying the cache. The one host read per step: when to stop,
            # when to shrink.
            pending = finished_rows[live]
            pending_count = int(pending.sum())
            if pending_count == len(live):
                break
            if pending_count >= COMPACT_SHARE * len(live):
                keep = (~pending).nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                live, token = live[keep], token[keep]
                attention_mask, next_position = attention_mask[keep], next_position[keep]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(live), 1))], dim=1)
            output = self.model(input_ids=token[:, None], attention_mask=attention_mask, position_ids=next_position,
                                use_cache=True, **{self.cache_keyword: cache})
            logits = output.logits[:, -1].float()
            next_position = next_position + 1
        tokens = [[t for t in row if t >= 0] for row in sampled.tolist()]
        if return_logps:
            logps = [row[: len(t)] for row, t in zip(sampled_logps.tolist(), tokens)]
        else:
            logps = [None] * total
        return tokens, logps


def sample_next(logits: torch.Tensor, settings: SamplingSettings, return_logps: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One token per row from ``softmax(logits / T)`` truncated by top-k then top-p (greedy
    at T = 0), and, when asked, its log-probability under the distribution it was drawn from."""
    if settings.temperature == 0:
        token = logits.argmax(-1)
        return token, (logits.log_softmax(-1).gather(1, token[:, None]).squeeze(1) if return_logps else None)
    scores = logits / settings.temperature if settings.temperature != 1.0 else logits
    if settings.top_k > 0 and settings.top_k < scores.shape[-1]:
        kth = scores.topk(settings.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if settings.top_p < 1.0:
        # transformers' rule: drop the tokens whose cumulative mass (ascending order) is at
        # most 1 - top_p, always keeping the likeliest
        ordered, order = scores.sort(dim=-1)
        cumulative = ordered.softmax(-1).cumsum(-1)
        drop = cumulative <= 1 - settings.top_p
        drop[:, -1] = False
        scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    logps = scores.log_softmax(-1)
    token = draw(logps.exp())
    return token, (logps.gather(1, token[:, None]).squeeze(1) if return_logps else None)


def draw(probs: torch.Tensor) -> torch.Tensor:
    """One index per row, drawn with probability ``probs`` (rows summing to 1), by inverting
    the cumulative distribution: one uniform number per row, where ``torch.multinomial``
    draws one per entry (measured 20x slower for 128 x 320 on the CPU). The running sum is
    in float64, so the cut points stay exact to far below a token's probability even over a
    150,000-token vocabulary; a zero-probability (truncated) entry is never drawn."""
    cumulative = probs.double().cumsum(-1)
    uniform = torch.rand((probs.shape[0], 1), dtype=torch.float64, device=probs.device) * cumulative[:, -1:]
    return torch.searchsorted(cumulative, uniform, right=True).squeeze(1).clamp(max=probs.shape[-1] - 1)


class PreallocatedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values live in a buffer with room for ``capacity``
    positions: ``update`` writes the new columns in place, and ``keys``/``values`` are views
    of the filled part, so everything else the layer does (lengths, masks, selecting and
    repeating rows) reads them as a ``DynamicLayer``'s."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int):
        super().__init__()
        self.device, self.is_initialized, self.length = keys.device, True, keys.shape[-2]
        shape = (*keys.shape[:-2], max(capacity, self.length), keys.shape[-1])
        self.key_buffer, self.value_buffer = keys.new_empty(shape), values.new_empty(shape)
        self.key_buffer[..., : self.length, :] = keys
        self.value_buffer[..., : self.length, :] = values
        self._views()

    def _views(self) -> None:
        self.keys = self.key_buffer[..., : self.length, :]
        self.values = self.value_buffer[..., : self.length, :]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + key_states.shape[-2]
        if end > self.key_buffer.shape[-2]:
            raise RuntimeError(f"the preallocated KV cache holds {self.key_buffer.shape[-2]} positions, {end} asked")
        self.key_buffer[..., self.length : end, :] = key_states
        self.value_buffer[..., self.length : end, :] = value_states
        self.length = end
        self._views()
        return self.keys, self.values

    # Repeating and selecting rows copy only the filled positions into fresh buffers: right
    # after the prefill a prompt fills about a quarter of the room its completion needs here.
    def batch_repeat_interleave(self, repeats: int) -> None:
        self._rebuild(lambda filled: filled.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._rebuild(lambda filled: filled.index_select(0, indices))

    def _rebuild(self, rows) -> None:
        buffers = []
        for buffer, filled in ((self.key_buffer, self.keys), (self.value_buffer, self.values)):
            chosen = rows(filled)
            fresh = buffer.new_empty((chosen.shape[0], *buffer.shape[1:]))
            fresh[..., : self.length, :] = chosen
            buffers.append(fresh)
        self.key_buffer, self.value_buffer = buffers
        self._views()


def preallocate(cache, capacity: int) -> None:
    """Swap each plain ``DynamicLayer`` of a prefilled ``DynamicCache`` for a
    :class:`PreallocatedLayer` of ``capacity`` positions; any other cache (sliding windows,
    a model's own) is left as it is."""
    if type(cache) is not DynamicCache:
        return
    for index, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer and layer.is_initialized:
            cache.layers[index] = PreallocatedLayer(layer.keys, layer.values, capacity)

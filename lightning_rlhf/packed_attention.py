"""A group's completions as one row of their real tokens, attending to their prompt's cache.

The prompt-once layout (:mod:`lightning_rlhf.data.shared_prompt`) runs each prompt once
with a KV cache and then the completions as rows of ``[M, C]``, each padded to the
longest. Group-based RL samples completions of very different lengths, so a sixth of the
tokens those rows hold are padding on the checkable world (17,555 real in 21,312, the
GRPO benchmark's micro-batches of 32), and every layer computes them.

Every layer of a decoder but attention works token by token, so here the completions run
as one row of their real tokens, ``[1, S]``, each at the position it has in its own row.
Attention, which mixes tokens, is the one place that needs the rows: inside it the
queries, keys and values are unpacked to ``[M, C]`` (``index_copy``), each row's prompt
keys and values from the prompts' cache go in front, SDPA runs with the mask of the
padded layout (the prompt's real tokens, then causal over the completion's own), and the
output is packed back (``index_select``). Each real token then sees what it sees in the
padded layout and gets the same hidden state; the projections, rotary embeddings and MLPs
compute ``S`` tokens instead of ``M C``.

The model's own attention modules still project and rotate; only the function they call
is replaced, through transformers' attention interface (registered as
:data:`IMPLEMENTATION` and selected just for the packed forward). Model types are allowed
by name (:data:`PACKABLE_MODEL_TYPES`: their attention calls that interface with the
layer's index, and their layers mix tokens nowhere else), and a forward that did not reach
the function in every layer raises instead of returning hidden states of the wrong
attention.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

IMPLEMENTATION = "lightning_rlhf_packed_prefix"
KEYWORD = "packed_prefix"  # what carries the prompts' cache and the packing down to each layer's attention
PACKABLE_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def packs_completions(config) -> bool:
    """Whether the model's completions can run packed: a listed model type, SDPA or eager
    attention (the packed path computes what SDPA does), every layer attending to all
    earlier tokens (no sliding window), rotary embeddings that do not rescale with the
    batch's length, and no logit softcapping in attention."""
    if getattr(config, "model_type", None) not in PACKABLE_MODEL_TYPES:
        return False
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False
    layer_types = getattr(config, "layer_types", None) or []
    if any(kind != "full_attention" for kind in layer_types):
        return False
    # RoPE that rescales by the longest position in the batch would see the packed row's
    # longest, not the padded rows' (padding positions included): other frequencies
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type")) in ("dynamic", "longrope"):
        return False
    sliding = getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True)
    return not sliding and getattr(config, "attn_logit_softcapping", None) is None


class PackedPrefix:
    """What each layer's attention needs for a packed forward: the prompts' ``cache``,
    ``prompt_of`` ``[M]`` (each completion's prompt row), ``tokens`` ``[S]`` (where each
    packed token sits in the flat ``[M * C]`` rows) and the rows' ``width`` ``C``; it counts
    the layers it served. A plain class, not a dataclass: FSDP copies dataclasses it finds
    among a forward's inputs, and the layers would then count on a copy."""

    def __init__(self, cache, prompt_of: Tensor, tokens: Tensor, width: int):
        self.cache, self.prompt_of, self.tokens, self.width = cache, prompt_of, tokens, width
        self.layers_seen = 0

    def unpack(self, states: Tensor) -> Tensor:
        """``[1, heads, S, d]`` to the padded rows ``[M, heads, C, d]`` (zeros at padding)."""
        rows = self.prompt_of.shape[0]
        tokens = states[0].transpose(0, 1)  # [S, heads, d]
        padded = tokens.new_zeros(rows * self.width, *tokens.shape[1:]).index_copy(0, self.tokens, tokens)
        return padded.view(rows, self.width, *tokens.shape[1:]).transpose(1, 2)

    def pack(self, output: Tensor) -> Tensor:
        """Attention's output ``[M, C, heads, d]`` to the packed row ``[1, S, heads, d]``."""
        return output.reshape(-1, *output.shape[2:]).index_select(0, self.tokens).unsqueeze(0)


def packed_prefix_attention(module, query: Tensor, key: Tensor, value: Tensor, attention_mask, dropout: float = 0.0,
                            scaling: float | None = None, **kwargs) -> tuple[Tensor, None]:
    """The attention function of a packed forward (transformers' attention interface)."""
    packed: PackedPrefix | None = kwargs.pop(KEYWORD, None)
    if packed is None:
        raise RuntimeError(f"attention implementation {IMPLEMENTATION!r} runs only inside packed_completions_hidden")
    prompt = packed.cache.layers[module.layer_idx]
    keys = torch.cat([prompt.keys.index_select(0, packed.prompt_of), packed.unpack(key)], dim=2)
    values = torch.cat([prompt.values.index_select(0, packed.prompt_of), packed.unpack(value)], dim=2)
    output, _ = sdpa_attention_forward(module, packed.unpack(query), keys, values, attention_mask, dropout=dropout,
                                       scaling=scaling, is_causal=False)
    packed.layers_seen += 1
    return packed.pack(output), None


# No mask function is registered: the packed forward hands the model the padded layout's
# 4-D mask, which transformers passes to attention as it is, without building or checking
# one (a check would read the mask on the host, a device sync per forward).
ALL_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, packed_prefix_attention)


@contextlib.contextmanager
def _attention_implementation(config, name: str) -> Iterator[None]:
    before = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = before


def packed_completions_hidden(decoder, config, cache, prompt_mask: Tensor, prompt_of: Tensor, completion_ids: Tensor,
                              tokens: Tensor) -> Tensor:
    """Last hidden states ``[S, H]``, in the order of ``tokens``, of the completions
    ``[M, C]`` (right-padded; ``tokens``: the flat indices of their real tokens, in order)
    continuing from the prompts' ``cache`` (prompts ``[R, P]`` left-padded, ``prompt_mask``;
    ``prompt_of``: each completion's prompt row)."""
    rows, width = completion_ids.shape
    steps = torch.arange(width, device=completion_ids.device)
    positions = (prompt_mask.sum(-1).index_select(0, prompt_of)[:, None] + steps).reshape(-1).index_select(0, tokens)
    # A query sees its prompt's real tokens and its completion's up to itself (right-padded:
    # a real token's later keys, padding among them, are all hidden by the causal part).
    causal = (steps[None, :] <= steps[:, None]).expand(rows, -1, -1)
    mask = torch.cat([prompt_mask.bool().index_select(0, prompt_of)[:, None, :].expand(-1, width, -1), causal], dim=2)
    packed = PackedPrefix(cache, prompt_of, tokens, width)
    with _attention_implementation(config, IMPLEMENTATION):
        output = decoder(input_ids=completion_ids.reshape(-1).index_select(0, tokens)[None], attention_mask=mask[:, None],
                         position_ids=positions[None], use_cache=False, **{KEYWORD: packed})
    if packed.layers_seen != config.num_hidden_layers:
        raise RuntimeError(f"{type(decoder).__name__}: the packed attention ran in {packed.layers_seen} of "
                           f"{config.num_hidden_layers} layers; this model type cannot run packed")
    return output.last_hidden_state[0]

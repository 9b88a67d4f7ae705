"""A prompt's completions in one row: the prompt once, then each completion.

A preference pair is the case of two: the prompt once, then the chosen and the rejected
completion.

The usual layout runs ``prompt + chosen`` and ``prompt + rejected`` as two rows, so the
model computes every prompt twice, and pads the shorter completion to the longer. Here
a pair is one row::

    tokens      p_0 .. p_{P-1}   c_0 .. c_{C-1}     r_0 .. r_{R-1}
    positions   0   .. P-1       P   .. P+C-1       P   .. P+R-1
    segment     0                1                  2             (-1: padding)

with causal attention in which a rejected token does not see the chosen ones (a key is
visible to a query if it is not later, and is prompt or of the query's own segment).
Each token then sees exactly what it sees in its own row of the usual layout, at the
same position, so its hidden state and log-probability are the same; a pair costs
``P + C + R`` tokens instead of ``2 P + C + R`` plus padding. (Rotary and learned
position embeddings read the position ids; attention reads the mask.)

The collator adds these tensors beside the usual chosen-then-rejected layout, which
stays the contract for everything else (plugins, the reference cache, token counts):

- ``shared_prompt_ids``, ``shared_prompt_positions``, ``shared_prompt_segments`` ``[B, W]``;
- ``shared_prompt_index`` ``[K]``: for each completion token, in the order of the usual
  layout's ``logp_index``, the flat index into ``[B * W]`` of the hidden state that
  predicts it. In the usual layout position ``t`` of pair ``b`` predicts token ``t+1``;
  here that hidden state sits at ``t`` for chosen rows and for rejected rows' prompt
  positions (``t < P``), and at ``t + C`` for rejected positions after the prompt.

Group-based RL samples G completions of each prompt, and :func:`group_prefix_layout` lays a
rollout out to compute each prompt once (``online.share_prompt``), not as one packed row
(attention over all G completions at once would cost more than the prompt saves) but as
a prefix: the prompts run first with a KV cache, and each completion continues from its
prompt's cache, seeing the prompt and itself, at the positions it has in its own row
(:func:`group_prefix_hidden`). A group costs ``P + sum C_g`` tokens instead of
``G (P + max C_g)``, and attention spans what it spans in the usual layout. Its tensors
(``shared_prefix_*``) sit beside the usual layout's as the pair layout's do:

- ``prompt_ids``, ``prompt_mask`` ``[R, P]``: each group's prompt once, left-padded (so
  every prompt ends in the last column, where the cache then continues);
- ``completion_ids``, ``completion_mask`` ``[M, C]``: each completion, right-padded, and
  ``prompt_of`` ``[M]``: its prompt's row;
- ``index`` ``[K]``: as ``shared_prompt_index``, into the prompts' hidden states ``[R * P]``
  followed by the completions' ``[M * C]``;
- ``tokens`` ``[S]``: where the completions' real tokens sit in ``[M * C]``, for models
  whose completions run as one row of just those (:mod:`lightning_rlhf.packed_attention`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_rlhf import packed_attention
from lightning_rlhf.engine import model_cache
from lightning_rlhf.ops import completion_index

PREFIX = "shared_prompt_"


def shared_prompt_layout(rows: list[dict], pad_token_id: int, pad_to_multiple_of: int = 1) -> dict[str, Tensor]:
    """The one-row-per-pair tensors for ``rows`` (``prompt_ids``, ``chosen_ids``, ``rejected_ids``)."""
    n = len(rows)
    longest = max(len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows)
    width = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    positions = torch.zeros((n, width), dtype=torch.long)
    segments = torch.full((n, width), -1, dtype=torch.long)
    chosen_index, rejected_index = [], []
    for b, row in enumerate(rows):
        p, c, r = len(row["prompt_ids"]), len(row["chosen_ids"]), len(row["rejected_ids"])
        ids[b, : p + c + r] = torch.tensor(row["prompt_ids"] + row["chosen_ids"] + row["rejected_ids"])
        positions[b, : p + c] = torch.arange(p + c)
        positions[b, p + c : p + c + r] = torch.arange(p, p + r)
        segments[b, :p], segments[b, p : p + c], segments[b, p + c : p + c + r] = 0, 1, 2
        # The usual layout's completion positions t (t predicts token t+1), in order.
        start = max(p - 1, 0)
        chosen_index += [b * width + t for t in range(start, p + c - 1)]
        rejected_index += [b * width + (t if t < p else t + c) for t in range(start, p + r - 1)]
    return {
        PREFIX + "ids": ids,
        PREFIX + "positions": positions,
        PREFIX + "segments": segments,
        PREFIX + "index": torch.tensor(chosen_index + rejected_index, dtype=torch.long),
    }


GROUP = "shared_prefix_"


def group_prefix_layout(batch: dict[str, Tensor]) -> dict[str, Tensor] | None:
    """The prompt-once tensors for a right-padded batch (``input_ids``, ``attention_mask``,
    ``completion_mask`` ``[N, T]``) whose consecutive rows of equal ``group_index`` ``[N]``
    are completions of one prompt; None when no two rows share one (nothing to save) or a
    group's rows differ before their completions start.

    A row's prompt ends where its ``completion_mask`` starts; a row with no completion
    token left (a plugin may leave a sample out of the loss) needs no hidden state and is
    left out. Reads the lengths on the host: a piece is laid out as it is cut, before its
    forward, not inside it.
    """
    group_index = batch.get("group_index")
    if group_index is None or group_index.shape[0] < 2:
        return None
    input_ids, completion_mask = batch["input_ids"].cpu(), batch["completion_mask"].cpu().bool()
    ends, groups = batch["attention_mask"].cpu().sum(-1).tolist(), group_index.cpu().tolist()
    starts = completion_mask.int().argmax(-1).tolist()  # where each row's completion begins
    scored = completion_mask.any(-1).tolist()
    runs = []  # per group: (prompt length, [rows])
    first, n = 0, len(groups)
    while first < n:
        last = first
        while last + 1 < n and groups[last + 1] == groups[first]:
            last += 1
        members = [i for i in range(first, last + 1) if scored[i]]
        first = last + 1
        if not members:
            continue
        p = starts[members[0]]
        if p == 0 or any(starts[i] != p or not torch.equal(input_ids[i, :p], input_ids[members[0], :p]) for i in members[1:]):
            return None
        runs.append((p, members))
    if not runs or all(len(members) < 2 for _, members in runs):
        return None
    prompt_width = max(p for p, _ in runs)
    completion_width = max(ends[i] - p for p, members in runs for i in members)
    rows = sum(len(members) for _, members in runs)
    prompt_ids = torch.zeros((len(runs), prompt_width), dtype=torch.long)
    prompt_mask = torch.zeros((len(runs), prompt_width), dtype=torch.long)
    completion_ids = torch.zeros((rows, completion_width), dtype=torch.long)
    completion_part = torch.zeros((rows, completion_width), dtype=torch.long)
    prompt_of = torch.zeros(rows, dtype=torch.long)
    # hidden[i, t]: the flat index of the hidden state that predicts row i's token t+1
    hidden = torch.zeros(input_ids.shape[0], input_ids.shape[1] - 1, dtype=torch.long)
    steps = torch.arange(input_ids.shape[1] - 1)
    m = 0
    for r, (p, members) in enumerate(runs):
        prompt_ids[r, prompt_width - p :] = input_ids[members[0], :p]
        prompt_mask[r, prompt_width - p :] = 1
        for i in members:
            length = ends[i] - p
            completion_ids[m, :length] = input_ids[i, p : ends[i]]
            completion_part[m, :length] = 1
            prompt_of[m] = r
            # the prompt's last token predicts the first completion token; the rest come
            # from the completion's own row, after all the prompts' states
            hidden[i] = torch.where(steps < p, r * prompt_width + prompt_width - 1,
                                    len(runs) * prompt_width + m * completion_width + steps - p)
            m += 1
    index = batch.get("logp_index")
    index = completion_index(completion_mask) if index is None else index.cpu()
    device = batch["input_ids"].device
    layout = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
              "completion_mask": completion_part, "prompt_of": prompt_of, "index": hidden.reshape(-1).index_select(0, index),
              "tokens": completion_part.reshape(-1).nonzero().squeeze(1)}
    return {GROUP + key: value.to(device) for key, value in layout.items()}


def group_prefix_hidden(decoder, batch: dict[str, Tensor], cache_keyword: str, config=None) -> tuple[Tensor, Tensor]:
    """The decoder's last hidden states for a batch's :func:`group_prefix_layout`, flat
    ``[R * P + M * C, H]``, and the index of the one that predicts each completion token
    (``shared_prefix_index``): the prompts' forward with a KV cache, the cache gathered to
    one row per completion (a differentiable gather, so the prompts' gradients gather what
    every completion sends back), then the completions' forward on it, each at the
    positions it has in its own row. With the model's ``config`` where
    :func:`~lightning_rlhf.packed_attention.packs_completions` allows, the completions run
    as one row of their real tokens (``[R * P + S, H]``, and the index moved to match)."""
    prompt_mask = batch[GROUP + "prompt_mask"]
    prompts = decoder(input_ids=batch[GROUP + "prompt_ids"], attention_mask=prompt_mask,
                      position_ids=(prompt_mask.cumsum(-1) - 1).clamp(min=0), use_cache=True)
    cache = model_cache(prompts)
    prompt_of = batch[GROUP + "prompt_of"]
    completion_ids, completion_mask, index = batch[GROUP + "completion_ids"], batch[GROUP + "completion_mask"], batch[GROUP + "index"]
    width = prompts.last_hidden_state.shape[-1]
    prompt_hidden = prompts.last_hidden_state.reshape(-1, width)
    if config is not None and packed_attention.packs_completions(config):
        tokens = batch[GROUP + "tokens"]
        completions = packed_attention.packed_completions_hidden(decoder, config, cache, prompt_mask, prompt_of,
                                                                 completion_ids, tokens)
        # an index into the padded completions [M * C] becomes one into the packed tokens [S]
        packed_position = torch.zeros(completion_ids.numel(), dtype=torch.long, device=tokens.device)
        packed_position[tokens] = torch.arange(tokens.shape[0], device=tokens.device)
        prompts_end = prompt_hidden.shape[0]
        in_completion = index >= prompts_end
        index = torch.where(in_completion, prompts_end + packed_position[(index - prompts_end).clamp(min=0)], index)
        return torch.cat([prompt_hidden, completions]), index
    cache.batch_select_indices(prompt_of)
    positions = prompt_mask.sum(-1).index_select(0, prompt_of)[:, None] + torch.arange(completion_ids.shape[1], device=completion_ids.device)
    mask = torch.cat([prompt_mask.index_select(0, prompt_of), completion_mask], dim=1)
    completions = decoder(input_ids=completion_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                          **{cache_keyword: cache})
    return torch.cat([prompt_hidden, completions.last_hidden_state.reshape(-1, width)]), index


def attention_mask(segments: Tensor, additive_dtype: torch.dtype | None = None) -> Tensor:
    """``[B, 1, W, W]``: query ``i`` may see key ``j <= i`` that is prompt or of its own
    segment (padding sees only padding, so no row is empty). Boolean (True: visible), or
    additive (0 or the dtype's minimum) for attention implementations that add it."""
    width = segments.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=segments.device).tril()
    query, key = segments.unsqueeze(2), segments.unsqueeze(1)  # [B, W, 1], [B, 1, W]
    visible = causal & ((key == query) | ((key == 0) & (query >= 0)))
    visible = visible.unsqueeze(1)
    if additive_dtype is None:
        return visible
    return torch.zeros(visible.shape, dtype=additive_dtype, device=segments.device).masked_fill(
        ~visible, torch.finfo(additive_dtype).min
    )


def model_inputs(model, batch: dict) -> dict[str, Tensor] | None:
    """The decoder's keyword arguments for a batch's one-row-per-pair layout; None if the
    batch has none or the model's attention takes no custom mask (flash attention)."""
    if PREFIX + "ids" not in batch:
        return None
    implementation = getattr(model.config, "_attn_implementation", None)
    if implementation not in ("eager", "sdpa"):
        return None
    # eager attention adds the mask to its scores; SDPA takes a boolean one
    additive = torch.float32 if implementation == "eager" else None
    return {
        "input_ids": batch[PREFIX + "ids"],
        "position_ids": batch[PREFIX + "positions"],
        "attention_mask": attention_mask(batch[PREFIX + "segments"], additive),
    }

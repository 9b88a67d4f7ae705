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

Group-based RL samples G completions of each prompt, and :func:`group_layout` lays a
rollout out the same way, one row per group with segments 1..G, from the usual layout's
tensors and ``group_index`` (``online.share_prompt``): a group costs ``P + sum C_g``
tokens instead of ``G (P + max C_g)``. Attention then spans the whole row, so it pays
where the prompt or the padding it saves outweighs attending over ``G`` completions at
once: short completions, long prompts, many samples.
"""

from __future__ import annotations

import torch
from torch import Tensor

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


def group_layout(batch: dict[str, Tensor]) -> dict[str, Tensor] | None:
    """The one-row-per-group tensors for a right-padded batch (``input_ids``,
    ``attention_mask``, ``completion_mask`` ``[N, T]``) whose consecutive rows of equal
    ``group_index`` ``[N]`` are completions of one prompt; None when no two rows share one
    (nothing to save) or a group's rows differ before their completions start.

    A row's prompt ends where its ``completion_mask`` starts; a row with no completion
    token left (a plugin may leave a sample out of the loss) needs no hidden state and is
    left out of the packed row. Reads the lengths on the host: a piece is laid out as it is
    cut, before its forward, not inside it.
    """
    group_index = batch.get("group_index")
    if group_index is None or group_index.shape[0] < 2:
        return None
    input_ids, completion_mask = batch["input_ids"].cpu(), batch["completion_mask"].cpu().bool()
    ends, groups = batch["attention_mask"].cpu().sum(-1).tolist(), group_index.cpu().tolist()
    starts = completion_mask.int().argmax(-1).tolist()  # where each row's completion begins
    scored = completion_mask.any(-1).tolist()
    packed = []  # per packed row: (prompt ids, [(usual row, prompt length, segment offset)], ids)
    n = len(groups)
    first = 0
    while first < n:
        last = first
        while last + 1 < n and groups[last + 1] == groups[first]:
            last += 1
        members = [i for i in range(first, last + 1) if scored[i]]
        first = last + 1
        if not members:
            continue
        p = starts[members[0]]
        prompt = input_ids[members[0], :p]
        if any(starts[i] != p or not torch.equal(input_ids[i, :p], prompt) for i in members[1:]):
            return None
        ids, placed = prompt.tolist(), []
        for i in members:
            placed.append((i, len(ids)))
            ids += input_ids[i, p : ends[i]].tolist()
        packed.append((p, placed, ids))
    if not packed or all(len(placed) < 2 for _, placed, _ in packed):
        return None
    width = max(len(ids) for _, _, ids in packed)
    out_ids = torch.zeros((len(packed), width), dtype=torch.long)
    positions = torch.zeros((len(packed), width), dtype=torch.long)
    segments = torch.full((len(packed), width), -1, dtype=torch.long)
    # hidden[i, t]: the flat index of the packed hidden state that predicts row i's token t+1
    hidden = torch.zeros(input_ids.shape[0], input_ids.shape[1] - 1, dtype=torch.long)
    steps = torch.arange(input_ids.shape[1] - 1)
    for b, (p, placed, ids) in enumerate(packed):
        out_ids[b, : len(ids)] = torch.tensor(ids)
        positions[b, :p], segments[b, :p] = torch.arange(p), 0
        for segment, (i, offset) in enumerate(placed, start=1):
            length = ends[i] - p
            positions[b, offset : offset + length] = torch.arange(p, p + length)
            segments[b, offset : offset + length] = segment
            hidden[i] = b * width + torch.where(steps < p, steps, offset + steps - p)
    index = batch.get("logp_index")
    index = completion_index(completion_mask) if index is None else index.cpu()
    device = batch["input_ids"].device
    return {
        PREFIX + "ids": out_ids.to(device),
        PREFIX + "positions": positions.to(device),
        PREFIX + "segments": segments.to(device),
        PREFIX + "index": hidden.reshape(-1).index_select(0, index).to(device),
    }


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

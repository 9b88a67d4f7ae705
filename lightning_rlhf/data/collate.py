"""Padding tokenised rows into batches.

Every batch carries ``input_ids``, ``attention_mask`` and ``completion_mask`` (which
tokens are trained on), plus ``logp_index``: the flat positions at which the model's
head is needed, computed here on the CPU so the training step never has to ask the
accelerator how many there are.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_rlhf.data.shared_prompt import shared_prompt_layout
from lightning_rlhf.ops import completion_index


def pad_sequences(
    sequences: list[tuple[list[int], list[int]]], pad_token_id: int, pad_to_multiple_of: int = 1
) -> dict[str, Tensor]:
    """Right-pad (prompt_ids, completion_ids) pairs into one batch."""
    longest = max(len(p) + len(c) for p, c in sequences)
    width = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    completion_mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for i, (prompt, completion) in enumerate(sequences):
        n_prompt, n_total = len(prompt), len(prompt) + len(completion)
        input_ids[i, :n_total] = torch.tensor(prompt + completion, dtype=torch.long)
        attention_mask[i, :n_total] = True
        completion_mask[i, n_prompt:n_total] = True
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "completion_mask": completion_mask,
        "logp_index": completion_index(completion_mask),
    }


class SFTCollator:
    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 1):
        self.pad_token_id, self.pad_to_multiple_of = pad_token_id, pad_to_multiple_of

    def __call__(self, rows: list[dict]) -> dict[str, Tensor]:
        return pad_sequences([(r["prompt_ids"], r["completion_ids"]) for r in rows], self.pad_token_id, self.pad_to_multiple_of)


class PreferenceCollator:
    """Chosen rows first, then rejected rows, in one tensor: one forward pass for both.

    With ``share_prompt`` the batch also holds each pair as one row, the prompt once
    (``data.shared_prompt``), which the module then runs instead.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 1, share_prompt: bool = False):
        self.pad_token_id, self.pad_to_multiple_of = pad_token_id, pad_to_multiple_of
        self.share_prompt = share_prompt

    def __call__(self, rows: list[dict]) -> dict[str, Tensor]:
        sequences = [(r["prompt_ids"], r["chosen_ids"]) for r in rows]
        sequences += [(r["prompt_ids"], r["rejected_ids"]) for r in rows]
        batch = pad_sequences(sequences, self.pad_token_id, self.pad_to_multiple_of)
        if self.share_prompt:
            batch.update(shared_prompt_layout(rows, self.pad_token_id, self.pad_to_multiple_of))
        margins = [r.get("margin") for r in rows]
        if any(m is not None for m in margins):
            batch["margin"] = torch.tensor([0.0 if m is None else m for m in margins])
        # Ratings stay strings (None where a row has none): which margin a rating means is
        # the objective's hyperparameter (bradley_terry's margin_table), not the data's.
        ratings = [r.get("rating") for r in rows]
        if any(r is not None for r in ratings):
            batch["rating"] = ratings
        return batch


class CachedReferenceCollator:
    """Wraps a collator: the data module's reference cache, if it has one, adds its values
    to each batch (``cache.add_to(batch)``, see ``lightning_rlhf.reference_cache``).

    Reads ``holder.reference_cache`` at each call, so a cache handed over after the data
    loader was made is used (it is handed over before the first batch is drawn).
    """

    def __init__(self, collator, holder):
        self.collator, self.holder = collator, holder

    def __call__(self, rows: list[dict]) -> dict:
        batch = self.collator(rows)
        cache = getattr(self.holder, "reference_cache", None)
        if cache is not None and isinstance(batch, dict) and "completion_mask" in batch:
            cache.add_to(batch)
        return batch

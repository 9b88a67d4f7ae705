"""Batches of similar length, so that little of each batch is padding.

A batch is padded to its longest sequence, and the model computes the padding like any
other token. With lengths spread between 30 and 250 tokens a random batch of 8 is about
a third padding. Grouping examples of similar length into the same batch removes most
of it, while keeping the order random at the scale that matters for training:

1. take the epoch's shuffled order (a pure function of ``(seed, epoch)``, as before);
2. cut it into *megabatches* of ``MEGABATCH_BATCHES`` batches and sort each one by
   length, longest first (Hugging Face's ``LengthGroupedSampler`` does the same, with
   the same factor of 50);
3. cut each megabatch into batches, and shuffle the order of the batches with a
   generator seeded by ``(seed, epoch)``; a short last batch stays last, so that every
   other batch is full and the data loader's ``batch_size`` slicing meets batch
   boundaries.

The result is again a pure function of ``(seed, epoch)``, so a resumed run rebuilds the
same order and skips the batches it has done (``data.sampler``). Under DDP each rank
groups its own shard with the same batch permutation, so the ranks' batches of one
step come from the same place in their sorted megabatches and take similar time.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

MEGABATCH_BATCHES = 50


def example_length(row: dict) -> int:
    """Tokens in the longest sequence a data row becomes: its prompt plus its longest
    completion (``*_ids`` fields; a list of lists, as ranked completions, counts its
    longest member)."""
    longest = 0
    for key, value in row.items():
        if key == "prompt_ids" or not key.endswith("_ids") or not isinstance(value, list):
            continue
        if value and isinstance(value[0], list):
            longest = max([longest, *(len(v) for v in value)])
        else:
            longest = max(longest, len(value))
    return len(row.get("prompt_ids") or ()) + longest


def group_by_length(
    indices: Sequence[int], lengths: Sequence[int], batch_size: int, seed: int, megabatch_batches: int = MEGABATCH_BATCHES
) -> list[int]:
    """``indices`` (an epoch's shuffled order) reordered into length-grouped batches.

    >>> group_by_length([0, 1, 2, 3, 4], [5, 1, 4, 2, 3], batch_size=2, seed=0, megabatch_batches=3)
    [0, 2, 4, 3, 1]
    """
    megabatch = batch_size * megabatch_batches
    batches: list[list[int]] = []
    for start in range(0, len(indices), megabatch):
        part = sorted(indices[start : start + megabatch], key=lambda i: -lengths[i])  # stable: ties keep their order
        batches.extend(part[b : b + batch_size] for b in range(0, len(part), batch_size))
    last = batches.pop() if batches and len(batches[-1]) < batch_size else None
    random.Random(seed).shuffle(batches)
    if last is not None:
        batches.append(last)
    return [i for batch in batches for i in batch]


def padding_share(lengths: Sequence[int], batch_size: int, seed: int = 0, batches: int = 64) -> float:
    """The share of a random batch's computed tokens that is padding (each batch padded to
    its longest row), averaged over ``batches`` batches drawn with ``seed``.

    >>> round(padding_share([1, 3], batch_size=2), 4)  # one batch [3, 3]: 2 of 6 tokens are padding
    0.3333
    """
    if len(lengths) <= 1 or batch_size <= 1:
        return 0.0
    rng = random.Random(seed)
    padded = real = 0
    for _ in range(batches):
        batch = rng.sample(list(lengths), min(batch_size, len(lengths)))
        padded += max(batch) * len(batch)
        real += sum(batch)
    return 1.0 - real / padded

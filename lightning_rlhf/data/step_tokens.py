"""Count the loss tokens of a whole optimiser step before its first micro-batch runs.

A token-averaged loss (SFT's NLL) over one optimiser step should be

    L = sum over every completion token t in the step of nll_t  /  N_step

where the step is ``accumulate_grad_batches`` micro-batches on each of ``world_size``
processes. Lightning divides each micro-batch's loss by ``A = accumulate_grad_batches``
and DDP averages gradients over the ``W`` processes, so a micro-batch that returns its
own token mean ``S_i / n_i`` trains on ``(1/WA) * sum_i S_i / n_i``: micro-batches with
few tokens weigh as much as long ones, and the step depends on how the batch was cut
(the accumulation bug that Hugging Face's Trainer fixed in 4.46 with
``num_items_in_batch``). Dividing instead by ``N_step / (W * A)`` gives exactly ``L``.

The loader knows the micro-batches ahead of the loop: it collates the ``A`` batches of an
accumulation window together and stamps each with ``loss_tokens``, this process's token
count over the window; the module sums it over processes and divides by ``W * A`` (see
``PolicyModule.training_step``). Windows start at multiples of ``A`` counted from the
epoch's first batch, as Lightning's ``accumulate_grad_batches`` counts them, so a short
last window is counted as what it is.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator


def with_step_tokens(batches: Iterable[dict], accumulate: int, start: int = 0) -> Iterator[dict]:
    """Yield ``batches`` with ``loss_tokens`` (a 0-d tensor) added to each batch that has a
    ``completion_mask``: the completion tokens (``completion_mask[:, 1:]``, the positions
    ``SequenceLogps`` scores) of all batches in its accumulation window. ``start`` is the
    epoch position of the first batch (a resumed epoch starts mid-way)."""
    batches = iter(batches)
    position = start
    while True:
        window = list(itertools.islice(batches, accumulate - position % accumulate))
        if not window:
            return
        position += len(window)
        counted = [b for b in window if isinstance(b, dict) and "completion_mask" in b]
        if counted:
            tokens = sum(b["completion_mask"][:, 1:].sum() for b in counted)
            for batch in counted:
                batch["loss_tokens"] = tokens.clone()
        yield from window

"""A training loader that can be resumed in the middle of an epoch.

Lightning restores the data position only for a loader that is ``_Stateful`` (it has
``state_dict``/``load_state_dict``): ``FitLoop.on_save_checkpoint`` stores
``CombinedLoader._state_dicts()`` under ``loops.fit_loop.state_dict.combined_loader`` and
``FitLoop.setup_data`` hands them back before the first ``iter()`` of a resumed run. A
plain ``DataLoader`` is not stateful, so a run resumed mid-epoch would see the epoch's
first batches again (Lightning warns about it and goes on).

The order of epoch ``e`` is a pure function of ``(seed, e)`` (``DistributedSampler``
draws its permutation from a generator seeded with ``seed + e``), so the state is three
numbers: the seed, the epoch and how many batches of it were handed out. Resuming
rebuilds the epoch's order and skips those batches. The sampler is a
``DistributedSampler``, so under DDP Lightning leaves it in place instead of wrapping it,
and each rank resumes its own shard.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, DistributedSampler

from lightning_rlhf.data.length_grouping import group_by_length
from lightning_rlhf.data.step_tokens import with_step_tokens

log = logging.getLogger(__name__)


class ResumableSampler(DistributedSampler):
    """Shuffles with ``(seed, epoch)``; can start an epoch ``skip_batches`` batches in."""

    def __init__(
        self, dataset, batch_size: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
        lengths: Sequence[int] | None = None,
    ):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.batch_size = batch_size
        self.lengths = lengths  # given: batches of similar length (data.length_grouping)
        self._resume: tuple[int, int] | None = None  # (epoch, batches to skip), used once
        self.start_batch = 0  # where the epoch being iterated started

    def batches_per_epoch(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def resume_at(self, epoch: int, batches: int) -> None:
        self.set_epoch(epoch)
        self._resume = (epoch, batches)

    def __iter__(self):
        indices = list(super().__iter__())
        if self.lengths is not None:
            indices = group_by_length(indices, self.lengths, self.batch_size, self.seed + self.epoch)
        self.start_batch = 0
        # Lightning sets the epoch after a resumed run's first iter(): the skip applies only
        # if the epoch it was meant for is the one being iterated.
        if self._resume is not None and self._resume[0] == self.epoch:
            self.start_batch = self._resume[1]
            indices = indices[self.start_batch * self.batch_size :]
        self._resume = None
        return iter(indices)


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over a ``ResumableSampler`` whose state is (seed, epoch, position).

    The position counts batches *handed to the loop*, not indices drawn by the sampler:
    with worker processes the sampler runs ahead by ``prefetch_factor * num_workers``
    batches, and those were not trained on yet.

    Each batch with a ``completion_mask`` carries ``loss_tokens``: the completion tokens of
    its ``accumulate``-batch accumulation window (see ``data.step_tokens``).
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
        accumulate: int = 1,
        lengths: Sequence[int] | None = None,
        **kwargs,
    ):
        sampler = ResumableSampler(
            dataset, batch_size, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, lengths=lengths
        )
        # Worker seeds come from this generator, not the global RNG, so starting an
        # iterator (which a resumed run does at a different moment) leaves the global RNG alone.
        generator = torch.Generator().manual_seed(seed)
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, generator=generator, **kwargs)
        self._yielded = 0
        self.accumulate = accumulate

    def __iter__(self):
        self._yielded = 0
        batches = super().__iter__()
        first = next(batches, None)  # draws the epoch's order: sampler.start_batch is known after it
        if first is None:
            return
        for batch in with_step_tokens(itertools.chain([first], batches), self.accumulate, self.sampler.start_batch):
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict:
        sampler: ResumableSampler = self.sampler
        return {"seed": sampler.seed, "epoch": sampler.epoch, "batches": sampler.start_batch + self._yielded}

    def load_state_dict(self, state: dict) -> None:
        sampler: ResumableSampler = self.sampler
        if state["seed"] != sampler.seed:
            log.warning(
                "the checkpoint's data order came from seed %d, this run's from seed %d: the resumed run sees a "
                "different order", state["seed"], sampler.seed,
            )
        epoch, batches = state["epoch"], state["batches"]
        if batches >= sampler.batches_per_epoch():  # saved at the end of an epoch: start the next one
            epoch, batches = epoch + 1, 0
        sampler.resume_at(epoch, batches)

"""Checkpoints that hold a whole run and survive crashes.

What a checkpoint holds (Lightning's part, then ours):

- ``state_dict``: the trainable weights (PolicyModule drops the frozen reference, which
  is rebuilt from its settings); ``hyper_parameters``: plain data, so the file loads with
  ``torch.load(weights_only=True)``, which is also how Lightning 2.6 on torch >= 2.6
  loads it on ``fit(ckpt_path=...)``;
- ``optimizer_states``, ``lr_schedulers``, ``loops`` (epoch, step and batch counters),
  and in ``loops.fit_loop.state_dict.combined_loader`` the data position (seed, epoch,
  batches handed out: ``data.sampler.ResumableDataLoader``);
- ``rng_states`` (torch, CUDA, Python, NumPy): Lightning saves none, and an online
  algorithm samples; ``rng_states_at_batch_start`` too in a checkpoint saved because the
  reward server went down (``OutageCheckpoint``);
- ``algorithm_state``: the plugin's ``state_dict()`` when it has one (e.g. an adaptive
  KL controller), given back with ``load_state_dict``; written and read by the module
  (``PolicyModule.on_save_checkpoint``), so a checkpoint loaded without these callbacks
  has it too.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_rlhf.rewards.remote import RewardServerUnavailable

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write a checkpoint to a temporary file beside its target, fsync, then ``os.replace``.

    ``os.replace`` within one directory is atomic on POSIX, so a crash (or a kill) while
    saving leaves the previous file whole: "last.ckpt" is either the old run state or the
    new one, never half of each. The fsyncs make the rename durable after a power loss
    too. Remote paths (``s3://``...) go through Lightning's own writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not every platform opens directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` with what resuming needs by default.

    ``save_last=True``, and the folder is ``<default_root_dir>/checkpoints`` rather than
    one under the logger's run id (a resumed W&B run gets a new id, so ``--ckpt_path
    last`` would not find the old folder). Every other argument is ``ModelCheckpoint``'s.
    """

    def __init__(self, *args, save_last: bool | str | None = True, **kwargs):
        super().__init__(*args, save_last=save_last, **kwargs)

    def _stable_dirpath(self, trainer: L.Trainer) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._stable_dirpath(trainer)
        super().setup(trainer, pl_module, stage)

    def _find_last_checkpoints(self, trainer: L.Trainer) -> set[str]:
        self._stable_dirpath(trainer)
        return super()._find_last_checkpoints(trainer)


class RunState(Callback):
    """Saves and restores what Lightning's checkpoint leaves out: the RNG states (the
    module saves its plugin's own state).

    RNG states are put back at ``on_train_start``, the moment the uninterrupted run was at
    when it saved: after the data loader's iterator exists (the training loader draws its
    worker seeds from its own generator, so that moment is free to move).
    """

    def __init__(self) -> None:
        self._rng_to_restore: dict | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint["rng_states"] = capture_rng_states()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._rng_to_restore = checkpoint.get("rng_states")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        restore_data_position(trainer)
        if self._rng_to_restore is not None:
            restore_rng_states(self._rng_to_restore)
            self._rng_to_restore = None


def restore_data_position(trainer: L.Trainer) -> None:
    """Give the training loader its saved position, if Lightning has not.

    Lightning hands the saved loader states over in ``FitLoop.setup_data``, but only when
    that runs after the checkpoint is restored. A module whose ``configure_optimizers``
    reads ``trainer.estimated_stepping_batches`` (ours do: the schedule needs the step
    count) makes ``setup_data`` run before the restore, and the later call returns early,
    so the states would be dropped and the run would restart its epoch. Nothing has been
    drawn from the loader yet at ``on_train_start`` (``ResumableDataLoader`` iterates
    lazily), so loading them here is in time.
    """
    fit_loop = trainer.fit_loop
    states = fit_loop._combined_loader_states_to_load
    if states and fit_loop._combined_loader is not None:
        fit_loop._combined_loader._load_state_dicts(states)
        fit_loop._combined_loader_states_to_load = []


def capture_rng_states() -> dict:
    """RNG states as plain data and tensors, so ``torch.load(weights_only=True)`` reads them."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "python": _to_plain(random.getstate()),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(_to_tuple(states["python"]))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _to_plain(value):
    return [_to_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def _to_tuple(value):
    return tuple(_to_tuple(v) for v in value) if isinstance(value, list) else value


class PreemptionCheckpoint(Callback):
    """On SIGTERM (a preempted or cancelled job), write ``last.ckpt`` before exiting.

    Lightning already installs a SIGTERM handler on every platform but Windows (not only
    SLURM): it sets ``trainer.received_sigterm``, the loop finishes the current batch and
    raises ``SIGTERMException``. Only SLURM's requeue path saves anything; this callback
    saves on that exception whatever the cluster, at a batch boundary, so the checkpoint
    is consistent and ``--ckpt_path last`` resumes from it.
    """

    def __init__(self, filename: str = "last"):
        """
        Args:
            filename: file name, without ``.ckpt``, in the checkpoint folder
        """
        self.filename = filename
        self.saved_path: str | None = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) and not trainer.received_sigterm:
            return
        directory = _checkpoint_dir(trainer)
        path = os.path.join(directory, f"{self.filename}.ckpt")
        trainer.save_checkpoint(path)
        self.saved_path = path
        log.warning("SIGTERM: saved %s; resume with --ckpt_path last (or this path)", path)


class OutageCheckpoint(Callback):
    """When the reward server stays down, save ``last.ckpt`` as it was before the rollout
    that failed, so that a resumed run scores that rollout once and ends as an
    uninterrupted run would.

    The failure comes in the middle of a batch: ``RewardServerUnavailable`` from the
    rollout inside ``training_step``, which has drawn from the RNGs and taken the batch
    from the loader, but run no optimiser step yet (the online module scores a rollout
    before it learns from it). The weights, optimiser, scheduler and ``global_step`` are
    still those of the last step; what the batch has changed is cheap to put back: the
    RNG states, the plugin's own state and the reward sources' (running moments a
    source may have updated while scoring part of the batch; all kept at
    ``on_train_batch_start``), the loader's position and the loop's counters
    (:func:`rewind_batch_in_flight`).

    The RNG states are given back at the same point they were taken, the resumed run's
    first ``on_train_batch_start``, not at ``on_train_start`` as ``RunState`` does: on the
    way there Lightning may skip the validation that already ran, and creating its
    iterator draws from the global RNG.
    """

    def __init__(self, filename: str = "last"):
        """
        Args:
            filename: file name, without ``.ckpt``, in the checkpoint folder
        """
        self.filename = filename
        self.saved_path: str | None = None
        self._before_batch: dict | None = None  # global_step, rng, algorithm: as the batch in flight found them
        self._rng_to_restore: dict | None = None
        self._saving = False

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._rng_to_restore = checkpoint.get("rng_states_at_batch_start")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self._rng_to_restore is not None:
            restore_rng_states(self._rng_to_restore)
            self._rng_to_restore = None
        if getattr(pl_module, "reward_source", None) is None:
            return  # a module that scores nothing waits on no server: no snapshot at every step
        algorithm = getattr(pl_module, "algorithm", None)
        has_state = callable(getattr(algorithm, "state_dict", None))
        sources = pl_module.reward_sources() if callable(getattr(pl_module, "reward_sources", None)) else {}
        self._before_batch = {
            "global_step": trainer.global_step,
            "rng": capture_rng_states(),
            "algorithm": copy.deepcopy(algorithm.state_dict()) if has_state else None,
            "rewards": {name: copy.deepcopy(source.state_dict()) for name, source in sources.items()},
        }

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        self._before_batch = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, RewardServerUnavailable):
            return
        before = self._before_batch
        if before is None:  # between batches (validation): the last regular checkpoint is where to resume
            return
        if before["global_step"] != trainer.global_step:
            log.warning("the reward server failed after an optimiser step of this batch: no checkpoint saved for it")
            return
        # The run ends here: put the state from before the batch back into the process and
        # save as every checkpoint is saved (RunState reads the RNG, the module its plugin's
        # and its reward sources' state).
        restore_rng_states(before["rng"])
        if before["algorithm"] is not None:
            pl_module.algorithm.load_state_dict(before["algorithm"])
        for name, source in pl_module.reward_sources().items():
            source.load_state_dict(before["rewards"][name])
        path = os.path.join(_checkpoint_dir(trainer), f"{self.filename}.ckpt")
        self._saving = True
        try:
            trainer.save_checkpoint(path)
        finally:
            self._saving = False
        self.saved_path = path
        exception.checkpoint, exception.step = path, trainer.global_step
        log.error("%s", exception)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if self._saving:
            rewind_batch_in_flight(checkpoint["loops"]["fit_loop"])
            checkpoint["rng_states_at_batch_start"] = self._before_batch["rng"]


def rewind_batch_in_flight(fit_loop: dict) -> None:
    """Make a fit loop's saved state (``checkpoint["loops"]["fit_loop"]``, taken while a
    batch is in flight) the one a checkpoint at the end of the batch before holds.

    That checkpoint is saved in ``on_train_batch_end``, before Lightning counts the batch
    completed and stepped, and a resumed run counts it then. So the in-flight batch's
    counts (``ready``, ``started``, one ahead) go back to the finished batches, and
    ``completed`` and ``_batches_that_stepped`` one further back, for the resumed run to
    add. At an epoch's first batch that makes the epoch's ``completed`` -1, which the
    resume brings to 0 within the same epoch: the state of the epoch's last batch would
    instead send Lightning through its end-of-epoch path, which runs the epoch-start
    hooks again without counting the epoch as started. Both ``total`` and ``current``
    change: Lightning reads how a run stopped from ``total``.
    """
    progress = fit_loop["epoch_loop.batch_progress"]
    for counts in (progress["total"], progress["current"]):
        finished = counts["completed"]
        counts["ready"] = counts["started"] = counts["processed"] = finished
        counts["completed"] = finished - 1
    progress["is_last_batch"] = False  # the batch before the one in flight had one after it
    fit_loop["epoch_loop.state_dict"]["_batches_that_stepped"] -= 1
    loader_states = fit_loop["state_dict"].get("combined_loader", [])
    fit_loop["state_dict"]["combined_loader"] = [_one_batch_back(state) for state in loader_states]


def _one_batch_back(state: dict) -> dict:
    """A ``ResumableDataLoader``'s position counts the batches handed out, the one in flight included."""
    if set(state) == {"seed", "epoch", "batches"} and state["batches"] > 0:
        return {**state, "batches": state["batches"] - 1}
    log.warning("a training loader's position (%s) is not a ResumableDataLoader's: the resumed run starts after the "
                "batch whose rollout failed", state)
    return state


def _checkpoint_dir(trainer: L.Trainer) -> str:
    callback = trainer.checkpoint_callback
    if callback is not None and getattr(callback, "dirpath", None):
        return callback.dirpath
    return os.path.join(trainer.default_root_dir, "checkpoints")

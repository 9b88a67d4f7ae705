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
  algorithm samples;
- ``algorithm_state``: the plugin's ``state_dict()`` when it has one (e.g. an adaptive
  KL controller), given back with ``load_state_dict``.
"""

from __future__ import annotations

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
    """Saves and restores what Lightning's checkpoint leaves out: RNG states and the
    algorithm plugin's own state (``state_dict()``/``load_state_dict()``, if it has them).

    RNG states are put back at ``on_train_start``, the moment the uninterrupted run was at
    when it saved: after the data loader's iterator exists (the training loader draws its
    worker seeds from its own generator, so that moment is free to move).
    """

    def __init__(self) -> None:
        self._rng_to_restore: dict | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint["rng_states"] = capture_rng_states()
        algorithm = getattr(pl_module, "algorithm", None)
        if callable(getattr(algorithm, "state_dict", None)):
            checkpoint["algorithm_state"] = algorithm.state_dict()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._rng_to_restore = checkpoint.get("rng_states")
        algorithm = getattr(pl_module, "algorithm", None)
        if "algorithm_state" in checkpoint:
            if not callable(getattr(algorithm, "load_state_dict", None)):
                raise ValueError(
                    f"the checkpoint holds state for the algorithm, but {type(algorithm).__name__} has no load_state_dict()"
                )
            algorithm.load_state_dict(checkpoint["algorithm_state"])

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


def _checkpoint_dir(trainer: L.Trainer) -> str:
    callback = trainer.checkpoint_callback
    if callback is not None and getattr(callback, "dirpath", None):
        return callback.dirpath
    return os.path.join(trainer.default_root_dir, "checkpoints")

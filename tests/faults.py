"""Faults on purpose, for tests of resuming and guarding.

``KillAtStep`` ends the process the way a crash or a scheduler does, at a chosen
optimizer step, from a recipe (``trainer.callbacks``, ``class_path: tests.faults.KillAtStep``),
so the kill happens in a real ``lightning-rlhf fit`` process; run that process with
:func:`subprocess_env` so that it finds this module. ``KillProcessAtStep`` kills another
process at a step instead: a reward server that goes down in the middle of a run.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback


class KillAtStep(Callback):
    """Send ``signal`` to this process when optimizer step ``step`` (1-based) has been taken.

    It runs in ``on_train_batch_end``, before ``ModelCheckpoint``'s (Lightning orders
    checkpoint callbacks last), so with SIGKILL the step it kills at is never saved:
    the last checkpoint is the step before.
    """

    def __init__(self, step: int, signal_name: str = "SIGKILL"):
        """
        Args:
            step: the optimizer step after which the signal is sent
            signal_name: SIGKILL (a crash: nothing runs after it) or SIGTERM (preemption)
        """
        self.step, self.signal_name = step, signal_name

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.signal_name))


def subprocess_env() -> dict[str, str]:
    """This process's environment, with the repository root on ``PYTHONPATH``: a recipe's
    ``tests.faults.KillAtStep`` then imports in a child process started from any folder."""
    root = str(Path(__file__).resolve().parents[1])
    paths = [root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


class KillProcessAtStep(Callback):
    """SIGKILL another process (a reward server) when optimizer step ``step`` has been taken:
    the next rollout finds nobody answering. Its pid is read from ``pid_file`` at that
    moment, so a test can start the process after writing the recipe."""

    def __init__(self, step: int, pid_file: str):
        """
        Args:
            step: the optimizer step after which the process is killed
            pid_file: a file holding the process id
        """
        self.step, self.pid_file = step, pid_file

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(int(Path(self.pid_file).read_text()), signal.SIGKILL)

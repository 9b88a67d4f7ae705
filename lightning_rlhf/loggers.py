"""The W&B logger the recipes use: Lightning's, with checkpoints as artifacts offline too.

Lightning's ``WandbLogger`` refuses ``log_model`` together with ``offline=True``
("checkpoints cannot be uploaded in offline mode"). W&B itself records an artifact in an
offline run and ``wandb sync`` uploads it with the rest of the run, which is how a run
on a cluster without network gets its checkpoints to W&B; so here ``log_model`` means
the same online and offline:

- ``log_model: all``: every checkpoint the checkpoint callback writes, as it is written;
- ``log_model: true``: the checkpoints left at the end of a successful run;
- ``log_model: false`` (default): none.

Each is a ``model`` artifact named ``model-<run id>`` with aliases ``latest`` (and
``best`` for the best one when a metric is monitored).
"""

from __future__ import annotations

from typing import Literal

from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger


class WandbLogger(LightningWandbLogger):
    """``lightning.pytorch.loggers.WandbLogger`` whose ``log_model`` also works offline."""

    def __init__(self, *args, log_model: Literal["all"] | bool = False, offline: bool = False, **kwargs):
        super().__init__(*args, log_model=False, offline=offline, **kwargs)
        self._log_model = log_model

"""Callbacks that make runs resumable, guarded and readable; the CLI adds the defaults.

``default_callbacks(existing)`` is what ``lightning-rlhf fit`` adds to a recipe's
``trainer.callbacks``: ``RunCheckpoint`` (``ModelCheckpoint`` with ``save_last`` in
``<default_root_dir>/checkpoints``), ``RunState`` (RNG and plugin state),
``PreemptionCheckpoint`` (SIGTERM saves ``last.ckpt``), ``OutageCheckpoint`` (a reward
server that stays down saves ``last.ckpt`` from before the failed rollout) and
``DivergenceGuard``. A recipe configures one by listing it (its instance replaces the
default of the same class).
"""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_rlhf.callbacks.checkpointing import (
    AtomicCheckpointIO,
    OutageCheckpoint,
    PreemptionCheckpoint,
    RunCheckpoint,
    RunState,
)
from lightning_rlhf.callbacks.divergence import DivergenceError, DivergenceGuard
from lightning_rlhf.callbacks.samples import SampleCompletionsCallback

__all__ = [
    "AtomicCheckpointIO",
    "DivergenceError",
    "DivergenceGuard",
    "OutageCheckpoint",
    "PreemptionCheckpoint",
    "RunCheckpoint",
    "RunState",
    "SampleCompletionsCallback",
    "default_callbacks",
    "default_plugins",
]


def default_callbacks(existing: list[Callback], checkpointing: bool = True) -> list[Callback]:
    """The default callbacks missing from ``existing`` (matched by class; any
    ``ModelCheckpoint`` in ``existing`` stands for ``RunCheckpoint``)."""
    defaults: list[Callback] = [RunState(), PreemptionCheckpoint(), OutageCheckpoint(), DivergenceGuard()]
    if checkpointing:
        defaults.insert(0, RunCheckpoint())
    present = tuple(type(c) for c in existing)
    missing = []
    for callback in defaults:
        kind = ModelCheckpoint if isinstance(callback, ModelCheckpoint) else type(callback)
        if not any(issubclass(p, kind) for p in present):
            missing.append(callback)
    return missing


def default_plugins(existing: list) -> list:
    """``AtomicCheckpointIO`` unless the recipe names a checkpoint IO of its own."""
    from lightning.fabric.plugins import CheckpointIO

    if any(isinstance(p, CheckpointIO) for p in existing):
        return []
    return [AtomicCheckpointIO()]

"""``lightning-rlhf plot RUN_DIR...``: several runs on one figure (``lightning_rlhf.plot_runs``
reads the folders and draws)."""

from __future__ import annotations

from lightning_rlhf.plot_runs import plot_command


def plot(argv: list[str]) -> int:
    """Frontiers of pipelines and training curves of W&B offline runs, on one figure each."""
    return plot_command(argv)

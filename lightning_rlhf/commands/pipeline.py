"""``lightning-rlhf pipeline``: the stages of a pipeline YAML, one after another (the runner
and its arguments are ``lightning_rlhf.pipeline``'s)."""

from __future__ import annotations

from lightning_rlhf.pipeline import pipeline_command


def pipeline(argv: list[str]) -> int:
    """Run the stages of a pipeline YAML (build, prompts, label, fit, evaluate) one after another."""
    return pipeline_command(argv)

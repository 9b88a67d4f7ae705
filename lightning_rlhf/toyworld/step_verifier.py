"""The checkable world's verifier as a step reward source: the gold step labels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_rlhf.data.stepwise import split_steps
from lightning_rlhf.rewards.base import RewardSource
from lightning_rlhf.rewards.steps import Aggregation, aggregate_steps
from lightning_rlhf.toyworld.arithmetic import STEP_SEPARATOR, label_steps, parse_problem


class ArithmeticStepVerifier(RewardSource):
    """Scores every step of a worked sum 1 (right on its own, ``arithmetic.label_steps``) or
    0, and a completion by ``aggregation`` of its steps: the step feedback a perfect process
    reward model would give, for comparing step rewards with outcome rewards apart from
    how well a PRM learned them. A completion with no step scores 0."""

    step_separator = STEP_SEPARATOR

    def __init__(self, aggregation: Aggregation = "min"):
        """
        Args:
            aggregation: min, product or last: how step scores become the completion's
        """
        if aggregation not in ("min", "product", "last"):
            raise ValueError(f"aggregation must be min, product or last, got {aggregation!r}")
        self.aggregation = aggregation

    def step_scores(self, prompts: Sequence[str], completions: Sequence[str]) -> list[list[float]]:
        return [[float(label) for label in label_steps(parse_problem(p), split_steps(c, STEP_SEPARATOR))] if c.strip() else []
                for p, c in zip(prompts, completions, strict=True)]

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> Tensor:
        scores = [aggregate_steps(s, self.aggregation) if s else 0.0 for s in self.step_scores(prompts, completions)]
        return torch.tensor(scores, dtype=torch.float32)

"""Epoch metrics of a reward model: pairwise accuracy, margin, reward mean and std.

They are torchmetrics ``Metric`` objects, so Lightning accumulates them over an epoch,
reduces them across devices and resets them when it logs them. Both are written here
rather than taken from ``torchmetrics.MeanMetric`` because MeanMetric either checks
for NaNs with a host-device synchronisation per update, or (``nan_strategy="disable"``)
ignores the weights that mask out the pairs a ranking batch does not form.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_rlhf.data.ranking import ranked_pair_mask


class WeightedMean(Metric):
    """sum(w * x) / sum(w) over everything seen since the last reset."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("weight", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: Tensor, weights: Tensor | None = None) -> None:
        values = values.detach().double()
        weights = torch.ones_like(values) if weights is None else weights.detach().double()
        self.total += (values * weights).sum()
        self.weight += weights.sum()

    def compute(self) -> Tensor:
        return (self.total / self.weight.clamp(min=1e-12)).float()


class StandardDeviation(Metric):
    """Population standard deviation of every value seen since the last reset."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # Float64 sums keep E[x^2] - E[x]^2 accurate over an epoch of rewards.
        for name in ("count", "total", "total_squares"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: Tensor) -> None:
        values = values.detach().double()
        self.count += values.numel()
        self.total += values.sum()
        self.total_squares += (values**2).sum()

    def compute(self) -> Tensor:
        count = self.count.clamp(min=1)
        variance = self.total_squares / count - (self.total / count) ** 2
        return variance.clamp(min=0).sqrt().float()


def pair_differences(batch: dict[str, Tensor], rewards: Tensor) -> tuple[Tensor, Tensor]:
    """``r(better) - r(worse)`` for every labelled pair of a batch, and each pair's weight.

    Preference batches hold chosen rows then rejected rows: B pairs of weight 1. Ranking
    batches (``group_index``/``rank``) give an ``[N, N]`` grid weighted by the pair mask.
    """
    if "group_index" in batch:
        mask = ranked_pair_mask(batch["group_index"], batch["rank"])
        return rewards.unsqueeze(1) - rewards.unsqueeze(0), mask.to(rewards.dtype)
    chosen, rejected = rewards.chunk(2)
    return chosen - rejected, torch.ones_like(chosen)


class RewardMetrics(torch.nn.Module):
    """The metrics of one split: ``accuracy`` (share of pairs ordered correctly; a tie
    counts as wrong), ``margin`` (mean r(better) - r(worse)), ``reward_mean``,
    ``reward_std`` (over every scored row)."""

    def __init__(self):
        super().__init__()
        self.accuracy = WeightedMean()
        self.margin = WeightedMean()
        self.reward_mean = WeightedMean()
        self.reward_std = StandardDeviation()

    def update(self, batch: dict[str, Tensor], rewards: Tensor) -> None:
        """Add a batch. Through each metric's forward, which also keeps the batch's own
        value, so a step can be logged as well as the epoch."""
        differences, weights = pair_differences(batch, rewards)
        self.accuracy((differences > 0).float(), weights)
        self.margin(differences, weights)
        self.reward_mean(rewards)
        self.reward_std(rewards)

    def items(self):
        return [("accuracy", self.accuracy), ("margin", self.margin),
                ("reward_mean", self.reward_mean), ("reward_std", self.reward_std)]


class ErrorF1(Metric):
    """F1 of finding wrong steps: a step predicted wrong (score < 0, probability < 1/2) that
    is wrong is a true positive. Counts are summed over the epoch (and across devices)
    before the ratio is taken, so it is the F1 of the whole epoch, not a mean of batch F1s."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name in ("true_positives", "false_positives", "false_negatives"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, predicted_wrong: Tensor, wrong: Tensor) -> None:
        self.true_positives += (predicted_wrong & wrong).sum()
        self.false_positives += (predicted_wrong & ~wrong).sum()
        self.false_negatives += (~predicted_wrong & wrong).sum()

    def compute(self) -> Tensor:
        found = 2 * self.true_positives
        return (found / (found + self.false_positives + self.false_negatives).clamp(min=1e-12)).float()


class StepMetrics(torch.nn.Module):
    """The metrics of a process reward model on one split: ``step_accuracy`` (share of steps
    whose verdict, score >= 0 for right, matches the label), ``error_f1`` (see
    :class:`ErrorF1`), ``step_score_mean``."""

    def __init__(self):
        super().__init__()
        self.step_accuracy = WeightedMean()
        self.error_f1 = ErrorF1()
        self.step_score_mean = WeightedMean()

    def update(self, batch: dict[str, Tensor], scores: Tensor) -> None:
        right = batch["step_labels"] > 0.5
        predicted_right = scores >= 0
        self.step_accuracy((predicted_right == right).float())
        self.error_f1(~predicted_right, ~right)
        self.step_score_mean(scores)

    def items(self):
        return [("step_accuracy", self.step_accuracy), ("error_f1", self.error_f1), ("step_score_mean", self.step_score_mean)]

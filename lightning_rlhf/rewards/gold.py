"""The toy world's gold reward as a reward source: the "human" the offline pipeline aligns to."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_rlhf.rewards.base import RewardSource


class GoldReward(RewardSource):
    """The toy world's gold reward (``lightning_rlhf.toyworld.gold.gold_reward``): how
    positive each completion reads to the VADER sentiment lexicon, in [-1, 1]."""

    def score(self, prompts, completions) -> Tensor:
        # Imported on use: the toy world pulls in its lexicon, which other sources never need.
        from lightning_rlhf.toyworld.gold import gold_reward

        return torch.tensor(gold_reward(list(prompts), list(completions)), dtype=torch.float32)

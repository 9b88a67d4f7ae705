"""The one interface every later stage uses to score text: a reward source.

PPO, rejection sampling, preference collection and evaluation all call
``source.score(prompts, completions)`` on *text*, so the policy and the thing that
scores it need not share a tokenizer.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import Tensor


class RewardSource(ABC):
    """Scores (prompt, completion) pairs; higher is better."""

    @abstractmethod
    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> Tensor:
        """A float tensor ``[N]`` of scores, on the CPU."""

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> Tensor:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        scores = self.score(list(prompts), list(completions))
        if scores.shape != (len(prompts),):
            raise ValueError(f"{type(self).__name__} returned scores of shape {tuple(scores.shape)}, expected ({len(prompts)},)")
        return scores.float()


class FunctionReward(RewardSource):
    """A plain Python function, named by its dotted path (``package.module.function``), that
    takes ``(prompts, completions)`` and returns a list of floats: rule-based rewards."""

    def __init__(self, function: str):
        """
        Args:
            function: dotted path, e.g. ``lightning_rlhf.toyworld.gold.gold_reward``
        """
        self.function = function
        self._callable = import_function(function)

    def score(self, prompts, completions) -> Tensor:
        return torch.as_tensor(self._callable(prompts, completions), dtype=torch.float32)


def import_function(path: str) -> Callable:
    module_name, _, attribute = path.rpartition(".")
    if not module_name:
        raise ValueError(f"expected a dotted path like package.module.function, got {path!r}")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import reward function {path!r}: {e}") from None
    if not callable(function):
        raise ValueError(f"{path!r} is not callable")
    return function

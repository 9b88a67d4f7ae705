"""The one interface every later stage uses to score text: a reward source.

PPO, rejection sampling, preference collection and evaluation all call
``source(prompts, completions)`` on *text*, so the policy and the thing that scores it
need not share a tokenizer. Online training also passes ``columns``: the prompt rows'
other columns (a reference ``answer``, ``tests``, metadata), one dict per completion, for
sources that read them (``reads_columns``): a function reward gets each column it names
as a keyword argument, a list with one value per completion (as TRL's reward functions do).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor


class RewardSource(ABC):
    """Scores (prompt, completion) pairs; higher is better.

    A source that learns from what it scores (running statistics that whiten its scores)
    keeps that state in :meth:`state_dict`, which the policy module saves in its
    checkpoints, and leaves it untouched while :attr:`training` is False (the module calls
    :meth:`eval` for validation rollouts, :meth:`train` after them). A composite source
    lists the sources it is built from in :meth:`parts`, and both reach them.
    """

    #: ``score`` takes ``columns=`` (the prompt rows' other columns, one dict per completion)
    reads_columns: bool = False
    #: False: score without updating any state (validation)
    training: bool = True

    def parts(self) -> dict[str, RewardSource]:
        """The sources this one is built from, by name (a composite's); none for a leaf."""
        return {}

    def train(self, mode: bool = True) -> RewardSource:
        """Let scoring update the source's state (``mode`` True), or freeze it; its parts too."""
        self.training = mode
        for part in self.parts().values():
            part.train(mode)
        return self

    def eval(self) -> RewardSource:
        return self.train(False)

    def state_dict(self) -> dict[str, Any]:
        """What scoring has taught the source, as plain data (a checkpoint loads with
        ``weights_only=True``); its parts' under ``parts``. Empty for a stateless source."""
        parts = {name: state for name, part in self.parts().items() if (state := part.state_dict())}
        return {"parts": parts} if parts else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put back what :meth:`state_dict` returned; a subclass takes its own keys out first."""
        unexpected = sorted(set(state) - {"parts"})
        if unexpected:
            raise ValueError(f"the saved reward state has {unexpected}, which {type(self).__name__} does not keep: "
                             "was the reward spec changed?")
        parts = self.parts()
        unknown = sorted(set(state.get("parts", {})) - set(parts))
        if unknown:
            raise ValueError(f"the saved reward state has parts {unknown}, which {type(self).__name__} does not have "
                             f"(it has {sorted(parts) or 'none'}): was the reward spec changed?")
        for name, part_state in state.get("parts", {}).items():
            parts[name].load_state_dict(part_state)

    @abstractmethod
    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> Tensor:
        """A float tensor ``[N]`` of scores, on the CPU."""

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], columns: Sequence[dict] | None = None) -> Tensor:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        if columns is not None and len(columns) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(columns)} rows of columns")
        if self.reads_columns:
            scores = self.score(list(prompts), list(completions), columns=None if columns is None else list(columns))
        else:
            scores = self.score(list(prompts), list(completions))
        if scores.shape != (len(prompts),):
            raise ValueError(f"{type(self).__name__} returned scores of shape {tuple(scores.shape)}, expected ({len(prompts)},)")
        return scores.float()


class FunctionReward(RewardSource):
    """A plain Python function, named by its dotted path (``package.module.function``), that
    takes ``(prompts, completions)`` and returns a list of floats: rule-based rewards.

    A function that names other parameters (``def correct(prompts, completions, answer)``)
    or takes ``**columns`` gets those columns of the prompt rows, each as a list with one
    value per completion; a column a row lacks is None there. An ``async def`` function is
    awaited. A function may return None for a completion it cannot score (an answer it
    cannot parse): that score is NaN, and the online plugins leave the sample out."""

    reads_columns = True

    def __init__(self, function: str):
        """
        Args:
            function: dotted path, e.g. ``lightning_rlhf.toyworld.gold.gold_reward``
        """
        self.function = function
        self._callable = import_function(function)
        parameters = list(inspect.signature(self._callable).parameters.values())[2:]
        self._takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters)
        self._named = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        self._required = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is p.empty]

    def score(self, prompts, completions, columns: list[dict] | None = None) -> Tensor:
        kwargs = self._column_arguments(columns or [{} for _ in prompts])
        result = self._callable(prompts, completions, **kwargs)
        if inspect.isawaitable(result):
            result = asyncio.run(_awaited(result))
        return torch.tensor([math.nan if value is None else float(value) for value in result], dtype=torch.float32)

    def _column_arguments(self, columns: list[dict]) -> dict[str, list]:
        present = {key for row in columns for key in row}
        missing = [name for name in self._required if name not in present]
        if missing:
            raise ValueError(f"reward function {self.function} needs the column(s) {missing}, which the prompt rows "
                             f"do not have (they have {sorted(present) or 'no other column'})")
        names = present if self._takes_any else present & set(self._named)
        return {name: [row.get(name) for row in columns] for name in sorted(names)}


async def _awaited(awaitable):
    return await awaitable


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

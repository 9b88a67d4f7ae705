"""What an alignment algorithm is, as the modules see it.

A plugin says *what* is optimised; the module that runs it owns the models, the
optimiser and the loop. A plugin never calls ``backward()``, steps an optimiser or logs:
it returns a :class:`LossOutput` and the module does the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

import torch
from torch import Tensor

DataKind = Literal["sft", "preference", "unpaired", "ranking", "prompt"]
Stage = Literal["policy", "reward"]


@dataclass
class LossOutput:
    """A scalar loss to minimise and the metrics to log beside it (detached scalars)."""

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class SequenceLogps:
    """Per-token log-probabilities of the completion tokens of N sequences.

    ``token_logps[i, t]`` is log p(token t+1 | tokens <= t) for sequence i, and is 0 where
    ``mask`` is False (prompt, padding). Never full-vocabulary logits: those stay inside
    the module.
    """

    token_logps: Tensor  # [N, T-1] float
    mask: Tensor  # [N, T-1] bool

    def sum(self) -> Tensor:
        """Summed log-probability of each completion, [N]."""
        return self.token_logps.sum(-1)

    def lengths(self) -> Tensor:
        """Number of completion tokens in each sequence, [N]."""
        return self.mask.sum(-1)

    def mean(self) -> Tensor:
        """Length-averaged log-probability of each completion, [N]."""
        return self.sum() / self.lengths().clamp(min=1)

    def chunk(self, chunks: int) -> tuple[SequenceLogps, ...]:
        """Split along the batch, e.g. ``chosen, rejected = logps.chunk(2)``."""
        return tuple(
            SequenceLogps(t, m)
            for t, m in zip(self.token_logps.chunk(chunks), self.mask.chunk(chunks), strict=True)
        )


class PolicyContext(Protocol):
    """What :class:`~lightning_rlhf.PolicyModule` lends a plugin, and all it may touch."""

    def policy_logps(self, batch: dict[str, Tensor]) -> SequenceLogps:
        """Log-probs of the batch's completions under the trained policy (with grad).

        For preference data the batch holds chosen then rejected sequences, and both go
        through the model in one forward pass.
        """
        ...

    def reference_logps(self, batch: dict[str, Tensor]) -> SequenceLogps:
        """The same under the frozen reference (a copy, the policy with LoRA adapters
        disabled, or a cache); no grad."""
        ...


class Algorithm:
    """Base class of every alignment plugin.

    Subclasses set the class variables below, take their hyperparameters (and only
    those) as typed, documented constructor arguments, which become recipe keys, and
    implement :meth:`loss`.
    """

    #: the registered name, set by ``register_algorithm``
    name: ClassVar[str] = ""
    #: which module trains it
    stage: ClassVar[Stage] = "policy"
    #: the shape of data it reads
    data: ClassVar[DataKind]
    #: needs frozen reference log-probs (the module loads no reference model otherwise)
    needs_reference: ClassVar[bool] = False
    #: needs a reward source (online algorithms)
    needs_reward: ClassVar[bool] = False
    #: needs a critic / value head
    needs_value: ClassVar[bool] = False

    def loss(self, ctx: Any, batch: dict[str, Tensor]) -> LossOutput:
        raise NotImplementedError

    @classmethod
    def summary(cls) -> str:
        """The first line of the class docstring."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    @classmethod
    def capabilities(cls) -> list[str]:
        flags = {"reference": cls.needs_reference, "reward": cls.needs_reward, "value": cls.needs_value}
        return [name for name, on in flags.items() if on]


class OnlineAlgorithm(Algorithm):
    """An algorithm that generates its own data: ``rollout`` then ``loss`` over it."""

    data: ClassVar[DataKind] = "prompt"

    @torch.no_grad()
    def rollout(self, ctx: Any, prompts: dict[str, Tensor]) -> Any:
        raise NotImplementedError


def hyperparameters(algorithm: Algorithm) -> dict[str, Any]:
    """The constructor arguments of a plugin instance, read back from its attributes.

    Plugins store each constructor argument under its own name (the contract test checks
    this), so an instance can be written to a checkpoint or a run config as plain data
    and rebuilt from it.
    """
    import inspect

    parameters = inspect.signature(type(algorithm).__init__).parameters
    names = [n for n, p in parameters.items() if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return {name: getattr(algorithm, name) for name in names}


def algorithm_spec(algorithm: Algorithm) -> dict[str, Any]:
    """``{"class_path": name, "init_args": {...}}``, as a recipe writes it."""
    return {"class_path": algorithm.name or f"{type(algorithm).__module__}.{type(algorithm).__qualname__}",
            "init_args": hyperparameters(algorithm)}

"""What an alignment algorithm is, as the modules see it.

A plugin says *what* is optimised; the module that runs it owns the models, the
optimiser and the loop. A plugin never calls ``backward()``, steps an optimiser or logs:
it returns a :class:`LossOutput` and the module does the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import torch
from torch import Tensor

if TYPE_CHECKING:  # for the annotations only: rollout.py pulls in transformers
    from lightning_rlhf.rollout import Rollout

DataKind = Literal["sft", "preference", "unpaired", "ranking", "prompt", "stepwise"]
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
    entropy: Tensor | None = None  # [N, T-1], when asked for: entropy of each position's next-token distribution

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


class OnlineContext(PolicyContext, Protocol):
    """What :class:`~lightning_rlhf.OnlinePolicyModule` lends an online plugin's ``rollout``
    and ``loss``, and all they may touch. ``rollout`` runs under ``torch.no_grad`` (the
    module's promise), where the module scores in pieces of ``online.rollout_batch_size`` rows."""

    #: the policy's tokenizer (decoding, special tokens)
    tokenizer: Any
    #: where the policy lives; every tensor the module returns is on it
    device: torch.device
    #: False during a validation rollout (statistics such as score moments must not move)
    training: bool

    def policy_logps(self, batch: dict[str, Tensor], temperature: float = 1.0, entropy: bool = False) -> SequenceLogps:
        """Per-token log-probs of the batch's completions under the policy, scored under
        ``softmax(logits / temperature)`` (the distribution sampled from); with grad unless
        in a rollout. ``entropy``: also each position's entropy (``SequenceLogps.entropy``)."""
        ...

    def reference_logps(self, batch: dict[str, Tensor], temperature: float = 1.0) -> SequenceLogps:
        """The same under the frozen reference; no grad. Only for a plugin whose
        ``needs_reference`` is true."""
        ...

    def generate(self, prompt_ids: list[list[int]], temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 64, n: int = 1) -> Rollout:
        """``n`` sampled completions of each prompt, prompt-major (rows ``i * n`` to
        ``i * n + n - 1`` are prompt i's; an engine may then read each prompt once for its
        group), in the training layout: ``Rollout.batch`` (``input_ids``, masks,
        ``logp_index``), ``completions`` (text), ``finished`` (ended with EOS) and ``lengths``."""
        ...

    def reward(self, prompts: list[str], completions: list[str], columns: list[dict] | None = None) -> Tensor:
        """``[N]`` float score of each completion from the module's reward source, NaN where
        the source left a sample out; ``columns``: each prompt row's other columns."""
        ...

    def step_rewards(self, prompts: list[str], rollout: Rollout) -> tuple[Tensor, tuple[list[list[float]], list[list[int]]]]:
        """For a reward source that scores every step: each completion's aggregate ``[N]``,
        and per completion its step scores and the ``policy_logps`` columns that end them."""
        ...

    def online_process_rewards(self, rollout: Rollout, outcomes: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """For a reward source that learns from the rollouts (``rewards.OnlineImplicitPRM``):
        its PRM updated once on this rollout with ``outcomes`` ``[N]`` as labels (while
        training), then ``[N, T-1]`` per-token process rewards aligned with ``policy_logps``,
        and the update's metrics."""
        ...

    def values(self, batch: dict[str, Tensor]) -> Tensor:
        """``[N, T-1]`` critic values aligned with ``policy_logps`` (with grad unless in a
        rollout). Only for a plugin whose ``needs_value`` is true."""
        ...

    def policy_logps_and_values(self, batch: dict[str, Tensor], temperature: float = 1.0,
                                entropy: bool = False) -> tuple[SequenceLogps, Tensor]:
        """``policy_logps`` and ``values`` together: with a value head on the policy's
        backbone, from one backbone forward. Only for a plugin whose ``needs_value`` is true."""
        ...

    def more_prompts(self, count: int, draw: int) -> dict[str, Any]:
        """``count`` more training prompts, a batch like the data loader's (``prompt_ids``,
        ``prompts``, ``columns``), seeded by the step and ``draw`` (which refill this is)."""
        ...

    @property
    def sum_over_processes(self) -> Callable[[Tensor], Tensor] | None:
        """Sums a tensor over the processes of a data-parallel run (statistics of the whole
        rollout); None with one process."""
        ...


class RewardContext(Protocol):
    """What :class:`~lightning_rlhf.RewardModule` lends a reward-stage plugin."""

    def rewards(self, batch: dict[str, Tensor]) -> Tensor:
        """``[N]`` float32 scalar reward of every row, one forward pass, with grad: for
        preference data chosen rows then rejected rows; for ranking data see
        ``lightning_rlhf.data.ranking``."""
        ...

    def step_rewards(self, batch: dict[str, Tensor]) -> Tensor:
        """``[S]`` float32 score (a logit) at each of the batch's step positions
        (``step_index``, see ``lightning_rlhf.data.stepwise``), one forward pass, with grad;
        for plugins that declare ``scores_steps``."""
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
    #: a reward-stage plugin that scores every step of a solution: the reward model is then
    #: a token classifier with one output (``AutoModelForTokenClassification``), read at
    #: each step's last token, instead of a sequence classifier read at the last one
    scores_steps: ClassVar[bool] = False

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


@dataclass
class Experience:
    """What one rollout gathered, row-aligned: N sampled sequences and what the loss needs.

    ``tensors`` holds the training layout of the sampled sequences (``input_ids``,
    ``attention_mask``, ``completion_mask`` ``[N, T]``, right-padded as every other
    batch), per-token quantities ``[N, T-1]`` aligned with :class:`SequenceLogps` (old
    log-probs, advantages, ...) and per-sequence ones ``[N]``. ``prompts`` and
    ``completions`` are the text that was scored; ``metrics`` are the rollout's logged
    statistics (detached scalars).

    ``tensors["group_index"]`` ``[N]`` (optional) says which rows share a prompt (G samples
    of one prompt, a pair): the rows of a group are contiguous, and neither
    :meth:`minibatch_rows` nor the module's micro-batches ever cut a group. Without it each
    row is its own group.
    """

    tensors: dict[str, Tensor]
    prompts: list[str] = field(default_factory=list)
    completions: list[str] = field(default_factory=list)
    scores: Tensor | None = None
    metrics: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.tensors["input_ids"].shape[0]

    @property
    def group_index(self) -> Tensor:
        """``[N]``: rows with the same value share a prompt (each row its own group by default)."""
        groups = self.tensors.get("group_index")
        return groups if groups is not None else torch.arange(len(self), device=self.tensors["input_ids"].device)

    def minibatch_rows(self, size: int) -> list[Tensor]:
        """One epoch of minibatches in a random order (torch's global RNG), as row indices:
        whole groups, shuffled, packed until a minibatch holds ``size`` rows or more (so it
        exceeds ``size`` by less than a group). With one row per group this is
        ``randperm(N)`` cut into ``size``-row pieces."""
        groups = torch.unique_consecutive(self.group_index.cpu(), return_counts=True)[1]
        starts = torch.cumsum(groups, 0) - groups
        minibatches, current = [], []
        for group in torch.randperm(len(groups)).tolist():
            current.extend(range(int(starts[group]), int(starts[group] + groups[group])))
            if len(current) >= size:
                minibatches.append(torch.tensor(current))
                current = []
        if current:
            minibatches.append(torch.tensor(current))
        return minibatches

    def minibatch(self, rows: Tensor | list[int]) -> dict[str, Tensor]:
        """The given rows as a training batch, trimmed of all-padding columns.

        ``loss_tokens`` (completion tokens) and ``loss_rows`` (rows with a completion token
        to score: a plugin leaves a sample out of the loss by clearing its completion mask)
        count the whole minibatch: a loss that divides its sum by them stays exact when the
        module cuts the minibatch into micro-batches for gradient accumulation (the
        micro-batch losses then add up to the minibatch loss).
        """
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.tensors["input_ids"].device)
        batch = {key: value.index_select(0, rows) for key, value in self.tensors.items()}
        batch = trim_padding(batch)
        scored = batch["completion_mask"][:, 1:]
        batch["loss_tokens"] = scored.sum()
        batch["loss_rows"] = scored.any(-1).sum()
        return batch


def trim_padding(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """Cut the columns past the longest row (``[N, T]`` and ``[N, T-1]`` tensors alike) and
    recompute ``logp_index`` for the rows left."""
    from lightning_rlhf.ops import completion_index

    width = int(batch["attention_mask"].sum(-1).max())
    full = batch["input_ids"].shape[1]
    trimmed = {}
    for key, value in batch.items():
        if value.ndim >= 2 and value.shape[1] == full:
            value = value[:, :width]
        elif value.ndim >= 2 and value.shape[1] == full - 1:
            value = value[:, : width - 1]
        trimmed[key] = value
    trimmed["logp_index"] = completion_index(trimmed["completion_mask"])
    return trimmed


class OnlineAlgorithm(Algorithm):
    """An algorithm that generates its own data: ``rollout`` then ``loss`` over minibatches.

    Per batch of prompts the module calls :meth:`rollout` under ``torch.no_grad`` (sample,
    score, old and reference log-probs, values), then, for every minibatch
    :meth:`minibatches` yields, :meth:`loss` with gradient accumulation over micro-batches
    and one optimiser step.
    """

    data: ClassVar[DataKind] = "prompt"
    needs_reward: ClassVar[bool] = True
    #: the metric (a key of the rollout's or the loss's metrics) the progress bar shows
    progress_metric: ClassVar[str] = "objective/scores"
    #: True when the loss is a sum of one term per row over the minibatch's own counts
    #: (``loss_rows``, ``loss_tokens``): a micro-batch may then hold any rows, and
    #: ``online.group_by_length`` puts rows of like length together. False keeps each group
    #: (``group_index``: a pair, a prompt's samples) in one micro-batch.
    rows_apart_in_loss: ClassVar[bool] = False

    @torch.no_grad()
    def rollout(self, ctx: OnlineContext, prompts: dict[str, Any]) -> Experience:
        raise NotImplementedError

    def loss(self, ctx: OnlineContext, batch: dict[str, Tensor]) -> LossOutput:
        raise NotImplementedError

    def minibatches(self, experience: Experience) -> Iterator[dict[str, Tensor]]:
        """The optimiser steps of one rollout, one minibatch each; default: one step on all of it."""
        yield experience.minibatch(list(range(len(experience))))

    #: completions sampled per prompt; the module counts a rollout's rows as prompts x this
    samples_per_prompt: int = 1

    def updates_per_rollout(self, rollout_size: int) -> int:
        """How many minibatches :meth:`minibatches` yields for a rollout of this many sampled
        rows (prompts x :attr:`samples_per_prompt`)."""
        return 1

    def sample_table(self, experience: Experience, rows: int) -> tuple[list[str], list[list]]:
        """Columns and the first ``rows`` rows of the table of samples the module logs
        (W&B) every ``online.sample_table_every_n_steps`` rollouts."""
        rewards = experience.tensors.get("rlhf_reward", experience.scores)
        data = [[experience.prompts[i], experience.completions[i], float(experience.scores[i]), float(rewards[i])]
                for i in range(min(rows, len(experience)))]
        return ["prompt", "completion", "score", "rlhf_reward"], data

    def after_updates(self, experience: Experience) -> None:
        """Called once per training rollout, after its optimiser steps (e.g. to adapt a KL
        coefficient); not called for validation rollouts."""

    def state_dict(self) -> dict[str, Any]:
        """State that is not a hyperparameter (e.g. an adaptive KL coefficient); checkpointed."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def passes_over(experience: Experience, num_iterations: int, minibatch_size: int | None) -> Iterator[dict[str, Tensor]]:
    """``num_iterations`` passes over a rollout in shuffled minibatches of whole groups of
    about ``minibatch_size`` rows (None: the whole rollout), for :meth:`OnlineAlgorithm.minibatches`;
    nothing for an empty rollout (every sample left out)."""
    if len(experience) == 0:
        return
    size = minibatch_size or len(experience)
    for _ in range(num_iterations):
        for rows in experience.minibatch_rows(size):
            yield experience.minibatch(rows)


def passes_updates(rollout_size: int, num_iterations: int, minibatch_size: int | None) -> int:
    """How many minibatches :func:`passes_over` yields for a rollout of ``rollout_size`` rows."""
    return num_iterations * math.ceil(rollout_size / (minibatch_size or rollout_size))


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


def check_data_kind(algorithm: Algorithm, datamodule: Any) -> None:
    """Refuse a data module whose rows are not the kind the algorithm reads."""
    kind = getattr(datamodule, "data_kind", None)
    if kind is not None and kind != algorithm.data:
        raise ValueError(
            f"algorithm {algorithm.name!r} reads {algorithm.data!r} data, "
            f"but the data module {type(datamodule).__name__} gives {kind!r} data"
        )

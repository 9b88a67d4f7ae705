"""Self-training: a policy fine-tuned on its own best samples, phase after phase.

Rejection-sampling fine-tuning (Touvron et al. 2023, "Llama 2", section 3.2.3) and ReST
(Gulcehre et al. 2023, "Reinforced Self-Training for Language Modeling",
arXiv:2308.08998) have one shape: training is a list of *phases*, and before each one

1. **Grow** (when the phase grows): the current policy samples ``K`` completions of every
   prompt, and the module's reward source scores them: the phase's *candidates*;
2. **Select**: the plugin keeps some candidates, from this phase's and, if it wants,
   earlier phases' (:meth:`SelfTrainingAlgorithm.selection_pool`, stateful, then
   :meth:`SelfTrainingAlgorithm.select`, pure);
3. **Improve**: the phase fine-tunes the policy on the kept (prompt, completion) pairs with
   the plugin's loss (the built-ins: SFT's NLL) for ``epochs_per_phase`` epochs, starting
   from the policy the previous phase left.

A plugin says what its phases are and what it keeps; sampling, scoring, the loader and
the files each phase writes are the engine's (``data.self_training``). A candidate whose
sample was cut off at ``max_new_tokens`` is never kept while ``require_eos`` is set: SFT
appends EOS to every completion, so training on a cut-off sample would teach the policy
to stop mid-answer. An empty completion is never kept (the SFT data path drops it).

What a phase keeps is part of the run's state (:meth:`state_dict`, in every checkpoint),
so a resumed run trains on the very rows the interrupted one did, and a plugin's own
state (rejection sampling's pool of best samples, ReST's Grow set) comes back with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from lightning_rlhf.algorithm import Algorithm, DataKind


@dataclass(frozen=True)
class Phase:
    """One Grow(-or-not), Select, Improve cycle."""

    index: int
    name: str
    """folder name of the phase's files, e.g. ``round-2`` or ``grow-1-improve-3``"""
    grow: bool
    """sample new candidates before this phase (else select again from the earlier ones)"""
    num_samples: int
    temperature: float
    threshold: float | None = None
    """keep only candidates whose reward is at least this (None: no floor)"""


@dataclass(frozen=True)
class Candidate:
    """One sampled completion of one prompt, with its reward."""

    prompt_index: int
    """row of the prompt in the training prompts (its identity: prompts may repeat)"""
    prompt: str
    """the prompt as the policy and the reward source read it (chat template applied)"""
    completion: str
    reward: float
    finished: bool = True
    """the policy wrote EOS within ``max_new_tokens``"""
    phase: str = ""
    """the phase that sampled it"""
    sample: int = 0
    """which of that phase's samples of the prompt it is"""

    def to_row(self) -> dict[str, Any]:
        return asdict(self)

    def sft_row(self) -> dict[str, Any]:
        """The SFT format (``prompt``, ``completion``), with the reward and origin beside it."""
        return {"prompt": self.prompt, "completion": self.completion, "reward": self.reward, "phase": self.phase}


def best_per_prompt(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The highest-reward candidate of each prompt, in order of first appearance; among
    equal rewards the earlier candidate wins (so a pool's incumbent keeps its place).

    >>> c = [Candidate(0, "p", "a", 0.1), Candidate(0, "p", "b", 0.9), Candidate(1, "q", "c", 0.2)]
    >>> [x.completion for x in best_per_prompt(c)]
    ['b', 'c']
    """
    best: dict[int, Candidate] = {}
    for candidate in candidates:
        incumbent = best.get(candidate.prompt_index)
        if incumbent is None or candidate.reward > incumbent.reward:
            best[candidate.prompt_index] = candidate
    return list(best.values())


def at_least(candidates: Sequence[Candidate], threshold: float | None) -> list[Candidate]:
    """The candidates whose reward is ``>= threshold`` (all of them when it is None)."""
    return [c for c in candidates if threshold is None or c.reward >= threshold]


@dataclass
class PhaseData:
    """What building a phase produced: the rows it trains on and what they came from."""

    phase: Phase
    selected: list[Candidate]
    grown: list[Candidate] | None = None
    """candidates sampled for this phase (None when it did not grow)"""
    pool_size: int = 0
    """candidates the selection chose among"""
    prompts: int = 0
    grow_seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)


class SelfTrainingAlgorithm(Algorithm):
    """Base class of self-training plugins: grow, select, improve, phase after phase.

    Subclasses implement :meth:`phases` and :meth:`select`, optionally
    :meth:`selection_pool` (and :meth:`state_dict`/:meth:`load_state_dict` for what it
    keeps), and :meth:`loss` on SFT batches of the kept rows. They store
    ``epochs_per_phase``, ``top_p``, ``max_new_tokens`` and ``require_eos`` as
    hyperparameters.
    """

    data: ClassVar[DataKind] = "prompt"
    needs_reward: ClassVar[bool] = True

    epochs_per_phase: int = 1
    top_p: float = 1.0
    max_new_tokens: int = 64
    require_eos: bool = True

    #: the phase the loader serves (None before the first), and the rows it keeps
    current: PhaseData | None = None

    # -- what a plugin defines ------------------------------------------------------------
    def phases(self) -> list[Phase]:
        raise NotImplementedError

    def select(self, candidates: list[Candidate], phase: Phase) -> list[Candidate]:
        """The candidates ``phase`` trains on, chosen among ``candidates`` (pure)."""
        raise NotImplementedError

    def selection_pool(self, phase: Phase, grown: list[Candidate] | None) -> list[Candidate]:
        """The candidates ``phase`` selects among, given what it grew (None if it did not
        grow); may read and update the plugin's state. Default: the phase's own samples."""
        if grown is None:
            raise ValueError(f"phase {phase.name!r} does not grow, and {type(self).__name__} keeps no earlier samples")
        return grown

    def phase_batch(self, batch: dict) -> dict:
        """``batch``, checked to be rows of a phase (SFT batches), not raw prompts."""
        if "input_ids" not in batch:
            raise ValueError(
                f"{self.name or type(self).__name__} trains on each phase's selected samples: "
                "use data class_path lightning_rlhf.data.SelfTrainingDataModule (it reads the same prompt files)"
            )
        return batch

    # -- the schedule -----------------------------------------------------------------------
    def total_epochs(self) -> int:
        return len(self.phases()) * self.epochs_per_phase

    def phase_at_epoch(self, epoch: int) -> Phase:
        phases = self.phases()
        return phases[min(epoch // self.epochs_per_phase, len(phases) - 1)]

    def selectable(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        """The candidates that may be kept at all: scored (a reward may leave one out), non-empty
        and, with ``require_eos``, finished."""
        return [c for c in candidates if not math.isnan(c.reward) and c.completion.strip() and (c.finished or not self.require_eos)]

    # -- grow -------------------------------------------------------------------------------
    @torch.no_grad()
    def grow(self, ctx, prompts: Sequence[dict], phase: Phase, seed: int, rows_per_call: int = 1024) -> list[Candidate]:
        """``phase.num_samples`` completions of each prompt from the current policy, scored.

        ``prompts`` are the prompt data module's rows (``prompt_ids``, ``prompt`` text, and
        ``prompt_index``). Sampling runs in a forked RNG seeded with ``seed``, so it neither
        depends on nor moves the training RNG. ``ctx`` lends ``generate`` and ``reward``.
        """
        jobs = [(row, k) for row in prompts for k in range(phase.num_samples)]
        device = ctx.device
        texts, finished = [], []
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            # Bounded pieces: generate() lays each out as a training batch on the device.
            with tqdm(total=len(jobs), desc=f"{phase.name}: grow", unit="sample", mininterval=2.0, dynamic_ncols=True,
                      disable=None, leave=False) as bar:  # disable=None: quiet when not writing to a terminal
                for start in range(0, len(jobs), rows_per_call):
                    piece = jobs[start : start + rows_per_call]
                    rollout = ctx.generate([row["prompt_ids"] for row, _ in piece], phase.temperature, self.top_p, self.max_new_tokens)
                    texts += rollout.completions
                    finished += rollout.finished.tolist()
                    bar.update(len(piece))
        columns = [row.get("columns", {}) for row, _ in jobs]
        rewards = ctx.reward([row["prompt"] for row, _ in jobs], texts, columns).float().cpu().tolist() if jobs else []
        return [
            # str(): a ChatPrompt's messages were for the reward source; candidates go into
            # checkpoints, which hold plain data only
            Candidate(row["prompt_index"], str(row["prompt"]), text, float(reward), bool(done), phase.name, k)
            for (row, k), text, reward, done in zip(jobs, texts, rewards, finished, strict=True)
        ]

    # -- one phase ------------------------------------------------------------------------------
    def start_phase(self, phase: Phase, grown: list[Candidate] | None, prompts: int = 0, grow_seconds: float = 0.0) -> PhaseData:
        """Select the rows of ``phase`` from what it grew and what the plugin keeps, and
        make it the current phase."""
        pool = self.selection_pool(phase, grown)
        selected = self.select(pool, phase)
        data = PhaseData(phase, selected, grown, len(pool), prompts, grow_seconds)
        data.metrics = phase_metrics(data)
        self.current = data
        return data

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The current phase and the rows it trains on (plain data: checkpoints load with
        ``weights_only=True``); subclasses add what they keep across phases."""
        if self.current is None:
            return {"current": None}
        return {"current": {"index": self.current.phase.index, "selected": [c.to_row() for c in self.current.selected]}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        current = state.get("current")
        if current is None:
            self.current = None
            return
        phase = self.phases()[current["index"]]
        selected = [Candidate(**row) for row in current["selected"]]
        # Restored: the phase's rows are known, its Grow statistics were logged by the first run.
        self.current = PhaseData(phase, selected)


def phase_metrics(data: PhaseData) -> dict[str, float]:
    """What a phase did, as scalars for the logger (``phase/...``)."""

    def mean(values: list[float]) -> float:
        return float(sum(values) / len(values)) if values else float("nan")

    selected = data.selected
    metrics = {
        "phase/index": float(data.phase.index),
        "phase/pool": float(data.pool_size),
        "phase/selected": float(len(selected)),
        "phase/selected_reward": mean([c.reward for c in selected]),
        "phase/selected_prompts": float(len({c.prompt_index for c in selected})),
    }
    if data.phase.threshold is not None:
        metrics["phase/threshold"] = float(data.phase.threshold)
    if data.grown is not None:
        grown = data.grown
        metrics.update({
            "phase/grown": float(len(grown)),
            "phase/grown_reward": mean([c.reward for c in grown]),
            "phase/best_of_k_reward": mean([c.reward for c in best_per_prompt(grown)]),
            "phase/unfinished_fraction": mean([float(not c.finished) for c in grown]),
            "phase/grow_seconds": float(data.grow_seconds),
        })
    return metrics

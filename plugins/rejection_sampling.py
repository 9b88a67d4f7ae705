"""Rejection-sampling fine-tuning (Touvron et al. 2023, "Llama 2: Open Foundation and
Fine-Tuned Chat Models", arXiv:2307.09288, section 3.2.3)."""

from __future__ import annotations

from lightning_rlhf import LossOutput, register_algorithm
from lightning_rlhf.self_training import Candidate, Phase, SelfTrainingAlgorithm, at_least, best_per_prompt
from lightning_rlhf_plugins.sft import SFT

POOLS = ("all", "last")


@register_algorithm("rejection_sampling")
class RejectionSampling(SelfTrainingAlgorithm):
    """Rejection sampling (Llama 2): K samples per prompt, keep the best by reward, fine-tune on it (NLL).

    Round r (one phase): the current policy samples K completions y_1..y_K of every
    prompt x at ``temperature``, the reward source scores them, and x's training row is

        y* = argmax over the pool of r(x, y)        (ties: the earlier candidate)
        kept if r(x, y*) >= threshold

    where the pool is this round's K samples and, with ``pool: all``, the best sample of
    x from every earlier round (Llama 2 kept the top samples of all earlier iterations
    from RLHF-V3 on, after keeping only the last one's regressed); ``pool: last`` uses
    this round's alone. The round then fine-tunes the policy on the kept rows with SFT's
    loss (mean NLL over their completion tokens), for ``epochs_per_phase`` epochs,
    continuing from the policy the last round left. ``rounds: 1`` is Llama 2's offline
    mode: sample K per prompt for the whole prompt set from the starting policy, then
    fine-tune. Llama 2 found the best temperature rises with K.
    """

    def __init__(
        self,
        num_samples: int = 4,
        temperature: float = 1.0,
        threshold: float | None = None,
        rounds: int = 1,
        pool: str = "all",
        epochs_per_phase: int = 1,
        top_p: float = 1.0,
        max_new_tokens: int = 64,
        require_eos: bool = True,
    ):
        """
        Args:
            num_samples: K, completions sampled per prompt and round
            temperature: sampling temperature
            threshold: keep a prompt's best sample only if its reward is at least this
                (in the reward source's units); None: always keep it
            rounds: rounds of sample-select-fine-tune; 1 is the offline mode
            pool: ``all``: a prompt's best sample of every earlier round competes with the
                new ones (Llama 2); ``last``: only this round's samples
            epochs_per_phase: epochs of fine-tuning on each round's rows
            top_p: nucleus sampling mass
            max_new_tokens: longest completion sampled
            require_eos: never keep a sample cut off at ``max_new_tokens``
        """
        if num_samples < 1 or rounds < 1 or epochs_per_phase < 1 or max_new_tokens < 1:
            raise ValueError("num_samples, rounds, epochs_per_phase and max_new_tokens must be >= 1")
        if temperature <= 0 or not 0 < top_p <= 1:
            raise ValueError(f"need temperature > 0 and top_p in (0, 1], got {temperature} and {top_p}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.num_samples, self.temperature, self.threshold = num_samples, temperature, threshold
        self.rounds, self.pool, self.epochs_per_phase = rounds, pool, epochs_per_phase
        self.top_p, self.max_new_tokens, self.require_eos = top_p, max_new_tokens, require_eos
        self.best_so_far: dict[int, Candidate] = {}  # prompt index -> its best sample of the rounds so far

    def phases(self) -> list[Phase]:
        return [
            Phase(r, f"round-{r + 1}", grow=True, num_samples=self.num_samples, temperature=self.temperature, threshold=self.threshold)
            for r in range(self.rounds)
        ]

    def selection_pool(self, phase: Phase, grown: list[Candidate] | None) -> list[Candidate]:
        earlier = list(self.best_so_far.values()) if self.pool == "all" else []
        candidates = earlier + list(grown or [])
        self.best_so_far = {c.prompt_index: c for c in best_per_prompt(self.selectable(candidates))}
        return candidates

    def select(self, candidates: list[Candidate], phase: Phase) -> list[Candidate]:
        return at_least(best_per_prompt(self.selectable(candidates)), phase.threshold)

    def loss(self, ctx, batch) -> LossOutput:
        # Fine-tuning on the kept samples is supervised fine-tuning: SFT's loss, unchanged.
        return SFT().loss(ctx, self.phase_batch(batch))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "best_so_far": [c.to_row() for c in self.best_so_far.values()]}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.best_so_far = {row["prompt_index"]: Candidate(**row) for row in state.get("best_so_far", [])}

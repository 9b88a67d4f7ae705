"""ReST: Reinforced Self-Training (Gulcehre et al. 2023, "Reinforced Self-Training (ReST)
for Language Modeling", arXiv:2308.08998)."""

from __future__ import annotations

from lightning_rlhf import LossOutput, register_algorithm
from lightning_rlhf.self_training import Candidate, Phase, SelfTrainingAlgorithm, at_least
from lightning_rlhf_plugins.sft import SFT


@register_algorithm("rest")
class ReST(SelfTrainingAlgorithm):
    """ReST: Grow a reward-scored sample set, then Improve on it above rising reward thresholds.

    Grow step g (of ``grow_steps``): the current policy samples N = ``num_samples``
    completions of every prompt at ``temperature`` and the reward source scores them:
    the set D_g. Improve step i, one per threshold tau_1 < tau_2 < ... (``thresholds``),
    fine-tunes the policy with SFT's loss (behaviour cloning, one of the losses the paper
    compares) on the filtered set

        D_g(tau_i) = {(x, y) in D_g : r(x, y) >= tau_i}

    for ``epochs_per_phase`` epochs, starting from the policy Improve step i-1 produced;
    the next Grow step samples from the policy the last Improve step produced. Every
    sample above the threshold is kept, several per prompt when several pass. (The paper
    also adds the original supervised data to D_g; prompt-only data has none.)
    """

    def __init__(
        self,
        grow_steps: int = 1,
        num_samples: int = 4,
        thresholds: list[float] | None = None,
        temperature: float = 1.0,
        epochs_per_phase: int = 1,
        top_p: float = 1.0,
        max_new_tokens: int = 64,
        require_eos: bool = True,
    ):
        """
        Args:
            grow_steps: Grow steps, each followed by one Improve step per threshold
            num_samples: N, completions sampled per prompt in a Grow step
            thresholds: strictly increasing reward floors of the Improve steps, in the
                reward source's units; default [0.0, 0.5, 0.8]
            temperature: sampling temperature of the Grow steps
            epochs_per_phase: epochs of fine-tuning in each Improve step
            top_p: nucleus sampling mass
            max_new_tokens: longest completion sampled
            require_eos: never keep a sample cut off at ``max_new_tokens``
        """
        thresholds = [0.0, 0.5, 0.8] if thresholds is None else [float(t) for t in thresholds]
        if grow_steps < 1 or num_samples < 1 or epochs_per_phase < 1 or max_new_tokens < 1:
            raise ValueError("grow_steps, num_samples, epochs_per_phase and max_new_tokens must be >= 1")
        if not thresholds or any(b <= a for a, b in zip(thresholds, thresholds[1:])):
            raise ValueError(f"thresholds must be a non-empty, strictly increasing list, got {thresholds}")
        if temperature <= 0 or not 0 < top_p <= 1:
            raise ValueError(f"need temperature > 0 and top_p in (0, 1], got {temperature} and {top_p}")
        self.grow_steps, self.num_samples, self.thresholds = grow_steps, num_samples, thresholds
        self.temperature, self.epochs_per_phase = temperature, epochs_per_phase
        self.top_p, self.max_new_tokens, self.require_eos = top_p, max_new_tokens, require_eos
        self.grow_set: list[Candidate] = []  # D_g of the current Grow step

    def phases(self) -> list[Phase]:
        steps = [(g, i, tau) for g in range(self.grow_steps) for i, tau in enumerate(self.thresholds)]
        return [
            Phase(index, f"grow-{g + 1}-improve-{i + 1}", grow=i == 0, num_samples=self.num_samples,
                  temperature=self.temperature, threshold=tau)
            for index, (g, i, tau) in enumerate(steps)
        ]

    def selection_pool(self, phase: Phase, grown: list[Candidate] | None) -> list[Candidate]:
        if grown is not None:  # a Grow step replaces D_g; Improve steps reuse it
            self.grow_set = list(grown)
        return self.grow_set

    def select(self, candidates: list[Candidate], phase: Phase) -> list[Candidate]:
        return at_least(self.selectable(candidates), phase.threshold)

    def loss(self, ctx, batch) -> LossOutput:
        # Improve is behaviour cloning on the filtered set: SFT's loss, unchanged.
        return SFT().loss(ctx, self.phase_batch(batch))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "grow_set": [c.to_row() for c in self.grow_set]}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.grow_set = [Candidate(**row) for row in state.get("grow_set", [])]

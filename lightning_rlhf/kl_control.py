"""The KL coefficient beta of an online objective: fixed, or adapted toward a target KL.

The reward an online algorithm maximises is ``score - beta * KL(pi || pi_ref)``. Ziegler
et al. 2019 ("Fine-Tuning Language Models from Human Preferences", section 2.2) adapt
beta so that the KL stays near a target:

    e     = clip(KL / target - 1, -0.2, 0.2)
    beta <- beta * (1 + e * n / horizon)

where ``n`` is the number of samples since the last update. Too much KL raises beta,
too little lowers it. Its state (``beta``) lives in the checkpoint, so a resumed run
carries on with the coefficient it had reached.
"""

from __future__ import annotations


class KLController:
    """Holds beta; ``update`` is called once per rollout with that rollout's mean KL."""

    def __init__(self, beta: float):
        if beta < 0:
            raise ValueError(f"the KL coefficient must be >= 0, got {beta}")
        self.beta = beta

    def update(self, kl: float, n_samples: int) -> None:
        """A fixed coefficient does not move."""

    def state_dict(self) -> dict:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict) -> None:
        self.beta = float(state["beta"])


class AdaptiveKLController(KLController):
    """Ziegler et al.'s proportional controller (see the module docstring)."""

    def __init__(self, beta: float, target: float, horizon: int):
        super().__init__(beta)
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be positive, got {target} and {horizon}")
        self.target, self.horizon = target, horizon

    def update(self, kl: float, n_samples: int) -> None:
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.beta *= 1.0 + error * n_samples / self.horizon
